"""The paper's projected fixed-point iteration (24), evaluated in log space.

$l^{(n+1)} = \\mathrm{clip}(\\hat l(l^{(n)}), 0, l_{\\max})$ with $\\hat l$ from eq. (22). The map
depends on $l$ only through $(E[S], E[S^2])$, so each step evaluates the closed form of
`budgets_at_prices` at the prices of the current iterate (no overflow of $e^{-b_k K_k}$).

Offered to reproduce and diagnose the paper's method, not as a default: from $l = 0$ an
iterate can leave the stability region, where the map is undefined. The solver then stops
with status `NOT_CONTRACTIVE`. `stats` reports Lemma 2's constant $L_\\infty$ (26) on
$[0, l_{\\max}]^N$ and on the provable box, and whether either guarantees contraction.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from ._aggregate import budgets_at_prices
from ._kkt import contraction_constant, kkt_residual, provable_box
from ._objective import objective, service_moments
from ._solution import Solution, Status, default_rtol, finish, prepare
from ._workload import Workload

__all__ = ["FixedPoint"]


class _State(eqx.Module):
    tokens: Array
    residual: Array
    stable: Array
    iterations: Array


class FixedPoint(eqx.Module):
    """Projected fixed-point iteration (24) from `l = 0`.

    **Arguments:** `rtol` (projected KKT residual; default 1e-9 float64 / 1e-4 float32),
    `max_steps` (default 1000).
    """

    rtol: float | None = None
    max_steps: int = 1000

    def __call__(self, w: Workload) -> Solution:
        dtype = w.dtype
        rtol = default_rtol(dtype, self.rtol)
        status_in, ok_in, safe = prepare(w)
        lam = safe.arrival_rate

        def step(tokens):
            m1, m2 = service_moments(tokens, safe)
            d = 1 - lam * m1
            stable = d > 0
            d = jnp.where(stable, d, 1)
            y = lam * m2 / (2 * d * d)
            new, _, _ = budgets_at_prices(d, y, safe)
            return new, stable

        def cond(s):
            return s.stable & (s.residual > rtol) & (s.iterations < self.max_steps)

        def body(s):
            new, stable = step(s.tokens)
            tokens = jnp.where(stable, new, s.tokens)
            return _State(tokens, kkt_residual(tokens, safe), stable, s.iterations + 1)

        zeros = jnp.zeros_like(safe.A)
        state = _State(zeros, kkt_residual(zeros, safe), jnp.bool_(True), jnp.zeros((), jnp.int32))
        state = jax.lax.while_loop(cond, body, state)
        status = jnp.where(
            state.residual <= rtol,
            Status.CONVERGED,
            jnp.where(state.stable & jnp.isfinite(state.residual), Status.MAX_ITERATIONS, Status.NOT_CONTRACTIVE),
        )
        L_box = contraction_constant(safe, provable_box(safe))
        stats = {
            "contraction_constant": contraction_constant(safe),
            "contraction_constant_box": L_box,
            "contraction_guaranteed": ok_in & (L_box < 1),
        }
        return finish(ok_in, status_in, status, state.tokens, objective(state.tokens, safe), state.residual,
                      state.iterations, stats)
