r"""Projected gradient ascent on J: the paper's fixed step (29), and the spectral method.

Both maximise J over a box with the update $l \leftarrow \mathrm{clip}(l + \eta \nabla J(l),
0, u)$:

- `ProjectedGradient`: the paper's method with $\eta = $ `step_fraction` $\cdot 2/L_J$,
  Lemma 3's constant (31)-(32) evaluated on the provable box $[0, \min(l_{\max}, \bar u)]$
  (`provable_box`), which holds $l^*$. If $L_J$ does not exist there the status is
  `NOT_CONTRACTIVE` and the iterate stays at 0. The paper's model only.
- `SpectralGradient`: spectral projected gradient on $[0, l_{\max}]$ under any latency
  model. The trial step is the Barzilai-Borwein step $s^\top s / (-s^\top y)$ of the last
  move, then the step is halved until the Armijo condition holds along the projection arc
  (allowing roundoff in J). J is `-inf` outside the stability region, so every accepted
  iterate is stable; no $L_J$ is needed. Each step also tries a Newton step on the budgets
  not held at a bound (the dense Hessian of the model's J) and keeps whichever gains more,
  so near the optimum it converges quadratically. Under the paper's model it starts from
  $l = 0$; under any other, from the optimum of the model's `relaxation()` (the paper's
  model, or the unlimited batching server for a limited one).

The residual is the model's scale-free projected KKT residual (`LatencyModel.residual`,
`kkt_residual` for the paper's model). Docs: *Solvers*, *Latency models*.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._errors import InputError
from .._kkt import gradient_lipschitz, kkt_residual, objective_gradient, provable_box
from .._objective import mean_accuracy, objective
from .._status import Status
from .._validate import default_rtol
from .aggregate import AggregateNewton, check_mg1
from .base import AbstractSolver, Iterate, Problem, certified, run, usable_start
from .batching import BatchingNewton

__all__ = ["ProjectedGradient", "SpectralGradient"]

ARMIJO = 1e-4  # sufficient-increase fraction of the linear prediction
BACKTRACK = 0.5  # step factor per failed trial
STEP_LIMITS = (1e-12, 1e12)  # the spectral step is kept within these bounds


class _FixedState(eqx.Module):
    tokens: Array
    grad: Array
    value: Array
    residual: Array
    iterations: Array


class ProjectedGradient(AbstractSolver):
    """The paper's projected gradient ascent (29) with a fixed step (module docstring).

    Attributes:
        step_fraction: the step as a fraction of $2/L_J$ (default 0.95).
        rtol: target projected KKT residual (default 1e-9 in float64, 1e-4 in float32).
        max_steps: the step limit (default 100000: a first-order method on a problem whose
            curvature spans decades).
    """

    step_fraction: float = 0.95
    rtol: float | None = None
    max_steps: int = 100_000

    def __check_init__(self):
        if not 0 < self.step_fraction < 1:
            raise InputError(f"step_fraction: must lie in (0, 1), got {self.step_fraction}")

    def check(self, model) -> None:
        check_mg1(self, model)

    def prepare(self, p: Problem) -> tuple[Array, Array, Array]:
        r"""`(upper, eta, has_L)`: the provable box, the fixed step $\eta$ of (38) and whether
        $L_J$ exists on the box (it costs an N x N matrix: once per solve)."""
        w = p.workload
        upper = provable_box(w)
        L_J = gradient_lipschitz(w, upper)
        has_L = jnp.isfinite(L_J) & (L_J > 0)
        eta = jnp.where(has_L, self.step_fraction * 2 / jnp.where(has_L, L_J, 1), 1.0)
        return upper, eta.astype(w.dtype), has_L

    def init(self, p: Problem, start=None) -> _FixedState:
        w = p.workload
        upper = p.constants[0]
        tokens = jnp.zeros_like(w.A)
        if start is not None:  # from finite budgets that the server sustains
            warm, finite = usable_start(start, w)
            warm = jnp.minimum(warm, upper)
            tokens = jnp.where(finite & (p.model.load(warm, w) < 1), warm, tokens)
        zero = jnp.zeros((), jnp.int32)
        return _FixedState(
            tokens,
            objective_gradient(tokens, w),
            objective(tokens, w),
            kkt_residual(tokens, w),
            zero,
        )

    def step(self, p: Problem, s: _FixedState) -> _FixedState:
        w = p.workload
        upper, eta, _ = p.constants
        new = jnp.clip(s.tokens + eta * s.grad, 0, upper)
        return _FixedState(
            new,
            objective_gradient(new, w),
            objective(new, w),
            kkt_residual(new, w),
            s.iterations + 1,
        )

    def terminate(self, p: Problem, s: _FixedState):
        return (s.residual <= default_rtol(p.workload.dtype, self.rtol)) | ~p.constants[2]

    def postprocess(self, p: Problem, s: _FixedState) -> Iterate:
        w = p.workload
        upper, eta, has_L = p.constants
        converged = certified(p, s.tokens, s.residual, s.value, default_rtol(w.dtype, self.rtol))
        status = jnp.where(converged, Status.CONVERGED, Status.MAX_ITERATIONS)
        status = jnp.where(has_L | converged, status, Status.NOT_CONTRACTIVE)
        stats = {
            "lipschitz_box": gradient_lipschitz(w, upper),
            "lipschitz": gradient_lipschitz(w),
            "step_size": eta,
        }
        return Iterate(s.tokens, s.value, status.astype(jnp.int32), s.residual, stats)


class _State(eqx.Module):
    tokens: Array
    grad: Array
    value: Array
    step: Array
    residual: Array
    iterations: Array


class SpectralGradient(AbstractSolver):
    """Spectral projected gradient with Armijo backtracking and Newton steps, under any latency
    model (module docstring).

    Attributes:
        rtol: target residual (default 1e-9 in float64, 1e-4 in float32).
        max_steps: the step limit (default 100000; `solve` uses 20000 when it is the default
            solver of a model).
        max_backtracks: step halvings per step (default 60).
    """

    rtol: float | None = None
    max_steps: int = 100_000
    max_backtracks: int = 60

    def _start(self, p: Problem):
        """The budgets the iteration starts from: 0 under the paper's model, else the optimum
        of the model's relaxation where the model's server sustains it, else 0."""
        model, w = p.model, p.workload
        zeros = jnp.zeros_like(w.A)
        if model.structure == "mg1":
            return zeros
        relaxed = model.relaxation()
        solver = AggregateNewton() if relaxed.structure == "mg1" else BatchingNewton()
        free = run(solver, Problem(relaxed.effective_workload(w), relaxed)).tokens
        free = jnp.clip(jnp.nan_to_num(free), 0, w.max_tokens)

        # where the model's server cannot sustain it, shrink it towards 0 until it can (the
        # load grows along the ray): the largest fraction with load <= 1 - 1e-3, by bisection
        def shrink(_, bracket):
            lo, hi = bracket
            mid = 0.5 * (lo + hi)
            ok = model.load(mid * free, w) <= 1 - 1e-3
            return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

        one = jnp.ones((), free.dtype)
        fraction, _ = jax.lax.fori_loop(0, 40, shrink, (0 * one, one))
        inside = model.load(free, w) < 1
        return jnp.where(inside, free, jnp.where(model.load(zeros, w) < 1, fraction * free, zeros))

    def init(self, p: Problem, start=None) -> _State:
        model, w = p.model, p.workload
        tokens = self._start(p)
        if start is not None:  # a warm start replaces the solver's own where the server takes it
            warm, finite = usable_start(start, w)
            tokens = jnp.where(finite & (model.load(warm, w) < 1), warm, tokens)
        value, grad = model.value_and_grad(tokens, w)
        first = 1e-6 * (1 + jnp.max(jnp.abs(tokens))) / (1 + jnp.max(jnp.abs(grad)))
        zero = jnp.zeros((), jnp.int32)
        return _State(tokens, grad, value, first, model.residual(tokens, w), zero)

    def step(self, p: Problem, s: _State) -> _State:
        model, w = p.model, p.workload
        upper = w.max_tokens
        eps = jnp.finfo(s.value.dtype).eps

        def trial(eta):
            new = jnp.clip(s.tokens + eta * s.grad, 0, upper)
            value = model.objective(new, w)
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
        new = self._newton(p, s, new)
        value, grad = model.value_and_grad(new, w)
        ds = new - s.tokens
        curv = -jnp.vdot(ds, grad - s.grad)
        bb = jnp.where(curv > 0, jnp.vdot(ds, ds) / jnp.where(curv > 0, curv, 1), 2 * eta)
        bb = jnp.clip(bb, *STEP_LIMITS)
        return _State(new, grad, value, bb, model.residual(new, w), s.iterations + 1)

    def _newton(self, p: Problem, s: _State, spectral):
        """The better of the spectral iterate and a Newton step on the free budgets (those
        not held at a bound by the sign of the gradient); J is smooth, so near the optimum
        this converges quadratically where first-order steps crawl."""
        model, w = p.model, p.workload
        upper = w.max_tokens
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
        tie = (j_cand >= j_spec - slack) & (model.residual(cand, w) < model.residual(spectral, w))
        better = ((j_cand > j_spec) | tie) & jnp.all(jnp.isfinite(cand))
        return jnp.where(better, cand, spectral)

    def terminate(self, p: Problem, s: _State):
        done = s.residual <= default_rtol(p.workload.dtype, self.rtol)
        return done | ~jnp.isfinite(s.value)  # no stable iterate to improve: unstable start

    def postprocess(self, p: Problem, s: _State) -> Iterate:
        rtol = default_rtol(p.workload.dtype, self.rtol)
        converged = certified(p, s.tokens, s.residual, s.value, rtol)
        status = jnp.where(converged, Status.CONVERGED, Status.MAX_ITERATIONS)
        return Iterate(
            s.tokens, s.value, status.astype(jnp.int32), s.residual, {"step_size": s.step}
        )
