"""Optimality certificate and the paper's convergence constants.

- `objective_gradient`: the closed-form gradient of J, eqs. (10) and (15).
- `kkt_residual`: the scale-free projected KKT residual every solver reports.
- `provable_box`: an upper bound `ubar` on every optimal budget (docs: *Model*), so the constants
  of Lemmas 2 and 3 can be evaluated on `[0, min(l_max, ubar)]` instead of `[0, l_max]`.
- `contraction_constant` (26) and `gradient_lipschitz` (31)-(32) on a box.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from ._objective import service_moments, service_times
from ._prices import latency_prices
from ._workload import Workload

__all__ = [
    "objective_gradient",
    "marginal_ratio",
    "kkt_residual",
    "residual_floor",
    "provable_box",
    "contraction_constant",
    "gradient_lipschitz",
]


def objective_gradient(tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b n"]:
    r"""The closed-form gradient of J, eqs. (10) and (15):

    $\partial J/\partial l_k = \pi_k[\alpha A_k b_k e^{-b_k l_k}
    - c_k(1 + \lambda t_k/d + \lambda^2 E[S^2]/(2d^2))]$.

    Here $d = 1 - \lambda E[S]$; NaN outside the stability region.

    Args:
        tokens: the budgets $l$, one per task on the last axis (any leading batch axes).
        w: the workload; its batch shape broadcasts against that of `tokens`.

    Returns:
        $\partial J/\partial l$, shaped like `tokens`.
    """
    u, v, stable = latency_prices(tokens, w)
    t = service_times(tokens, w)
    g = w.share * (
        w.alpha[..., None] * w.A * w.b * jnp.exp(-w.b * tokens)
        - w.c * (v[..., None] + u[..., None] * t)
    )
    return jnp.where(stable[..., None], g, jnp.nan)


def marginal_ratio(tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b n"]:
    r"""Marginal accuracy value over marginal latency cost, minus one, per task.

    $r_k = \alpha A_k b_k e^{-b_k l_k} / (c_k (v + u t_k)) - 1$: zero at an interior optimum,
    dimensionless (invariant to the units of time and tokens), independent of the shares.
    """
    u, v, stable = latency_prices(tokens, w)
    t = service_times(tokens, w)
    cost = w.c * (v[..., None] + u[..., None] * t)
    r = w.alpha[..., None] * w.A * w.b * jnp.exp(-w.b * tokens) / cost - 1
    return jnp.where(stable[..., None], r, jnp.inf)


def kkt_residual(tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b"]:
    r"""Scale-free projected KKT residual of eq. (9); `+inf` outside the stability region.

    With $r_k$ from `marginal_ratio`, the residual is
    $\max_k b_k |l_k - \mathrm{clip}(l_k + r_k/b_k, 0, l_{\max})|$: in the interior it is
    $|r_k|$, the relative imbalance between what a token buys and what it costs; at a bound it
    counts only the direction the box allows. $r_k/b_k$ is the Newton-like step in tokens, so
    a residual $\epsilon$ means budgets off by about $\epsilon/b_k$ tokens.

    Args:
        tokens: the budgets $l$, one per task on the last axis (any leading batch axes).
        w: the workload; its batch shape broadcasts against that of `tokens`.

    Returns:
        The residual, with the batch shape: the solvers' certificate.
    """
    r = marginal_ratio(tokens, w)
    finite = jnp.all(jnp.isfinite(r), axis=-1)
    r = jnp.where(jnp.isfinite(r), r, 0)
    lmax = w.max_tokens[..., None]
    step = jnp.clip(tokens + r / w.b, 0, lmax)
    res = jnp.max(w.b * jnp.abs(tokens - step), axis=-1)
    return jnp.where(finite, res, jnp.inf)


def residual_floor(tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b"]:
    r"""The rounding floor of `kkt_residual` at `tokens`: $64 \epsilon \rho / (1 - \rho)$.

    The latency prices scale with $1/d$ and $1/d^2$, $d = 1 - \rho$, and $d$ is known only to
    about $\epsilon \rho$ in the dtype (the budgets and the moments each carry rounding), so
    near saturation no representable allocation, and no iteration in that dtype, reaches a
    smaller residual (the factor 64 leaves a margin over what the tests see near saturation).
    Solvers certify convergence at $\max(\mathrm{rtol}, \text{floor})$; the residual they
    report is the true one. The floor is 0 where the load is unstable: nothing is certified
    there.
    """
    rho = w.arrival_rate * service_moments(tokens, w)[0]
    eps = jnp.finfo(jnp.result_type(tokens, w.dtype)).eps
    stable = rho < 1
    return jnp.where(stable, 64 * eps * rho / jnp.where(stable, 1 - rho, 1), 0.0)


def provable_box(w: Workload) -> Float[Array, "*b n"]:
    r"""Upper bounds on the optimal budgets: $l_k^* \le \min(l_{\max}, \bar u_k)$.

    At an interior optimum $\alpha A_k b_k e^{-b_k l_k} \ge c_k$ (the latency price is at least
    $c_k$), so $l_k^* \le \bar u_k = \max(0, \log(\alpha A_k b_k / c_k)/b_k)$ (docs: *Model*).

    Args:
        w: the workload (any batch shape).

    Returns:
        The upper bound of each task's optimal budget, with a task axis last.
    """
    ratio = w.alpha[..., None] * w.A * w.b / w.c
    ubar = jnp.where(ratio > 1, jnp.log(jnp.where(ratio > 1, ratio, 1)) / w.b, 0)
    return jnp.minimum(ubar, w.max_tokens[..., None])


def _box_extremes(w: Workload, upper):
    tmax_k = w.t0 + w.c * upper
    m1max = jnp.sum(w.share * tmax_k, axis=-1)
    m2max = jnp.sum(w.share * tmax_k**2, axis=-1)
    rho_max = w.arrival_rate * m1max
    return tmax_k, m1max, m2max, rho_max


def contraction_constant(
    w: Workload, upper: Float[Array, "*b n"] | None = None
) -> Float[Array, "*b"]:
    r"""$L_\infty$ of Lemma 2, eq. (26), on the box $[0, \text{upper}]$ (default $[0, l_{\max}]$).

    `+inf` when $\rho_{\max} \ge 1$: the lemma's assumption fails and the constant does not
    exist.
    The fixed point (24) is guaranteed to converge when the value is below 1.

    Args:
        w: the workload (any batch shape).
        upper: the box's upper corner, one bound per task (default: `max_tokens` for every
            task; `provable_box(w)` gives the box on which the constant exists for the paper's
            own example).

    Returns:
        $L_\infty$, with the batch shape.
    """
    if upper is None:
        upper = jnp.broadcast_to(w.max_tokens[..., None], w.A.shape)
    lam = w.arrival_rate
    tmax_k, _, m2max, rho_max = _box_extremes(w, upper)
    ok = rho_max < 1
    gap = jnp.where(ok, 1 - rho_max, 1)
    tmax = jnp.max(tmax_k, axis=-1)
    bracket = 1 + lam * (tmax / gap + lam * m2max / (2 * gap**2))
    per_k = bracket[..., None] / w.c + (lam / gap)[..., None] / w.b
    value = jnp.max(per_k, axis=-1) * jnp.sum(w.share * w.c, axis=-1)
    return jnp.where(ok, value, jnp.inf)


def gradient_lipschitz(
    w: Workload, upper: Float[Array, "*b n"] | None = None
) -> Float[Array, "*b"]:
    r"""$L_J = \max_k \sum_j H_{kj}$ of Lemma 3, eqs. (31)-(32), on the box $[0, \text{upper}]$.

    `+inf` when $\rho_{\max} \ge 1$. Projected gradient ascent (29) converges for
    $0 < \eta < 2/L_J$, eq. (38).

    Args:
        w: the workload (any batch shape).
        upper: the box's upper corner, one bound per task (default: `max_tokens` for every
            task; `provable_box(w)` gives the box on which the constant exists for the paper's
            own example).

    Returns:
        $L_J$, with the batch shape.
    """
    if upper is None:
        upper = jnp.broadcast_to(w.max_tokens[..., None], w.A.shape)
    lam = w.arrival_rate[..., None, None]
    tmax_k, _, m2max, rho_max = _box_extremes(w, upper)
    ok = rho_max < 1
    gap = jnp.where(ok, 1 - rho_max, 1)[..., None, None]
    pc = w.share * w.c
    outer = pc[..., :, None] * pc[..., None, :]
    eye = jnp.eye(w.num_tasks, dtype=w.A.dtype)
    H = (
        lam * eye * (w.share * w.c**2)[..., None, :] / gap
        + lam**2 * outer * (tmax_k[..., :, None] + tmax_k[..., None, :]) / gap**2
        + lam**3 * outer * m2max[..., None, None] / gap**3
        + w.alpha[..., None, None] * eye * (w.share * w.A * w.b**2)[..., None, :]
    )
    value = jnp.max(jnp.sum(H, axis=-1), axis=-1)
    return jnp.where(ok, value, jnp.inf)
