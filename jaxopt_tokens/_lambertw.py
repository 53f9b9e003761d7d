r"""Principal-branch Lambert W and the Wright omega function, in JAX.

`lambertw(z)` solves $w e^w = z$ for $z \ge -1/e$ (principal branch, $w \ge -1$);
`wright_omega(x)` solves $\omega + \log\omega = x$, i.e. $\omega(x) = W(e^x)$, for every real
x without forming $e^x$ (it overflows for $x > 709$ in float64). The token solver uses
$\omega$ in the closed form of eq. (22) (see `_aggregate.py`).

Both are branch-free (fixed iteration counts, `jnp.where` by region), so they `jit`, `vmap`
and run on accelerators unchanged, and keep the input's floating dtype. Derivatives come from
`jax.custom_jvp` rules written to stay finite: $W'(z) = 1/(z + e^{W})$ (so $W'(0) = 1$ exactly,
$+\infty$ at the branch point) and $\omega'(x) = \omega/(1+\omega)$.

Accuracy: a few ulp against `scipy.special.lambertw` / `wrightomega` (measured in the tests),
except within about $\sqrt{\epsilon}$ of the branch point $z = -1/e$, where W is
ill-conditioned ($W' \to \infty$): there the input's own rounding of $e z + 1$ limits any
method to an absolute error of order $\sqrt{\epsilon}$.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

__all__ = ["lambertw", "wright_omega"]

E = math.e  # Euler's number; W's branch point is -1/E


def _float(x: ArrayLike) -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def _fsc_step(w, x):
    """One Fritsch-Shafer-Crowley step (fourth order) for w + log w = x, w > 0."""
    r = x - w - jnp.log(w)
    q = 2 * (1 + w) * (1 + w + 2 * r / 3)
    return w * (1 + r / (1 + w) * (q - r) / (q - 2 * r))


def _omega(x):
    # Region guesses (Lawrence, Corless & Jeffrey's real-axis choices): a series in e^x below
    # -2, the Taylor series about x = 1 (omega(1) = 1) in between, x - log x + ... above 1.
    tiny_region = x <= -20  # e^x < 2.1e-9: omega = z - z^2 to full precision, no log(w)
    low = x < -2
    high = x > 1
    z = jnp.exp(jnp.where(low, x, -2.0))
    g_low = z * (1 - z * (1 - 1.5 * z))
    y = jnp.where(low | high, 0.0, x - 1)
    g_mid = 1 + y * (1 / 2 + y * (1 / 16 + y * (-1 / 192 + y * (-1 / 3072 + y * 13 / 61440))))
    xs = jnp.where(high, x, 2.0)
    lx = jnp.log(xs)
    g_high = xs - lx + lx / xs + lx * (lx - 2) / (2 * xs * xs)
    w = jnp.where(low, g_low, jnp.where(high, g_high, g_mid))
    safe_x = jnp.where(tiny_region, 0.0, x)
    ws = jnp.where(tiny_region, 1.0, w)  # double where: no log(0) in the untaken branch
    # beyond 2^40 the asymptotic guess is exact to rounding (its error is O(log^3 x / x^3)),
    # and the correction step would overflow forming (1 + w)^2: keep the guess there
    huge = xs > 2.0**40
    ws = jnp.where(jnp.isinf(safe_x) & (safe_x > 0), 1.0, ws)
    wh = jnp.where(huge, 1.0, ws)
    xh = jnp.where(huge, 1.0, safe_x)
    for _ in range(2):
        wh = _fsc_step(wh, xh)
    ws = jnp.where(huge & high, w, wh)
    zt = jnp.exp(jnp.where(tiny_region, x, -30.0))
    out = jnp.where(tiny_region, zt * (1 - zt), ws)
    out = jnp.where(jnp.isposinf(x), jnp.inf, out)
    return jnp.where(jnp.isnan(x), jnp.nan, out)


@jax.custom_jvp
def wright_omega(x: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
    r"""Wright omega $\omega(x) = W(e^x)$, the solution of $\omega + \log\omega = x$.

    Defined for every real x: $\omega(x) \approx e^x$ as $x \to -\infty$ (underflowing
    gracefully to 0) and $\approx x - \log x$ as $x \to +\infty$. Keeps the input dtype.
    """
    return _omega(_float(x))


@wright_omega.defjvp
def _wright_omega_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    w = wright_omega(x)
    small = w < 1
    ws = jnp.where(small, w, 1.0)
    wl = jnp.where(small, 1.0, w)
    slope = jnp.where(small, ws / (1 + ws), 1 / (1 + 1 / wl))
    return w, slope * dx


def _halley_w(z):
    """Principal W for -1/e <= z <= e by Halley's method on w e^w - z."""
    ez1 = 2 * (E * z + 1)  # 0 at the branch point
    p = jnp.sqrt(jnp.maximum(ez1, 0))
    branch = -1 + p * (1 + p * (-1 / 3 + p * (11 / 72 + p * (-43 / 540 + p * 769 / 17280))))
    l1 = jnp.log1p(jnp.maximum(z, -0.25))
    general = l1 * (1 - jnp.log1p(l1) / (2 + l1))
    w = jnp.where(z < -0.25, branch, general)
    for _ in range(3):
        ew = jnp.exp(w)
        f = w * ew - z
        wp1 = w + 1
        denom = ew * wp1 - (w + 2) * f / (2 * jnp.where(wp1 == 0, 1, wp1))
        step = jnp.where((denom == 0) | (wp1 <= 0), 0, f / jnp.where(denom == 0, 1, denom))
        w = w - step
    return jnp.maximum(w, -1.0)


def _lambertw(z):
    eps = jnp.finfo(z.dtype).eps
    small = z <= E
    w_small = _halley_w(jnp.where(small, z, 0.0))
    w_large = _omega(jnp.log(jnp.where(small, E, z)))
    w = jnp.where(small, w_small, w_large)
    below = 2 * (E * z + 1) < -8 * eps  # outside the domain (beyond rounding of -1/e)
    w = jnp.where(below | jnp.isnan(z), jnp.nan, w)
    return jnp.where(jnp.isposinf(z), jnp.inf, w)


@jax.custom_jvp
def lambertw(z: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
    r"""Principal branch $W_0(z)$ for real $z \ge -1/e$ (NaN below). Keeps the input dtype."""
    return _lambertw(_float(z))


@lambertw.defjvp
def _lambertw_jvp(primals, tangents):
    (z,), (dz,) = primals, tangents
    w = lambertw(z)
    # W'(z) = 1 / (z + e^W): exactly 1 at z = 0, +inf at the branch point, no 0/0.
    return w, dz / (z + jnp.exp(w))
