r"""`solve` and `solve_latency`: the one driver that runs every solver of problem (9).

The driver takes a solver instance (or a method name as shorthand), runs it member by
member (`base.run` under `vmap`, or `staged.staged_run` for a large batch, which takes the
same steps), masks the members the validity contract rejects, and attaches the implicit
derivative of the budgets: the Woodbury KKT system of the paper's model (`implicit.py`), or
the dense one of the solver's latency model. Docs: *Solvers*.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import ArrayLike

from .._errors import InputError
from .._objective import objective
from .._queue.batching import ContinuousBatching
from .._queue.models import LatencyModel, Priority
from .._status import Status
from .._validate import sanitise
from .._workload import Workload
from .aggregate import AggregateNewton
from .base import AbstractSolver, run
from .batching import BatchingNewton
from .fixed_point import FixedPoint
from .gradient import ProjectedGradient
from .implicit import attach_implicit_gradient, attach_model_gradient
from .solution import Solution
from .staged import MIN_STAGED_BATCH, staged_run

__all__ = ["solve", "solve_latency", "METHODS", "solver_from_name"]

METHODS = ("default", "fixed-point", "pga", "pga-safeguarded")


def solver_from_name(
    method: str, rtol: float | None = None, max_steps: int | None = None
) -> AbstractSolver:
    """The solver a method name stands for, with `rtol` / `max_steps` where given."""
    kw = {}
    if rtol is not None:
        kw["rtol"] = rtol
    if max_steps is not None:
        kw["max_steps"] = max_steps
    if method == "default":
        return AggregateNewton(**kw)
    if method == "fixed-point":
        return FixedPoint(**kw)
    if method == "pga":
        return ProjectedGradient(safeguarded=False, **kw)
    if method == "pga-safeguarded":
        return ProjectedGradient(safeguarded=True, **kw)
    raise InputError(f"solver: unknown method {method!r}; choose one of {METHODS} or pass a solver")


def _with_gradient(solver: AbstractSolver, sol: Solution, w: Workload) -> Solution:
    """`sol` (computed without gradients) with the implicit derivative of its budgets attached."""
    ok = sol.converged
    safe = sanitise(w, ok)  # finite stand-ins so that masked members give zero, not NaN, gradients
    start = jnp.where(ok, sol.tokens, 0)
    if solver.model is None:
        tokens = attach_implicit_gradient(safe, start, ok)
        value = objective(tokens, safe)
    else:
        tokens = attach_model_gradient(solver.model, safe, start, ok)
        value = solver.model.objective(tokens, safe)
    return eqx.tree_at(
        lambda s: (s.tokens, s.objective),
        sol,
        (jnp.where(ok, tokens, sol.tokens), jnp.where(ok, value, sol.objective)),
    )


def _forward_batch(solver: AbstractSolver, flat: Workload, start) -> Solution:
    """Solve a flat batch (no derivatives): in stages when large, else one vmapped loop."""
    if flat.A.shape[0] >= MIN_STAGED_BATCH:  # each member iterates only as long as it needs
        return staged_run(solver, flat, start)
    return jax.vmap(lambda wi, si: run(solver, wi, si))(flat, start)


def _forward_member(solver: AbstractSolver, w: Workload, start) -> Solution:
    """Solve one member (no derivatives), and the same batch path when vmapped.

    `jax.vmap` of a function that calls `solve` on one workload would otherwise batch the
    member's `while_loop`: every member iterating as long as the slowest. The custom batching
    rule sends the batch to `_forward_batch` instead, so `solve(batch)`, `vmap(solve)(batch)`
    and a user's `vmap` over a function calling `solve` take the same steps. (Only the
    derivative-free forward solve is custom-batched; the implicit derivative is attached
    outside it, so `grad` and `vmap` compose as usual.)
    """

    @jax.custom_batching.custom_vmap
    def forward(w, start):
        return run(solver, w, start)

    @forward.def_vmap
    def forward_batched(axis_size, in_batched, w, start):
        w, start = jax.tree_util.tree_map(
            lambda x, b: x if b else jnp.broadcast_to(x, (axis_size, *x.shape)),
            (w, start),
            tuple(in_batched),
        )
        sol = _forward_batch(solver, w, start)
        return sol, jax.tree_util.tree_map(lambda _: True, sol)

    return forward(w, start)


@eqx.filter_jit
def _drive(solver: AbstractSolver, w: Workload, start) -> Solution:
    shape = w.batch_shape
    start = jax.lax.stop_gradient(start)  # the answer does not depend on where it started
    if not shape:
        sol = _forward_member(solver, jax.lax.stop_gradient(w), start)
        return _with_gradient(solver, sol, w)
    size = math.prod(shape)
    flat = jax.tree_util.tree_map(lambda x: x.reshape(size, *x.shape[len(shape) :]), w)
    if start is not None:
        start = start.reshape(size, w.num_tasks)
    sol = _forward_batch(solver, jax.lax.stop_gradient(flat), start)
    sol = jax.vmap(lambda s, wi: _with_gradient(solver, s, wi))(sol, flat)
    return jax.tree_util.tree_map(lambda x: x.reshape(*shape, *x.shape[1:]), sol)


def solve(
    workload: Workload,
    solver: str | AbstractSolver = "default",
    *,
    rtol: float | None = None,
    max_steps: int | None = None,
    start: ArrayLike | None = None,
) -> Solution:
    r"""Optimal continuous token budgets $l^*$ of problem (9), with a certificate.

    **Arguments:**

    - `workload`: a `Workload`; leading batch axes are solved member by member.
    - `solver`: a solver instance (`AggregateNewton(rtol=...)`, `FixedPoint()`,
      `ProjectedGradient(...)`), or a method name as shorthand: `"default"` (bracketed
      Newton on the aggregate prices, converges on every valid instance), `"fixed-point"`
      (the paper's (24)), `"pga"` (the paper's (29) with step $1/L_J$) or
      `"pga-safeguarded"` (spectral steps with backtracking).
    - `rtol`, `max_steps`: settings for a method name (a solver instance carries its own).
    - `start`: budgets to start from, shaped like the answer (a warm start, e.g. the solution
      at a nearby operating point or the previous step of a training loop). Only where the
      iteration begins changes, never the answer or its certificate; a member whose start is
      not finite, or not a stable allocation, starts as it would without one.

    **Returns:** a `Solution` (tokens, objective, status, residual, iterations, stats). Never
    raises for bad values: members the validity contract rejects get a status and NaN
    outputs. Works under `jit` and `vmap`; compiled once per workload shape, dtype and solver.

    Differentiable with respect to every workload field: derivatives of `tokens` (and of
    anything computed from them, such as `objective`) come from the KKT conditions at the
    solution (implicit differentiation), not from the iterations; budgets held at a bound
    have zero derivative (at `max_tokens`, they follow `max_tokens`). Members that did not
    converge get zero derivatives. Docs: *Solvers*.
    """
    if not isinstance(workload, Workload):
        raise InputError(f"workload: solve expects a Workload, got {type(workload).__name__}")
    if isinstance(solver, str):
        solver = solver_from_name(solver, rtol, max_steps)
    elif not isinstance(solver, AbstractSolver):
        raise InputError(f"solver: expected a method name or a solver, got {type(solver).__name__}")
    elif rtol is not None or max_steps is not None:
        raise InputError("rtol/max_steps: set them on the solver instance, not beside it")
    if start is not None:
        start = jnp.asarray(start)
        if start.shape != workload.A.shape:
            raise InputError(
                f"start: expected budgets of shape {workload.A.shape} (like the workload's A), "
                f"got {start.shape}"
            )
        if not jnp.issubdtype(start.dtype, jnp.floating):
            start = start.astype(workload.dtype)
    return _drive(solver, workload, start)


def _unstable_batching(sol: Solution, model: ContinuousBatching, w: Workload) -> Solution:
    """Members the batching server cannot sustain even at zero budgets: `UNSTABLE_INPUT`,
    with NaN outputs like every rejected member."""
    solved = (sol.status <= Status.MAX_ITERATIONS) | (sol.status == Status.UNSTABLE_INPUT)
    unstable = ~(model.load(jnp.zeros_like(w.A), w) < 1) & solved
    nan = jnp.asarray(jnp.nan, sol.tokens.dtype)
    return eqx.tree_at(
        lambda s: (s.tokens, s.objective, s.status),
        sol,
        (
            jnp.where(unstable[..., None], nan, sol.tokens),
            jnp.where(unstable, nan, sol.objective),
            jnp.where(unstable, Status.UNSTABLE_INPUT, sol.status).astype(sol.status.dtype),
        ),
    )


def solve_latency(
    workload: Workload,
    model: LatencyModel,
    *,
    rtol: float | None = None,
    max_steps: int = 20_000,
) -> Solution:
    r"""Budgets maximising J under a latency `model`, with a certificate.

    Spectral (Barzilai-Borwein) projected gradient ascent with Armijo backtracking on
    $[0, l_{\max}]$ (`ProjectedGradient(safeguarded=True, model=model)`), started from the
    optimum of the paper's model; the residual is the model's scale-free projected gradient.
    Under `FIFO` and `ProcessorSharing` J is concave on the stable region, so the point is the
    optimum; under `Priority` it is a KKT point. Under `ContinuousBatching(max_batch=None)`
    the latency depends on the budgets only through the mean work, and `BatchingNewton`
    solves its single-price KKT conditions directly (as fast as the default solve); with a
    `max_batch` the spectral method runs from that solution. Runs through `solve`: the same
    statuses, staging and implicit derivatives. Docs: *Latency models*, *Continuous
    batching*.
    """
    if not isinstance(model, LatencyModel):
        raise InputError(
            "model: must be a LatencyModel (FIFO, Priority, ProcessorSharing), got "
            f"{type(model).__name__}"
        )
    if isinstance(model, Priority):
        model.check(workload.num_tasks)
    if isinstance(model, ContinuousBatching):
        model.check(workload.num_tasks)
        # the step time replaces the M/G/1 service line: t0 and c play no part (and get zero
        # derivatives); neutral values keep the paper's stability rule from judging them
        workload = workload.replace(t0=jnp.zeros_like(workload.t0), c=jnp.ones_like(workload.c))
        if model.unlimited:
            # bracketed Newton on one scalar needs far fewer steps than the first-order limit
            steps = min(max_steps, BatchingNewton.__dataclass_fields__["max_steps"].default)
            sol = solve(workload, BatchingNewton(model=model, rtol=rtol, max_steps=steps))
        else:
            sol = solve(
                workload,
                ProjectedGradient(safeguarded=True, model=model, rtol=rtol, max_steps=max_steps),
            )
        return _unstable_batching(sol, model, workload)
    return solve(
        workload, ProjectedGradient(safeguarded=True, model=model, rtol=rtol, max_steps=max_steps)
    )
