r"""Projected gradient ascent (29): the paper's fixed step, and the spectral safeguarded method.

Both maximise J over a box $[0, u]$ with the update $l \leftarrow \mathrm{clip}(l + \eta
\nabla J(l), 0, u)$:

- `ProjectedGradient(safeguarded=False)`: the paper's method with $\eta = $ `step_fraction`
  $\cdot 2/L_J$, Lemma 3's constant (31)-(32) evaluated on the provable box
  $[0, \min(l_{\max}, \bar u)]$ (`provable_box`), which holds $l^*$. If $L_J$ does not exist
  there the status is `NOT_CONTRACTIVE` and the iterate stays at 0.
- `ProjectedGradient(safeguarded=True)`: spectral projected gradient. The trial step is the
  Barzilai-Borwein step $s^\top s / (-s^\top y)$ of the last move, then the step is halved
  until the Armijo condition holds along the projection arc (allowing roundoff in J). J is
  `-inf` outside the stability region, so every accepted iterate is stable; no $L_J$ needed.
- With a `model` (`FIFO`, `Priority`, `ProcessorSharing`, `ContinuousBatching`: see
  *Latency models*), the same spectral method maximises that model's J over
  $[0, l_{\max}]$, started from the optimum of the paper's model (of the unlimited batching
  server for `ContinuousBatching`); each step also tries a Newton step on the budgets not
  held at a bound (the dense Hessian of the model's J) and keeps whichever gains more, so
  it converges in a few steps. This is the solver of `solve_latency`.

The residual is the scale-free projected KKT residual (`kkt_residual`) for the paper's
model and the model's own (`LatencyModel.residual`) otherwise. Docs: *Solvers*.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._errors import InputError
from .._kkt import gradient_lipschitz, kkt_residual, objective_gradient, provable_box
from .._objective import mean_accuracy, objective, service_moments
from .._queue.batching import ContinuousBatching
from .._queue.models import LatencyModel
from .._status import Status
from .._validate import default_rtol
from .._workload import Workload
from .aggregate import AggregateNewton
from .base import AbstractSolver, Iterate, certified, run, usable_start
from .batching import BatchingNewton

__all__ = ["ProjectedGradient"]

ARMIJO = 1e-4  # sufficient-increase fraction of the linear prediction
BACKTRACK = 0.5  # step factor per failed trial
STEP_RANGE = 1e6  # the spectral step is kept within this factor of the first step


class _State(eqx.Module):
    tokens: Array
    grad: Array
    value: Array
    step: Array
    residual: Array
    iterations: Array
    eta0: Array  # the fixed step of (38), computed once: L_J costs an N x N matrix
    has_L: Array


class ProjectedGradient(AbstractSolver):
    """Projected gradient ascent on J (module docstring).

    **Arguments:** `safeguarded` (spectral steps with backtracking instead of the fixed
    step), `step_fraction` (the fixed step as a fraction of $2/L_J$; default 0.95), `rtol`
    (default 1e-9 in float64, 1e-4 in float32), `max_steps` (default 100000: a first-order
    method on a problem whose curvature spans decades), `max_backtracks`, `model` (a
    `LatencyModel`; `None` is the paper's J, eq. (7)).
    """

    safeguarded: bool = False
    step_fraction: float = 0.95
    rtol: float | None = None
    max_steps: int = 100_000
    max_backtracks: int = 60
    model: LatencyModel | None = None

    def __check_init__(self):
        if self.model is not None and not isinstance(self.model, LatencyModel):
            raise InputError(
                f"model: must be a LatencyModel (FIFO, Priority, ProcessorSharing), "
                f"got {type(self.model).__name__}"
            )
        if self.model is not None and not self.safeguarded:
            raise InputError("safeguarded: a latency model needs the safeguarded (spectral) method")
        if not 0 < self.step_fraction < 1:
            raise InputError(f"step_fraction: must lie in (0, 1), got {self.step_fraction}")

    # -- the problem: value, gradient, box and residual of J

    def _value_and_grad(self, tokens, w):
        if self.model is None:
            return objective(tokens, w), objective_gradient(tokens, w)
        return jax.value_and_grad(self.model.objective)(tokens, w)

    def _upper(self, w):
        if self.model is None:
            return provable_box(w)
        return jnp.broadcast_to(w.max_tokens, w.A.shape).astype(w.dtype)

    def _residual(self, tokens, w):
        if self.model is None:
            return kkt_residual(tokens, w)
        return self.model.residual(tokens, self._upper(w), w)

    def _first_step(self, w):
        r"""`(eta0, has_L)`: the fixed step $\eta$ of (38) and whether $L_J$ exists."""
        if self.model is not None:
            return jnp.ones((), w.dtype), jnp.bool_(True)
        L_J = gradient_lipschitz(w, self._upper(w))
        has_L = jnp.isfinite(L_J) & (L_J > 0)
        eta0 = jnp.where(has_L, self.step_fraction * 2 / jnp.where(has_L, L_J, 1), 1.0)
        return eta0.astype(w.dtype), has_L

    # -- the protocol

    def init(self, w: Workload, start=None) -> _State:
        if self.model is None:
            tokens = jnp.zeros_like(w.A)
        elif isinstance(self.model, ContinuousBatching):
            # the optimum without the batch limit, if the limited server sustains it, else 0
            free = run(BatchingNewton(model=self.model.replace(max_batch=None)), w).tokens
            free = jnp.clip(jnp.nan_to_num(free), 0, self._upper(w))
            tokens = jnp.where(self.model.load(free, w) < 1, free, jnp.zeros_like(free))
        else:  # the paper's optimum: a stable point near the model's
            tokens = jnp.clip(jnp.nan_to_num(run(AggregateNewton(), w).tokens), 0, self._upper(w))
        if start is not None:  # a warm start replaces the solver's own where the server takes it
            warm, finite = usable_start(start, w)
            warm = jnp.minimum(warm, self._upper(w))
            if isinstance(self.model, ContinuousBatching):
                load = self.model.load(warm, w)
            else:  # the M/G/1 service line of the paper and of the other latency models
                load = w.arrival_rate * service_moments(warm, w)[0]
            tokens = jnp.where(finite & (load < 1), warm, tokens)
        value, grad = self._value_and_grad(tokens, w)
        eta0, has_L = self._first_step(w)
        first = eta0
        if self.model is not None:  # no L_J: size the first step from the gradient
            first = 1e-6 * (1 + jnp.max(jnp.abs(tokens))) / (1 + jnp.max(jnp.abs(grad)))
        zero = jnp.zeros((), jnp.int32)
        return _State(tokens, grad, value, first, self._residual(tokens, w), zero, eta0, has_L)

    def step(self, w: Workload, s: _State) -> _State:
        upper = self._upper(w)
        if not self.safeguarded:
            new = jnp.clip(s.tokens + s.step * s.grad, 0, upper)
            value, grad = self._value_and_grad(new, w)
            residual = self._residual(new, w)
            return _State(new, grad, value, s.step, residual, s.iterations + 1, s.eta0, s.has_L)
        eps = jnp.finfo(s.value.dtype).eps

        def trial(eta):
            new = jnp.clip(s.tokens + eta * s.grad, 0, upper)
            value = self._value_and_grad(new, w)[0] if self.model is not None else objective(new, w)
            slack = 8 * eps * jnp.abs(s.value)  # roundoff in J near the optimum
            ok = value >= s.value + ARMIJO * jnp.vdot(s.grad, new - s.tokens) - slack
            return new, value, ok

        def backtrack(c):
            eta, _, _, _, k = c
            new, value, ok = trial(BACKTRACK * eta)
            return BACKTRACK * eta, new, value, ok, k + 1

        new, value, ok = trial(s.step)
        eta, new, value, ok, _ = jax.lax.while_loop(
            lambda c: ~c[3] & (c[4] < self.max_backtracks), backtrack, (s.step, new, value, ok, 0)
        )
        new = jnp.where(ok, new, s.tokens)
        if self.model is not None:  # a projected Newton step where it does better
            new = self._newton(w, s, new, upper)
        value, grad = self._value_and_grad(new, w)
        ds = new - s.tokens
        curv = -jnp.vdot(ds, grad - s.grad)
        bb = jnp.where(curv > 0, jnp.vdot(ds, ds) / jnp.where(curv > 0, curv, 1), 2 * eta)
        if self.model is None:
            bb = jnp.clip(bb, s.eta0 / STEP_RANGE, s.eta0 * STEP_RANGE)
        else:
            bb = jnp.clip(bb, 1e-12, 1e12)
        residual = self._residual(new, w)
        return _State(new, grad, value, bb, residual, s.iterations + 1, s.eta0, s.has_L)

    def _newton(self, w: Workload, s: _State, spectral, upper):
        """The better of the spectral iterate and a Newton step on the free budgets (those
        not held at a bound by the sign of the gradient); the latency models' J is smooth,
        so near the optimum this converges quadratically where first-order steps crawl."""
        model = self.model
        assert model is not None
        g = s.grad
        held = ((s.tokens <= 0) & (g <= 0)) | ((s.tokens >= upper) & (g >= 0))
        H = jax.hessian(model.objective)(s.tokens, w)
        free = ~held
        mask = free[:, None] & free[None, :]
        eye = jnp.eye(g.shape[0], dtype=g.dtype)
        Hf = jnp.where(mask, H, -eye)  # fixed coordinates: a unit step of zero gradient
        d = jnp.linalg.solve(Hf, -jnp.where(free, g, 0))
        cand = jnp.clip(s.tokens + jnp.where(free, d, 0), 0, upper)
        j_cand, j_spec = model.objective(cand, w), model.objective(spectral, w)
        # near the optimum J cannot tell the two apart: its changes fall below the rounding
        # of its two terms (J is their small difference). There the smaller KKT residual
        # decides, or Newton's quadratic steps are refused
        size = jnp.abs(w.alpha * mean_accuracy(spectral, w)) + jnp.abs(
            model.mean_system_time(spectral, w)
        )
        slack = 16 * jnp.finfo(g.dtype).eps * size
        tie = (j_cand >= j_spec - slack) & (self._residual(cand, w) < self._residual(spectral, w))
        better = ((j_cand > j_spec) | tie) & jnp.all(jnp.isfinite(cand))
        return jnp.where(better, cand, spectral)

    def terminate(self, w: Workload, s: _State):
        done = s.residual <= default_rtol(w.dtype, self.rtol)
        if self.model is not None:  # no stable iterate to improve: the start is unstable
            done |= ~jnp.isfinite(s.value)
        if not self.safeguarded:
            done |= ~s.has_L
        return done

    def postprocess(self, w: Workload, s: _State) -> Iterate:
        rtol = default_rtol(w.dtype, self.rtol)
        if self.model is None:
            converged = certified(w, s.tokens, s.residual, rtol)
        else:
            converged = s.residual <= rtol
        status = jnp.where(converged, Status.CONVERGED, Status.MAX_ITERATIONS)
        if not self.safeguarded:
            status = jnp.where(s.has_L | converged, status, Status.NOT_CONTRACTIVE)
        stats = {}
        if self.model is None:
            stats = {
                "lipschitz_box": gradient_lipschitz(w, self._upper(w)),
                "lipschitz": gradient_lipschitz(w),
                "step_size": s.step if self.safeguarded else s.eta0,
            }
        return Iterate(s.tokens, s.value, status.astype(jnp.int32), s.residual, stats)
