r"""Budgets for an unlimited continuously batching server: one aggregate price, bracketed Newton.

Under `ContinuousBatching(max_batch=None)` the mean system time depends on the budgets only
through the mean work $m = \sum_k \pi_k w_k(l_k)$: $E[T] = g(m)$. The KKT conditions of
$\max_l\ \alpha \sum_k \pi_k p_k(l_k) - g(m(l))$ on $[0, l_{\max}]$ are therefore

$$\alpha A_k b_k e^{-b_k l_k} = g'(m) \quad\text{(or } l_k \text{ at a bound)},$$

one price $g'(m)$ for every task, and given the price each budget is closed-form,
$l_k = \mathrm{clip}(\log(\alpha A_k b_k / g'(m)) / b_k, 0, l_{\max})$. What is left is the
scalar equation $h(m) = m - \sum_k \pi_k w_k(l_k(g'(m))) = 0$ on the bracket from the
zero-budget work to the smaller of the full-budget work and the stability limit
$1/(\lambda \tau_1)$ ($h < 0$ at its left end, $h > 0$ at its right end). Newton steps on
$h$ that leave the bracket are replaced by bisection, so it converges on every instance that
is stable at zero tokens, in a handful of steps at the cost of N exponentials each. The
certificate is the model's scale-free projected KKT residual (`LatencyModel.residual`), and
an optimum whose latency the model calls infinite is never certified.
Docs: *Continuous batching*.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._errors import InputError
from .._status import Status
from .._validate import default_rtol
from .._workload import Workload
from .base import AbstractSolver, Iterate, Problem, certified, usable_start

__all__ = ["BatchingNewton"]


class _State(eqx.Module):
    m: Array
    lo: Array
    hi: Array
    residual: Array
    iterations: Array


class BatchingNewton(AbstractSolver):
    """Bracketed Newton on the mean work of an unlimited batching server (module docstring).

    Solves problems whose model has the `"mean_work"` structure (`ContinuousBatching` with
    `max_batch=None`).

    Attributes:
        rtol: target residual (default 1e-9 in float64, 1e-4 in float32).
        max_steps: the step limit (default 200).
    """

    rtol: float | None = None
    max_steps: int = 200

    def check(self, model) -> None:
        if model.structure != "mean_work":
            raise InputError(
                "solver: BatchingNewton solves an unlimited continuously batching server "
                f"(ContinuousBatching(max_batch=None)) only, not {type(model).__name__} "
                f"(its J couples the tasks as {model.structure!r}, not through the mean work)"
            )

    # -- the aggregate problem

    def _g(self, model, m, w: Workload):
        """E[T] as a function of the mean work (`+inf` where the server is unstable)."""
        _, tau1 = model.step_coefficients(w.dtype)
        stable = model.replica_arrival_rate(w) * tau1 * m < 1
        total = model.stats_of_work(m, jnp.zeros_like(m), w)["system_time"]
        return jnp.where(stable, total, jnp.inf)

    def _price(self, model, m, w):
        return jax.grad(lambda m: self._g(model, m, w))(m)

    def _tokens(self, price, w: Workload):
        upper = jnp.broadcast_to(w.max_tokens, w.A.shape)
        gain = w.alpha * w.A * w.b
        raw = (jnp.log(jnp.where(gain > 0, gain, 1)) - jnp.log(price)) / w.b
        return jnp.clip(jnp.where(gain > 0, raw, 0), 0, upper)

    def _h(self, model, m, w):
        price = self._price(model, m, w)
        tokens = self._tokens(price, w)
        return m - jnp.sum(w.share * model.work(tokens, w)), tokens

    def _bracket(self, model, w: Workload):
        zeros = jnp.zeros_like(w.A)
        full = jnp.broadcast_to(w.max_tokens, w.A.shape).astype(w.dtype)
        lo = jnp.sum(w.share * model.work(zeros, w))
        top = jnp.sum(w.share * model.work(full, w))
        _, tau1 = model.step_coefficients(w.dtype)
        limit = 1 / (model.replica_arrival_rate(w) * tau1)
        hi = jnp.minimum(top, limit * (1 - 4 * jnp.finfo(w.dtype).eps))
        return lo, hi

    # -- the protocol

    def init(self, p: Problem, start=None) -> _State:
        model: Any = p.model  # a "mean_work" model: ContinuousBatching's interface
        w = p.workload
        lo, hi = self._bracket(model, w)
        m = lo
        if start is not None:  # from the mean work of a warm start, inside the bracket
            warm, finite = usable_start(start, w)
            m_s = jnp.sum(w.share * model.work(warm, w))
            m = jnp.where(finite & (m_s > lo) & (m_s < hi), m_s, lo)
        _, tokens = self._h(model, m, w)
        zero = jnp.zeros((), jnp.int32)
        return _State(m, lo, hi, model.residual(tokens, w), zero)

    def step(self, p: Problem, s: _State) -> _State:
        model, w = p.model, p.workload
        h, _ = self._h(model, s.m, w)
        dh = jax.grad(lambda m: self._h(model, m, w)[0])(s.m)
        lo = jnp.where(h < 0, s.m, s.lo)
        hi = jnp.where(h > 0, s.m, s.hi)
        newton = s.m - h / jnp.where(dh > 0, dh, 1)
        inside = (dh > 0) & (newton > lo) & (newton < hi) & jnp.isfinite(newton)
        m = jnp.where(inside, newton, 0.5 * (lo + hi))
        _, tokens = self._h(model, m, w)
        return _State(m, lo, hi, model.residual(tokens, w), s.iterations + 1)

    def terminate(self, p: Problem, s: _State):
        w = p.workload
        eps = jnp.finfo(w.dtype).eps
        collapsed = s.hi - s.lo <= 4 * eps * s.hi
        return (s.residual <= default_rtol(w.dtype, self.rtol)) | collapsed | ~(s.lo < s.hi)

    def postprocess(self, p: Problem, s: _State) -> Iterate:
        model, w = p.model, p.workload
        _, tokens = self._h(model, s.m, w)
        value = model.objective(tokens, w)
        residual = model.residual(tokens, w)
        converged = certified(p, tokens, residual, value, default_rtol(w.dtype, self.rtol))
        status = jnp.where(converged, Status.CONVERGED, Status.MAX_ITERATIONS).astype(jnp.int32)
        stats = {"mean_work": s.m, "price": self._price(model, s.m, w)}
        return Iterate(tokens, value, status, residual, stats)
