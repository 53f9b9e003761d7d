r"""Implicit differentiation of the optimal budgets through the KKT conditions of (9).

At $l^*$ every free budget ($0 < l_k < l_{\max}$) satisfies eq. (17) with zero multipliers,

$$G_k(l, \theta) = \alpha A_k b_k e^{-b_k l_k} - c_k\,(v(l) + u(l)\, t_k(l_k)) = 0,\qquad
u = \frac{\lambda}{1-\lambda E[S]},\ v = 1 + \tfrac12 u^2 E[S^2],$$

a budget held at 0 stays there, and one held at $l_{\max}$ moves with $l_{\max}$. Differentiating,
$\partial_l G\, \dot l = -\partial_\theta G\, \dot\theta$. The Jacobian $\partial_l G$ is
diagonal plus rank two (the tasks couple only through $u$ and $v$), so the Woodbury identity solves
it in O(N). The tangent is linear in $\dot\theta$, so JAX transposes it for reverse mode: `grad`,
`jacfwd` and `jacrev` all work, under `jit` and `vmap`, and nothing is unrolled.

`mg1_tangent` is that tangent for the paper's model; `dense_tangent` the same construction
with the dense Hessian of any latency model's J. Each `LatencyModel` names its own through
`LatencyModel.implicit_tangent`, and the solver driver attaches it. Docs: *Solvers*.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._prices import latency_prices
from ._workload import Workload

__all__ = ["mg1_tangent", "dense_tangent", "newton_polish"]


def _prices(tokens, w):
    u, v, _ = latency_prices(tokens, w)
    return u, v


def _kkt(tokens, w):
    """$G_k$ for every task (meaningful on the free ones)."""
    u, v = _prices(tokens, w)
    t = w.t0 + w.c * tokens
    return w.alpha * w.A * w.b * jnp.exp(-w.b * tokens) - w.c * (v + u * t)


def _solve_free(tokens, w: Workload, free, rhs):
    """Solve $\\partial_l G\\, x = $ `rhs` on the free budgets (Woodbury: diagonal plus rank
    two)."""
    u, v = _prices(tokens, w)
    t = w.t0 + w.c * tokens
    diag = -w.alpha * w.A * w.b**2 * jnp.exp(-w.b * tokens) - u * w.c**2
    diag = jnp.where(free, diag, 1.0)
    # rank-two part: dG_k/dl_j = -c_k (dv/dl_j + t_k du/dl_j) on free rows and columns
    grad_u = jax.grad(lambda l: _prices(l, w)[0])(tokens)
    grad_v = jax.grad(lambda l: _prices(l, w)[1])(tokens)
    U = jnp.where(free[:, None], jnp.stack([-w.c, -w.c * t], axis=1), 0.0)  # (n, 2)
    V = jnp.where(free[:, None], jnp.stack([grad_v, grad_u], axis=1), 0.0)  # (n, 2)
    Dinv_r = rhs / diag
    Dinv_U = U / diag[:, None]
    small = jnp.eye(2, dtype=tokens.dtype) + V.T @ Dinv_U
    return Dinv_r - Dinv_U @ jnp.linalg.solve(small, V.T @ Dinv_r)


def newton_polish(tokens: Float[Array, " n"], w: Workload) -> Float[Array, " n"]:
    """One Newton step on the KKT conditions of the free budgets, projected on the box.

    Quadratically convergent near $l^*$ and damped away from it; the default solver ends with
    it, so that members whose price iteration stalls (budgets with a tiny $b_k l_k$ in
    float32, a kink, near saturation) still reach the tolerance.
    """
    G = _kkt(tokens, w)
    # free: every budget the box lets move in the direction its marginal value asks for
    blocked = ((tokens <= 0) & (G <= 0)) | ((tokens >= w.max_tokens) & (G >= 0))
    free = ~blocked & (w.A > 0)
    step = jnp.where(free, _solve_free(tokens, w, free, jnp.where(free, -G, 0.0)), 0.0)
    step = jnp.where(jnp.all(jnp.isfinite(step)), step, 0.0)
    # damped so that the load stays stable: the utilization is linear in the budgets, so the
    # largest fraction of the step that keeps d = 1 - rho above half its value is explicit
    lam = w.arrival_rate
    d = 1 - lam * jnp.sum(w.share * (w.t0 + w.c * tokens))
    rise = lam * jnp.sum(w.share * w.c * step)
    fraction = jnp.where(rise > 0.5 * d, 0.5 * d / jnp.where(rise > 0, rise, 1), 1.0)
    return jnp.clip(tokens + fraction * step, 0, w.max_tokens)


def mg1_tangent(w: Workload, tokens, ok, w_dot: Workload) -> Float[Array, " n"]:
    r"""$\dot l$ of the paper's model for one (unbatched) workload in the direction `w_dot`
    (Woodbury on the KKT system above); zero where `ok` is false (not converged)."""
    free = ok & (tokens > 0) & (tokens < w.max_tokens) & (w.A > 0)
    capped = ok & (tokens >= w.max_tokens) & (w.max_tokens > 0)
    l_dot_bound = jnp.where(capped, w_dot.max_tokens, 0.0)
    # right-hand side: -(dG/dtheta . theta_dot + dG/dl . l_dot on the bounds)
    _, g_dot = jax.jvp(_kkt, (tokens, w), (l_dot_bound, w_dot))
    rhs = jnp.where(free, -g_dot, 0.0)
    l_dot_free = _solve_free(tokens, w, free, rhs)
    l_dot = jnp.where(free, l_dot_free, l_dot_bound)
    return jnp.where(ok, l_dot, 0.0)


def dense_tangent(objective, w: Workload, tokens, ok, w_dot: Workload) -> Float[Array, " n"]:
    r"""$\dot l$ for any smooth `objective(tokens, w)`: the dense Newton system of
    $\nabla_l J = 0$ on the free budgets (N is small); budgets at 0 stay, budgets at
    $l_{\max}$ follow it; zero where `ok` is false."""
    grad = jax.grad(objective)
    free = ok & (tokens > 0) & (tokens < w.max_tokens) & (w.A > 0)
    capped = ok & (tokens >= w.max_tokens) & (w.max_tokens > 0)
    l_dot_bound = jnp.where(capped, w_dot.max_tokens, 0.0)
    _, g_dot = jax.jvp(grad, (tokens, w), (l_dot_bound, w_dot))
    rhs = jnp.where(free, -g_dot, 0.0)
    H = jax.hessian(objective)(tokens, w)
    both = free[:, None] & free[None, :]
    H = jnp.where(both, H, jnp.eye(tokens.shape[-1], dtype=tokens.dtype))
    l_dot = jnp.where(free, jnp.linalg.solve(H, rhs), l_dot_bound)
    return jnp.where(ok, l_dot, 0.0)
