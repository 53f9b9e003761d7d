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
certificate is the model's scale-free projected KKT residual (`LatencyModel.residual`).
Docs: *Continuous batching*.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._errors import InputError
from .._queue.batching import ContinuousBatching
from .._status import Status
from .._validate import default_rtol
from .._workload import Workload
from .base import AbstractSolver, Iterate, usable_start

__all__ = ["BatchingNewton"]


class _State(eqx.Module):
    m: Array
    lo: Array
    hi: Array
    residual: Array
    iterations: Array


class BatchingNewton(AbstractSolver):
    """Bracketed Newton on the mean work of an unlimited batching server (module docstring).

    **Arguments:** `model` (a `ContinuousBatching` with `max_batch=None`), `rtol` (default
    1e-9 in float64, 1e-4 in float32), `max_steps` (default 200).
    """

    model: ContinuousBatching = ContinuousBatching()
    rtol: float | None = None
    max_steps: int = 200

    def __check_init__(self):
        if not isinstance(self.model, ContinuousBatching) or not self.model.unlimited:
            raise InputError("model: BatchingNewton needs ContinuousBatching(max_batch=None)")

    # -- the aggregate problem

    def _g(self, m, w: Workload):
        """E[T] as a function of the mean work (`+inf` where the server is unstable)."""
        _, tau1 = self.model.step_coefficients(w.dtype)
        stable = self.model.arrival_rate(w) * tau1 * m < 1
        total = self.model.stats_of_work(m, jnp.zeros_like(m), w)["system_time"]
        return jnp.where(stable, total, jnp.inf)

    def _price(self, m, w):
        g1 = jax.grad(self._g)(m, w)
        return g1

    def _tokens(self, price, w: Workload):
        upper = jnp.broadcast_to(w.max_tokens, w.A.shape)
        gain = w.alpha * w.A * w.b
        raw = (jnp.log(jnp.where(gain > 0, gain, 1)) - jnp.log(price)) / w.b
        return jnp.clip(jnp.where(gain > 0, raw, 0), 0, upper)

    def _h(self, m, w):
        price = self._price(m, w)
        tokens = self._tokens(price, w)
        return m - jnp.sum(w.share * self.model.work(tokens, w)), tokens

    def _bracket(self, w: Workload):
        zeros = jnp.zeros_like(w.A)
        full = jnp.broadcast_to(w.max_tokens, w.A.shape).astype(w.dtype)
        lo = jnp.sum(w.share * self.model.work(zeros, w))
        top = jnp.sum(w.share * self.model.work(full, w))
        _, tau1 = self.model.step_coefficients(w.dtype)
        limit = 1 / (self.model.arrival_rate(w) * tau1)
        hi = jnp.minimum(top, limit * (1 - 4 * jnp.finfo(w.dtype).eps))
        return lo, hi

    def _residual(self, tokens, w):
        upper = jnp.broadcast_to(w.max_tokens, w.A.shape).astype(w.dtype)
        return self.model.residual(tokens, upper, w)

    # -- the protocol

    def init(self, w: Workload, start=None) -> _State:
        lo, hi = self._bracket(w)
        m = lo
        if start is not None:  # from the mean work of a warm start, inside the bracket
            warm, finite = usable_start(start, w)
            m_s = jnp.sum(w.share * self.model.work(warm, w))
            m = jnp.where(finite & (m_s > lo) & (m_s < hi), m_s, lo)
        _, tokens = self._h(m, w)
        zero = jnp.zeros((), jnp.int32)
        return _State(m, lo, hi, self._residual(tokens, w), zero)

    def step(self, w: Workload, s: _State) -> _State:
        h, _ = self._h(s.m, w)
        dh = jax.grad(lambda m: self._h(m, w)[0])(s.m)
        lo = jnp.where(h < 0, s.m, s.lo)
        hi = jnp.where(h > 0, s.m, s.hi)
        newton = s.m - h / jnp.where(dh > 0, dh, 1)
        inside = (dh > 0) & (newton > lo) & (newton < hi) & jnp.isfinite(newton)
        m = jnp.where(inside, newton, 0.5 * (lo + hi))
        _, tokens = self._h(m, w)
        return _State(m, lo, hi, self._residual(tokens, w), s.iterations + 1)

    def terminate(self, w: Workload, s: _State):
        eps = jnp.finfo(w.dtype).eps
        collapsed = s.hi - s.lo <= 4 * eps * s.hi
        return (s.residual <= default_rtol(w.dtype, self.rtol)) | collapsed | ~(s.lo < s.hi)

    def postprocess(self, w: Workload, s: _State) -> Iterate:
        _, tokens = self._h(s.m, w)
        value = self.model.objective(tokens, w)
        residual = self._residual(tokens, w)
        zeros = jnp.zeros_like(w.A)
        unstable = ~(self.model.load(zeros, w) < 1)
        converged = residual <= default_rtol(w.dtype, self.rtol)
        status = jnp.where(converged, Status.CONVERGED, Status.MAX_ITERATIONS)
        status = jnp.where(unstable, Status.UNSTABLE_INPUT, status).astype(jnp.int32)
        stats = {"mean_work": s.m, "price": self._price(s.m, w)}
        return Iterate(tokens, value, status, residual, stats)
