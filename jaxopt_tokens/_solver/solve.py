r"""`solve`: the one driver that runs every solver of problem (9) under every latency model.

The problem (a workload and a latency model) goes to the driver; the solver holds only its
settings. The driver validates the workload once (`validate_members`, with the model's own
stability rule), runs the solver member by member on the validated, sanitised problem
(`base.run` under `vmap`, or `staged.staged_run` for a large batch, which takes the same
steps), masks the members the validity contract rejects, and attaches the implicit
derivative of the budgets that the model supplies (`LatencyModel.implicit_tangent`).
Docs: *Solvers*.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import ArrayLike

from .._choices import SOLVER_NAMES
from .._errors import InputError
from .._queue.models import FIFO, LatencyModel
from .._validate import validate_members
from .._workload import Workload
from .aggregate import AggregateNewton
from .base import AbstractSolver, Problem, run
from .batching import BatchingNewton
from .fixed_point import FixedPoint
from .gradient import ProjectedGradient, SpectralGradient
from .solution import Solution, masked_solution
from .staged import MIN_STAGED_BATCH, staged_run

__all__ = [
    "solve",
    "solve_latency",
    "SOLVER_NAMES",
    "solver_from_name",
    "default_solver",
    "attach_gradient",
]


#: the general solver's step limit when it is the default for a model
_GENERAL_MAX_STEPS = 20_000


def default_solver(
    model: LatencyModel, rtol: float | None = None, max_steps: int | None = None
) -> AbstractSolver:
    """The solver `"default"` stands for under `model`, chosen by the model's `structure`:
    `AggregateNewton` for the paper's two prices (`"mg1"`), `BatchingNewton` for one price
    on the mean work (`"mean_work"`), `SpectralGradient` otherwise.

    Args:
        model: the latency model.
        rtol: the target residual (default: the dtype's).
        max_steps: the step limit (default: the solver's).

    Returns:
        The solver instance.
    """
    if model.structure == "mg1":
        default = AggregateNewton(rtol=rtol)
        return default if max_steps is None else AggregateNewton(rtol=rtol, max_steps=max_steps)
    if model.structure == "mean_work":
        # bracketed Newton on one scalar needs far fewer steps than a first-order limit
        limit = BatchingNewton().max_steps
        steps = limit if max_steps is None else min(max_steps, limit)
        return BatchingNewton(rtol=rtol, max_steps=steps)
    steps = _GENERAL_MAX_STEPS if max_steps is None else max_steps
    return SpectralGradient(rtol=rtol, max_steps=steps)


def solver_from_name(
    method: str,
    rtol: float | None = None,
    max_steps: int | None = None,
    model: LatencyModel | None = None,
) -> AbstractSolver:
    """The solver a method name stands for (`SOLVER_NAMES`), with `rtol` / `max_steps` where
    given; `"default"` depends on the `model` (`default_solver`)."""
    if method == "default":
        return default_solver(FIFO() if model is None else model, rtol, max_steps)
    kw = {}
    if rtol is not None:
        kw["rtol"] = rtol
    if max_steps is not None:
        kw["max_steps"] = max_steps
    if method == "fixed-point":
        return FixedPoint(**kw)
    if method == "pga":
        return ProjectedGradient(**kw)
    if method == "pga-safeguarded":
        return SpectralGradient(**kw)
    raise InputError(
        f"solver: unknown method {method!r}; choose one of {SOLVER_NAMES} or pass a solver"
    )


def attach_gradient(problem: Problem, sol: Solution) -> Solution:
    """`sol` (one member, computed without gradients, on the validated problem) with the
    implicit derivative of its budgets attached; members that did not converge get zero."""
    ok = sol.converged
    start = jnp.where(ok, sol.tokens, 0)
    model, w = problem.model, problem.workload
    tokens = _attach(model, w, start, ok)
    value = model.objective(tokens, w)
    return eqx.tree_at(
        lambda s: (s.tokens, s.objective),
        sol,
        (jnp.where(ok, tokens, sol.tokens), jnp.where(ok, value, sol.objective)),
    )


def _attach(model: LatencyModel, w: Workload, tokens, ok):
    """`tokens`, whose derivative with respect to `w` is the model's implicit tangent. The
    model's Python settings stay Python values (a custom JVP would turn them into arrays,
    and `FIFO(0.0)` would stop being the paper's model); its arrays pass as data, with zero
    derivative."""
    dynamic, static = eqx.partition(model, eqx.is_array)

    @jax.custom_jvp
    def attach(dynamic, w, tokens, ok):
        return tokens

    @attach.defjvp
    def attach_jvp(primals, tangents):
        dynamic, w, tokens, ok = primals
        _, w_dot, _, _ = tangents  # the solve is a stop-gradient: its own tangents are ignored
        tangent = eqx.combine(dynamic, static).implicit_tangent(w, tokens, ok, w_dot)
        return tokens, tangent

    return attach(jax.lax.stop_gradient(dynamic), w, tokens, ok)


def _forward_batch(solver: AbstractSolver, problem: Problem, start, active) -> Solution:
    """Solve a flat batch (no derivatives): in stages when large, else one vmapped loop."""
    if problem.workload.A.shape[0] >= MIN_STAGED_BATCH:  # each member iterates as it needs
        return staged_run(solver, problem, start, active)
    model = problem.model
    return jax.vmap(lambda wi, si: run(solver, Problem(wi, model), si))(problem.workload, start)


def _forward_member(solver: AbstractSolver, problem: Problem, start, active) -> Solution:
    """Solve one member (no derivatives), and the same batch path when vmapped.

    `jax.vmap` of a function that calls `solve` on one workload would otherwise batch the
    member's `while_loop`: every member iterating as long as the slowest. The custom batching
    rule sends the batch to `_forward_batch` instead, so `solve(batch)`, `vmap(solve)(batch)`
    and a user's `vmap` over a function calling `solve` take the same steps. (Only the
    derivative-free forward solve is custom-batched; the implicit derivative is attached
    outside it, so `grad` and `vmap` compose as usual.) A model whose arrays are themselves
    batched is solved by the plain vmapped loop.
    """
    dynamic, static = eqx.partition(problem.model, eqx.is_array)

    @jax.custom_batching.custom_vmap
    def forward(w, dynamic, start, active):
        return run(solver, Problem(w, eqx.combine(dynamic, static)), start)

    @forward.def_vmap
    def forward_batched(axis_size, in_batched, w, dynamic, start, active):
        w_b, model_b, start_b, active_b = in_batched

        def broadcast(tree, batched):
            return jax.tree_util.tree_map(
                lambda x, b: x if b else jnp.broadcast_to(x, (axis_size, *x.shape)),
                tree,
                batched,
            )

        w, start, active = broadcast((w, start, active), (w_b, start_b, active_b))
        if any(jax.tree_util.tree_leaves(model_b)):
            dynamic = broadcast(dynamic, model_b)
            sol = jax.vmap(
                lambda wi, di, si: run(solver, Problem(wi, eqx.combine(di, static)), si)
            )(w, dynamic, start)
        else:
            model = eqx.combine(dynamic, static)
            sol = _forward_batch(solver, Problem(w, model), start, active)
        return sol, jax.tree_util.tree_map(lambda _: True, sol)

    return forward(problem.workload, dynamic, start, active)


def _stop_gradient(problem: Problem) -> Problem:
    """`problem` without derivatives (its arrays only: the model's Python settings stay)."""
    dynamic, static = eqx.partition(problem, eqx.is_array)
    return eqx.combine(jax.lax.stop_gradient(dynamic), static)


@eqx.filter_jit
def _drive(solver: AbstractSolver, model: LatencyModel, w: Workload, start) -> Solution:
    w = model.effective_workload(w)
    status_in, ok_in, safe = validate_members(w, model.load, model.valid(w))  # the only one
    start = jax.lax.stop_gradient(start)  # the answer does not depend on where it started
    shape = w.batch_shape
    if not shape:
        problem = Problem(safe, model)
        sol = _forward_member(solver, _stop_gradient(problem), start, ok_in)
        return masked_solution(attach_gradient(problem, sol), ok_in, status_in)
    size = math.prod(shape)

    def flat(x):
        return x.reshape(size, *x.shape[len(shape) :])

    safe, ok_flat = jax.tree_util.tree_map(flat, (safe, ok_in))
    if start is not None:
        start = start.reshape(size, w.num_tasks)
    sol = _forward_batch(solver, _stop_gradient(Problem(safe, model)), start, ok_flat)
    sol = jax.vmap(lambda s, wi: attach_gradient(Problem(wi, model), s))(sol, safe)
    sol = jax.tree_util.tree_map(lambda x: x.reshape(*shape, *x.shape[1:]), sol)
    return masked_solution(sol, ok_in, status_in)


def solve(
    workload: Workload,
    solver: str | AbstractSolver = "default",
    *,
    model: LatencyModel | None = None,
    rtol: float | None = None,
    max_steps: int | None = None,
    start: ArrayLike | None = None,
) -> Solution:
    r"""Optimal continuous token budgets $l^*$ of problem (9), with a certificate.

    Args:
        workload: a `Workload`; leading batch axes are solved member by member.
        solver: a solver instance (`AggregateNewton(rtol=...)`, `FixedPoint()`,
            `ProjectedGradient()`, `SpectralGradient()`, `BatchingNewton()`), or a method name
            as shorthand: `"default"` (the model's own: bracketed Newton on the aggregate prices
            for the paper's model, converging on every valid instance), `"fixed-point"` (the
            paper's (24)), `"pga"` (the paper's (29) with step $0.95 \cdot 2/L_J$) or
            `"pga-safeguarded"` (spectral steps with backtracking).
        model: the latency model whose J is maximised (`FIFO`, `Priority`,
            `ProcessorSharing`, `ContinuousBatching`); `None` is `FIFO()`, the paper's M/G/1 with
            deterministic service, eq. (7).
        rtol: the target residual, for a method name (a solver instance carries its own).
        max_steps: the step limit, for a method name.
        start: budgets to start from, shaped like the answer (a warm start, e.g. the solution
            at a nearby operating point or the previous step of a training loop). Only where the
            iteration begins changes, never the answer or its certificate; a member whose start is
            not finite, or not a stable allocation, starts as it would without one.

    Returns:
        a `Solution` (tokens, objective, status, residual, iterations, stats). Never
        raises for bad values: members the validity contract rejects get a status and NaN
        outputs. Works under `jit` and `vmap`; compiled once per workload shape, dtype, model
        settings and solver.

    Differentiable with respect to every workload field: derivatives of `tokens` (and of
    anything computed from them, such as `objective`) come from the KKT conditions at the
    solution (implicit differentiation), not from the iterations; budgets held at a bound
    have zero derivative (at `max_tokens`, they follow `max_tokens`). Members that did not
    converge get zero derivatives. Docs: *Solvers*, *Latency models*.
    """
    if not isinstance(workload, Workload):
        raise InputError(f"workload: solve expects a Workload, got {type(workload).__name__}")
    if model is None:
        model = FIFO()
    elif not isinstance(model, LatencyModel):
        raise InputError(
            "model: must be a LatencyModel (FIFO, Priority, ProcessorSharing, "
            f"ContinuousBatching), got {type(model).__name__}"
        )
    model.check(workload)
    if isinstance(solver, str):
        solver = solver_from_name(solver, rtol, max_steps, model)
    elif not isinstance(solver, AbstractSolver):
        raise InputError(f"solver: expected a method name or a solver, got {type(solver).__name__}")
    elif rtol is not None or max_steps is not None:
        raise InputError("rtol/max_steps: set them on the solver instance, not beside it")
    solver.check(model)
    if start is not None:
        start = jnp.asarray(start)
        if start.shape != workload.A.shape:
            raise InputError(
                f"start: expected budgets of shape {workload.A.shape} (like the workload's A), "
                f"got {start.shape}"
            )
        if not jnp.issubdtype(start.dtype, jnp.floating):
            start = start.astype(workload.dtype)
    return _drive(solver, model, workload, start)


def solve_latency(
    workload: Workload,
    model: LatencyModel,
    *,
    rtol: float | None = None,
    max_steps: int | None = None,
) -> Solution:
    r"""`solve(workload, model=model, rtol=rtol, max_steps=max_steps)`: budgets maximising J
    under a latency `model` with the model's default solver (`default_solver`).

    Under `FIFO()` that is the default solve; under a model whose J couples the tasks in
    general (`FIFO(service_cv)`, `Priority`, `ProcessorSharing`, a limited
    `ContinuousBatching`) the spectral projected gradient method with Newton steps
    (`SpectralGradient`), started from the optimum of the model's `relaxation()`; under an
    unlimited `ContinuousBatching`, bracketed Newton on its one price (`BatchingNewton`).
    Under `FIFO` and `ProcessorSharing` J is concave on the stable region, so the point is
    the optimum; under `Priority` it is a KKT point. Docs: *Latency models*, *Continuous
    batching*.

    Args:
        workload: the workload (any batch shape).
        model: the latency model.
        rtol: the target residual (default: the dtype's).
        max_steps: the solver's step limit (default: the solver's).

    Returns:
        The `Solution`, a status per member.
    """
    if not isinstance(model, LatencyModel):
        raise InputError(
            "model: must be a LatencyModel (FIFO, Priority, ProcessorSharing, "
            f"ContinuousBatching), got {type(model).__name__}"
        )
    return solve(workload, model=model, rtol=rtol, max_steps=max_steps)
