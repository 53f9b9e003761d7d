"""Latency models of the single server beyond the paper's FIFO M/G/1 with deterministic service.

The paper's objective (7) charges the mean system time of a FIFO M/G/1 queue whose service
time for type k is exactly $t_k(l_k)$ (eqs. (3)-(6)). The models here keep the Poisson
arrivals and the accuracy term and change the latency term $E[T] = \\sum_k \\pi_k E[T_k]$:

- `FIFO(service_cv)`: random service times with coefficient of variation $cv_k$ per type,
  $\\mathrm{var}_k = (cv_k t_k)^2$, so $E[S^2] = \\sum_k \\pi_k t_k^2 (1 + cv_k^2)$ in the
  Pollaczek-Khinchine mean wait (5); `cv = 0` is the paper's model.
- `Priority(order, service_cv)`: non-preemptive priority by task type (Cobham's formula):
  with $\\sigma_j$ the load of the classes served before or with class j,
  $E[W_j] = W_0 / ((1 - \\sigma_{j-1})(1 - \\sigma_j))$, $W_0 = \\lambda E[S^2] / 2$.
- `ProcessorSharing()`: the server splits its rate equally among the queries present;
  $E[T_k] = t_k / (1 - \\rho)$ (insensitive to the service-time distribution).

Each model gives per-type mean system times `system_times(tokens, w)`; `objective` is
$\\alpha \\sum_k \\pi_k p_k(l_k) - \\sum_k \\pi_k E[T_k]$, and `solve_latency` maximises it by
spectral projected gradient (J need not be concave under priority). `simulate(...,
discipline=...)` simulates each model; the tests check the formulas against it.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._errors import InputError
from ._objective import mean_accuracy
from ._solution import Solution, Status, default_rtol, finish, prepare
from ._workload import Workload

__all__ = ["LatencyModel", "FIFO", "Priority", "ProcessorSharing", "latency_objective", "solve_latency"]


def _cv(service_cv, w: Workload):
    return jnp.broadcast_to(jnp.asarray(service_cv, w.dtype), w.A.shape)


class LatencyModel(eqx.Module):
    """Mean system time per task type as a function of the budgets."""

    def system_times(self, tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b n"]:
        raise NotImplementedError

    def mean_system_time(self, tokens: Float[Array, "*b n"], w: Workload) -> Float[Array, "*b"]:
        """$\\sum_k \\pi_k E[T_k]$; `+inf` when the queue is unstable."""
        return jnp.sum(w.share * self.system_times(tokens, w), axis=-1)


def _moments(tokens, w: Workload, service_cv):
    t = w.t0 + w.c * tokens
    cv = _cv(service_cv, w)
    return t, w.arrival_rate[..., None] * w.share * t, w.share * t * t * (1 + cv * cv)


class FIFO(LatencyModel):
    """First come, first served; service time of type k has coefficient of variation `service_cv`."""

    service_cv: ArrayLike = 0.0

    def system_times(self, tokens, w):
        t, rho_k, m2_k = _moments(tokens, w, self.service_cv)
        rho = jnp.sum(rho_k, -1, keepdims=True)
        stable = rho < 1
        wait = jnp.where(stable, w.arrival_rate[..., None] * jnp.sum(m2_k, -1, keepdims=True)
                         / (2 * jnp.where(stable, 1 - rho, 1)), jnp.inf)
        return wait + t


class Priority(LatencyModel):
    """Non-preemptive priority by task type, FIFO within a type (Cobham's formula).

    `order`: task indices from highest to lowest priority (static), e.g. `(5, 1, 4, 0, 2, 3)`.
    Stable iff the total load is below 1; a class whose cumulative load reaches 1 waits forever.
    """

    order: tuple[int, ...] = eqx.field(static=True)
    service_cv: ArrayLike = 0.0

    def system_times(self, tokens, w):
        if sorted(self.order) != list(range(w.num_tasks)):
            raise InputError(f"order: must be a permutation of the {w.num_tasks} task indices, got {self.order}")
        t, rho_k, m2_k = _moments(tokens, w, self.service_cv)
        perm = jnp.asarray(self.order)
        sigma = jnp.cumsum(rho_k[..., perm], -1)  # load served before or with each class, in order
        before = sigma - rho_k[..., perm]
        W0 = w.arrival_rate[..., None] * jnp.sum(m2_k, -1, keepdims=True) / 2
        ok = sigma < 1
        denom = jnp.where(ok, (1 - before) * (1 - sigma), 1)
        wait_sorted = jnp.where(ok, W0 / denom, jnp.inf)
        wait = jnp.zeros_like(wait_sorted).at[..., perm].set(wait_sorted)
        return wait + t


class ProcessorSharing(LatencyModel):
    """Egalitarian processor sharing: $E[T_k] = t_k / (1 - \\rho)$ (M/G/1-PS)."""

    def system_times(self, tokens, w):
        t, rho_k, _ = _moments(tokens, w, 0.0)
        rho = jnp.sum(rho_k, -1, keepdims=True)
        stable = rho < 1
        return jnp.where(stable, t / jnp.where(stable, 1 - rho, 1), jnp.inf)


def latency_objective(tokens: Float[Array, "*b n"], w: Workload, model: LatencyModel) -> Float[Array, "*b"]:
    """$J(l) = \\alpha \\sum_k \\pi_k p_k(l_k) - \\sum_k \\pi_k E[T_k](l)$ under `model` (eq. (7) generalised)."""
    return w.alpha * mean_accuracy(tokens, w) - model.mean_system_time(tokens, w)


class _State(eqx.Module):
    tokens: Array
    grad: Array
    value: Array
    prev_tokens: Array
    prev_grad: Array
    residual: Array
    iterations: Array


def _residual(tokens, upper, w: Workload, model: LatencyModel):
    """Scale-free projected KKT residual: per task, the imbalance between the marginal value
    of accuracy and the marginal latency cost relative to their size, in the directions the
    box $[0, l_{\\max}]$ allows (the certificate `kkt_residual` gives for the FIFO model)."""
    gain = jax.grad(lambda l: jnp.sum(w.alpha * mean_accuracy(l, w)))(tokens)
    cost = jax.grad(lambda l: jnp.sum(model.mean_system_time(l, w)))(tokens)
    g = gain - cost
    blocked = ((tokens <= 0) & (g <= 0)) | ((tokens >= upper) & (g >= 0))
    rel = jnp.abs(g) / (jnp.abs(gain) + jnp.abs(cost) + jnp.finfo(tokens.dtype).tiny)
    return jnp.max(jnp.where(blocked, 0, rel))


def _solve_one(w: Workload, model: LatencyModel, start, rtol, max_steps: int, max_backtracks: int) -> Solution:
    status_in, ok_in, safe = prepare(w)
    dtype = safe.dtype
    upper = jnp.broadcast_to(safe.max_tokens, safe.A.shape).astype(dtype)
    f = lambda l: latency_objective(l, safe, model)  # noqa: E731
    value_and_grad = jax.value_and_grad(f)
    eps = jnp.finfo(dtype).eps

    def step(s: _State) -> _State:
        ds, dg = s.tokens - s.prev_tokens, s.grad - s.prev_grad
        curv = -jnp.vdot(ds, dg)
        bb = jnp.where(curv > 0, jnp.vdot(ds, ds) / jnp.where(curv > 0, curv, 1), 1.0)
        eta = jnp.clip(bb, 1e-12, 1e12)

        def try_(carry):
            eta, _, _, k = carry
            trial = jnp.clip(s.tokens + eta * s.grad, 0, upper)
            v = f(trial)
            return eta / 4, trial, v, k + 1

        def bad(carry):
            _, trial, v, k = carry
            # Armijo along the projection arc, allowing roundoff in J
            gain = jnp.vdot(s.grad, trial - s.tokens)
            ok = v >= s.value + 1e-4 * gain - 8 * eps * jnp.abs(s.value)
            return (~ok) & (k < max_backtracks)

        _, trial, _, _ = jax.lax.while_loop(bad, try_, try_((eta, s.tokens, s.value, 0)))
        v, g = value_and_grad(trial)
        return _State(trial, g, v, s.tokens, s.grad, _residual(trial, upper, safe, model), s.iterations + 1)

    def more(s: _State):
        return (s.residual > rtol) & (s.iterations < max_steps)

    l0 = jnp.clip(start, 0, upper)
    v0, g0 = value_and_grad(l0)
    # a first BB pair from a tiny gradient step
    l1 = jnp.clip(l0 + 1e-6 * (1 + jnp.max(jnp.abs(l0))) * g0 / (1 + jnp.max(jnp.abs(g0))), 0, upper)
    v1, g1 = value_and_grad(l1)
    s = jax.lax.while_loop(more, step, _State(l1, g1, v1, l0, g0, _residual(l1, upper, safe, model), jnp.asarray(1)))
    status = jnp.where(s.residual <= rtol, Status.CONVERGED, Status.MAX_ITERATIONS)
    return finish(ok_in, status_in, status, s.tokens, s.value, s.residual, s.iterations, {})


def solve_latency(
    workload: Workload,
    model: LatencyModel,
    *,
    rtol: float | None = None,
    max_steps: int = 20_000,
) -> Solution:
    """Budgets maximising J under a latency `model`, with a certificate.

    Spectral (Barzilai-Borwein) projected gradient ascent with Armijo backtracking on
    $[0, l_{\\max}]$, started from the FIFO optimum (`solve`); the residual is the scale-free
    projected-gradient step. Under `FIFO` and `ProcessorSharing` J is concave on the stable
    region (a convex-in-l latency), so the point is the optimum; under `Priority` it is a
    KKT point. `jit`/`vmap`-safe: batch members get a status each, never an exception.
    """
    from ._solve import solve

    if not isinstance(model, LatencyModel):
        raise TypeError(f"model must be a LatencyModel (FIFO, Priority, ProcessorSharing), got {type(model).__name__}")
    if isinstance(model, Priority) and sorted(model.order) != list(range(workload.num_tasks)):
        raise InputError(f"order: must be a permutation of the {workload.num_tasks} task indices, got {model.order}")
    rtol = default_rtol(workload.dtype, rtol)
    start = jnp.nan_to_num(jax.lax.stop_gradient(solve(workload).tokens))
    fn = lambda w, l0: _solve_one(w, model, l0, rtol, max_steps, 60)  # noqa: E731
    for _ in workload.batch_shape:
        fn = jax.vmap(fn)
    return eqx.filter_jit(fn)(workload, start)


def check_service_cv(service_cv, num_tasks: int) -> np.ndarray:
    """Validate a scalar or per-task coefficient of variation; raise `InputError` naming the field."""
    cv = np.asarray(service_cv, dtype=float)
    if cv.ndim > 1 or (cv.ndim == 1 and cv.shape[0] != num_tasks):
        raise InputError(f"service_cv: a scalar or one value per task ({num_tasks}), got shape {cv.shape}")
    if not np.all(np.isfinite(cv)) or np.any(cv < 0):
        raise InputError(f"service_cv: must be finite and >= 0, got {service_cv!r}")
    return cv
