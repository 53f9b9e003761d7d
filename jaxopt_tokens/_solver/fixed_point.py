r"""The paper's projected fixed-point iteration (24), evaluated in log space.

$l^{(n+1)} = \mathrm{clip}(\hat l(l^{(n)}), 0, l_{\max})$ with $\hat l$ from eq. (22). The map
depends on $l$ only through $(E[S], E[S^2])$, so each step evaluates the closed form of
`budgets_at_prices` at the prices of the current iterate (no overflow of $e^{-b_k K_k}$).

Offered to reproduce and diagnose the paper's method, not as a default: from $l = 0$ an
iterate can leave the stability region, where the map is undefined. The solver then stops
with status `NOT_CONTRACTIVE`. `stats` reports Lemma 2's constant $L_\infty$ (26) on
$[0, l_{\max}]^N$ and on the provable box, and whether either guarantees contraction.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from .._kkt import contraction_constant, kkt_residual, provable_box
from .._objective import objective, service_moments
from .._status import Status
from .._validate import default_rtol
from .aggregate import budgets_at_prices, check_mg1
from .base import AbstractSolver, Iterate, Problem, certified, usable_start

__all__ = ["FixedPoint"]


class _State(eqx.Module):
    tokens: Array
    residual: Array
    stable: Array
    iterations: Array


class FixedPoint(AbstractSolver):
    """Projected fixed-point iteration (24) from `l = 0`.

    Attributes:
        rtol: target projected KKT residual (default 1e-9 in float64, 1e-4 in float32).
        max_steps: the step limit (default 1000).
    """

    rtol: float | None = None
    max_steps: int = 1000

    def check(self, model) -> None:
        check_mg1(self, model)

    def init(self, p: Problem, start=None) -> _State:
        w = p.workload
        tokens = jnp.zeros_like(w.A)
        if start is not None:  # from finite budgets that the server sustains
            warm, finite = usable_start(start, w)
            ok = finite & (w.arrival_rate * service_moments(warm, w)[0] < 1)
            tokens = jnp.where(ok, warm, tokens)
        return _State(tokens, kkt_residual(tokens, w), jnp.bool_(True), jnp.zeros((), jnp.int32))

    def step(self, p: Problem, s: _State) -> _State:
        w = p.workload
        lam = w.arrival_rate
        m1, m2 = service_moments(s.tokens, w)
        d = 1 - lam * m1
        stable = d > 0
        d = jnp.where(stable, d, 1)
        new, _, _ = budgets_at_prices(d, lam * m2 / (2 * d * d), w)
        tokens = jnp.where(stable, new, s.tokens)
        return _State(tokens, kkt_residual(tokens, w), stable, s.iterations + 1)

    def terminate(self, p: Problem, s: _State):
        return ~s.stable | (s.residual <= default_rtol(p.workload.dtype, self.rtol))

    def postprocess(self, p: Problem, s: _State) -> Iterate:
        w = p.workload
        value = objective(s.tokens, w)
        status = jnp.where(
            certified(p, s.tokens, s.residual, value, default_rtol(w.dtype, self.rtol)),
            Status.CONVERGED,
            jnp.where(
                s.stable & jnp.isfinite(s.residual), Status.MAX_ITERATIONS, Status.NOT_CONTRACTIVE
            ),
        ).astype(jnp.int32)
        L_box = contraction_constant(w, provable_box(w))
        stats = {
            "contraction_constant": contraction_constant(w),
            "contraction_constant_box": L_box,
            "contraction_guaranteed": L_box < 1,
        }
        return Iterate(s.tokens, value, status, s.residual, stats)
