r"""Principal-branch Lambert W and the Wright omega function, in JAX.

`lambertw(z)` solves $w e^w = z$ for $z \ge -1/e$ (principal branch, $w \ge -1$);
`wright_omega(x)` solves $\omega + \log\omega = x$, i.e. $\omega(x) = W(e^x)$, for every real
x without forming $e^x$ (it overflows for $x > 709$ in float64). The token solver uses
$\omega$ in the closed form of eq. (22) (see `_solver/aggregate.py`).

Both are branch-free (fixed iteration counts, `jnp.where` by region), so they `jit`, `vmap`
and run on accelerators unchanged, and keep the input's floating dtype. Derivatives come from
`jax.custom_jvp` rules written to stay finite: $W'(z) = 1/(z + e^{W})$ (so $W'(0) = 1$ exactly,
$+\infty$ at the branch point) and $\omega'(x) = \omega/(1+\omega)$.

Wright omega takes no float64 logarithm (on the CPU it costs several exponentials): a start
good to about 2e-5 computed in float32 (series below -4 and above 20, polynomials between)
and one fourth-order correction through `exp` (`_exp_step`), to within an ulp or two of the
exact value in float64 and float32 (the tests hold it to mpmath; its cost is in
`benchmarks/README.md`).

Accuracy: a few ulp against `scipy.special.lambertw` / `wrightomega` (held by the tests),
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


# omega on [-4, -1], [-1, 4] and [4, 20] as polynomials of degree 8 in t = (x - centre) * scale
# (t in [-1, 1]): least-squares fits weighted by 1/omega on 4000 Chebyshev nodes, written as
# monomial coefficients (lowest first). Relative error <= 2e-5: the start of one step.
_MIDDLE = (
    (
        -2.5,
        0.6666666666666666,
        (
            0.07607213180646041,
            0.1060412191973038,
            0.06868678606294772,
            0.02515204405568414,
            0.0040770448744217895,
            -0.0008973953281640862,
            -0.0006449093692061486,
            -5.830684418579963e-05,
            3.562870306589503e-05,
        ),
    ),
    (
        1.5,
        0.4,
        (
            1.2649624841005604,
            1.396242317317681,
            0.34011371790480865,
            -0.08480033462132587,
            0.003759309919589138,
            0.012479432694429969,
            -0.008002352486172783,
            -1.4653086063878631e-05,
            0.0015376065426561767,
        ),
    ),
    (
        12.0,
        0.125,
        (
            9.725279374924384,
            7.254144903398626,
            0.25199415804748704,
            -0.10855930704162647,
            0.051330308582852036,
            -0.021298751860045546,
            0.008538411082034006,
            -0.008633762219863495,
            0.004778863387022939,
        ),
    ),
)


def _middle_guess(x):
    """The piecewise polynomial on [-4, 20]: coefficients chosen per element, one Horner pass."""
    first, second = x < -1.0, x < 4.0

    def pick(values):
        return jnp.where(first, values[0], jnp.where(second, values[1], values[2]))

    t = (x - pick([c for c, _, _ in _MIDDLE])) * pick([s for _, s, _ in _MIDDLE])
    degree = len(_MIDDLE[0][2]) - 1
    acc = pick([p[degree] for _, _, p in _MIDDLE])
    for k in range(degree - 1, -1, -1):
        acc = acc * t + pick([p[k] for _, _, p in _MIDDLE])
    return acc


def _guess(x):
    """A start within ~2e-5 (relative) for x in [-40, 1e20], computed in float32: below -4 the
    series z - z^2 + 3z^3/2 in z = e^x, above 20 the asymptotic series x - L + L/x (...) in
    L = log x (its float64 part `x - L` formed by the caller), polynomials in between.
    Returns (guess below 20, L, the series' correction, whether x > 20)."""
    x32 = x.astype(jnp.float32)
    low, high = x32 < -4.0, x32 > 20.0
    z = jnp.exp(jnp.where(low, x32, -4.0))
    g_low = z * (1 - z * (1 - 1.5 * z))
    xh = jnp.where(high, x32, 20.0)
    L = jnp.log(xh)
    ix = 1 / xh
    c2 = (L - 2) * 0.5  # coefficients of the series in 1/x
    c3 = (L * (2 * L - 9) + 6) * (1 / 6)
    c4 = (L * (L * (3 * L - 22) + 36) - 12) * (1 / 12)
    corr = L * ix * (1 + ix * (c2 + ix * (c3 + ix * c4)))
    g_mid = _middle_guess(jnp.where(low | high, 0.0, x32))
    return jnp.where(low, g_low, g_mid), L, corr, high


def _exp_step(w, x):
    r"""One fourth-order step for $w + \log w = x$ that needs one `exp` and no `log`.

    The residual $r = x - w - \log w$ is $\log(1 + d)$ with $d = e^{x - w}/w - 1$; $x - w$ is
    split exactly (TwoSum) into $s + e$ so that $e^{x-w} = e^s (1 + e)$ to rounding, and
    $\log(1+d)$ is its series ($|d| \lesssim 2 \cdot 10^{-5}$). The correction $w \delta$ solves
    $w \delta + \log(1 + \delta) = r$ to $O(v^4)$, $v = r/(1 + w)$. Returns the new w and
    $e^s$ (which is omega itself when w = 0)."""
    s = x - w
    bb = s - x
    e = (x - (s - bb)) + (-w - bb)
    E = jnp.exp(s)
    d = (E - w + E * e) * (1 / w)
    r = d * (1 - d * (0.5 - d * ((1 / 3) - d * 0.25)))
    ic = 1 / (1 + w)
    v = r * ic
    a = 0.5 * ic
    return w + w * (v * (1 + v * (a + v * (a - 1 / 3) * ic))), E


def _omega(x):
    # No float64 log anywhere (XLA's CPU float64 log costs several exps): a float32 start and
    # one step through exp. Below -40, omega = e^x to rounding: w = 0 makes the step return
    # exactly e^x. Above 2^40 (float64; 2^20 in float32) the start is exact to rounding and
    # the step's ulp(w) is too coarse to help; above 1e20, omega = x to rounding.
    dtype = x.dtype
    xc = jnp.clip(x, -40.0, 1e20)
    g, L, corr, high = _guess(xc)
    w = jnp.where(high, xc - L.astype(dtype) + corr.astype(dtype), g.astype(dtype))
    low = x < -40.0
    w = jnp.where(low, 0.0, w)
    out, E = _exp_step(w, jnp.where(low, x, xc))
    out = jnp.where(low, E, out)
    exact_start = 2.0**40 if dtype == jnp.float64 else 2.0**20
    out = jnp.where(xc > exact_start, w, out)
    out = jnp.where(x > 1e20, x, out)
    return jnp.where(jnp.isnan(x), x, out)


def wright_omega(x: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
    r"""Wright omega $\omega(x) = W(e^x)$, the solution of $\omega + \log\omega = x$.

    Defined for every real x: $\omega(x) \approx e^x$ as $x \to -\infty$ (underflowing
    gracefully to 0) and $\approx x - \log x$ as $x \to +\infty$. Keeps the input dtype.

    Args:
        x: real arguments, any shape.

    Returns:
        $\omega(x)$, shaped and typed like `x`; differentiable ($\omega' = \omega/(1+\omega)$).
    """
    return _wright_omega(_float(x))


@jax.custom_jvp
def _wright_omega(x):
    """`wright_omega` of a float array, with its derivative (the public function stays a
    plain function, so it pickles by reference)."""
    return _omega(x)


@_wright_omega.defjvp
def _wright_omega_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    w = _wright_omega(x)
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


def lambertw(z: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
    r"""Principal branch $W_0(z)$ for real $z \ge -1/e$ (NaN below). Keeps the input dtype.

    Args:
        z: real arguments, any shape.

    Returns:
        $W_0(z)$, shaped and typed like `z`; differentiable ($W'(z) = 1/(z + e^{W})$).
    """
    return _principal_w(_float(z))


@jax.custom_jvp
def _principal_w(z):
    """`lambertw` of a float array, with its derivative."""
    return _lambertw(z)


@_principal_w.defjvp
def _lambertw_jvp(primals, tangents):
    (z,), (dz,) = primals, tangents
    w = _principal_w(z)
    # W'(z) = 1 / (z + e^W): exactly 1 at z = 0, +inf at the branch point, no 0/0.
    return w, dz / (z + jnp.exp(w))
