r"""The solver protocol, the problem it is given, and the loop that runs one member.

A solver is an `eqx.Module` whose fields are its settings (static configuration) and nothing
else; the data it works on is a `Problem`: one member's workload (traced) and the latency
model whose J it maximises (shared by the batch). It solves one unbatched problem through
these methods, in the spirit of optimistix (`init`, `step`, `terminate`, `postprocess`
required):

- `check(model)`: refuse, eagerly, a model the method cannot solve (by default none);
- `prepare(problem) -> constants`: what depends on the problem alone (per-task constants),
  computed once outside the loop and handed back as `problem.constants`; by default `None`;
- `init(problem, start) -> state`: the loop carry before the first step (an `eqx.Module`
  with an int32 `iterations` counter); `start` is `None` or budgets to start from (a warm
  start: the solver uses what it can of them and falls back to its own start where they are
  not finite, or not a stable allocation);
- `step(problem, state) -> state`: one iteration;
- `terminate(problem, state) -> Bool[]`: whether the member has finished (converged, stalled
  or broken down; the step limit is the driver's);
- `postprocess(problem, state) -> Iterate`: the budgets, status, residual and statistics;
- `refine(problem, iterate) -> Iterate`: more work on a member `postprocess` left
  unconverged (by default none). The staged driver runs it only for those members, gathered,
  so a few hard members do not cost a pass over the whole batch.

`run` drives one member with a `while_loop`; `staged_run` drives a large batch in stages
(`staged.py`); `solve` (in `solve.py`) validates the workload once, picks one of them, masks
rejected members and attaches the implicit derivative the model supplies. The workload a
solver sees has been validated and sanitised: its methods never see values outside the
model.

See the docs page *Solvers* for the protocol and the list of solvers.
"""

from __future__ import annotations

import abc
from typing import Any, Generic, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from .._queue.models import LatencyModel
from .._workload import Workload
from .solution import Solution

__all__ = [
    "AbstractSolver",
    "Problem",
    "Iterate",
    "run",
    "run_until",
    "running",
    "finish",
    "certified",
    "usable_start",
]

State = TypeVar("State")


class Iterate(eqx.Module):
    """What `postprocess` returns for one member: budgets with their certificate.

    Attributes:
        tokens: the budgets, one per task.
        objective: J at `tokens`.
        status: a `Status` code.
        residual: the scale-free KKT residual.
        stats: the solver's diagnostics.
    """

    tokens: Float[Array, " n"]
    objective: Float[Array, ""]
    status: Int[Array, ""]
    residual: Float[Array, ""]
    stats: dict[str, Array]


class Problem(eqx.Module):
    """What a solver is given for one member: the workload, the latency model whose J it
    maximises, and the solver's own `constants` (from `prepare`; `None` until then).

    Attributes:
        workload: one member's workload.
        model: the latency model whose J is maximised.
        constants: what the solver's `prepare` computed (`None` before it runs).
    """

    workload: Workload
    model: LatencyModel
    constants: Any = None


class AbstractSolver(eqx.Module, Generic[State]):
    """The protocol every solver of problem (9) implements (module docstring).

    Subclasses declare `rtol` (target residual; `None` for the dtype's default) and
    `max_steps`, plus their own settings, as fields. A solver holds no data and no model.

    Attributes:
        rtol: the target residual; `None` for the dtype's default.
        max_steps: the most steps a member takes.
    """

    rtol: eqx.AbstractVar[float | None]
    max_steps: eqx.AbstractVar[int]

    def check(self, model: LatencyModel) -> None:
        """Raise `InputError` when this method cannot solve problems under `model` (by
        default every model is accepted)."""

    def prepare(self, problem: Problem) -> Any:
        """Constants the iteration needs that depend on the problem alone (default `None`).

        Computed once per member before the loop (and gathered with the state in the staged
        driver), so that a step does no work that depends on the workload alone; the methods
        below find them in `problem.constants`.
        """
        return None

    @abc.abstractmethod
    def init(self, problem: Problem, start: Array | None = None) -> State:
        """The loop state before the first step, from the budgets `start` where given."""

    @abc.abstractmethod
    def step(self, problem: Problem, state: State) -> State:
        """One iteration."""

    @abc.abstractmethod
    def terminate(self, problem: Problem, state: State) -> Bool[Array, ""]:
        """True once the member needs no further step (the step limit is the driver's)."""

    @abc.abstractmethod
    def postprocess(self, problem: Problem, state: State) -> Iterate:
        """The member's budgets, status, residual and statistics."""

    def refine(self, problem: Problem, it: Iterate) -> Iterate:
        """A better `Iterate` for a member whose `postprocess` did not converge: by default
        `it` itself. Called for every such member, and may be called for others."""
        return it


def certified(problem: Problem, tokens, residual, value, rtol: float) -> Bool[Array, ""]:
    """Whether `residual` (the model's KKT residual at `tokens`, where J is `value`)
    certifies an optimum: J finite (a latency the model calls infinite is never an optimum)
    and the residual at most `rtol`, or at most the model's rounding floor
    (`LatencyModel.residual_floor`)."""
    floor = problem.model.residual_floor(tokens, problem.workload)
    return jnp.isfinite(residual) & jnp.isfinite(value) & (residual <= jnp.maximum(rtol, floor))


def running(solver: AbstractSolver, problem: Problem, state) -> Bool[Array, ""]:
    """Whether the driver would take another step."""
    return ~solver.terminate(problem, state) & (state.iterations < solver.max_steps)


def run_until(solver: AbstractSolver, problem: Problem, state, cap) -> Any:
    """Continue one member's loop until it stops or its step count reaches `cap`."""
    return jax.lax.while_loop(
        lambda s: running(solver, problem, s) & (s.iterations < cap),
        lambda s: solver.step(problem, s),
        state,
    )


def finish(solver: AbstractSolver, problem: Problem, state, it: Iterate | None = None) -> Solution:
    """The (unmasked) `Solution` of one member from its final state. `it`: the member's
    final `Iterate` where the caller has made it (postprocessed and refined), else it is
    made here."""
    if it is None:
        it = solver.refine(problem, solver.postprocess(problem, state))
    return Solution(
        tokens=it.tokens,
        objective=it.objective,
        status=it.status.astype(jnp.int32),
        residual=it.residual,
        iterations=state.iterations,
        stats=it.stats,
    )


def usable_start(start: Array, w: Workload) -> tuple[Array, Array]:
    r"""`start` where it can seed a solver: finite budgets, projected onto $[0, l_{\max}]$.
    Returns (budgets, whether every budget was finite)."""
    finite = jnp.all(jnp.isfinite(start), axis=-1)
    tokens = jnp.clip(jnp.where(jnp.isfinite(start), start, 0), 0, w.max_tokens[..., None])
    return tokens.astype(w.dtype), finite


def run(solver: AbstractSolver, problem: Problem, start: Array | None = None) -> Solution:
    """Solve one unbatched, validated problem with `solver`, from the budgets `start` where
    given: `prepare`, the loop, `postprocess` and `refine` (no masking, no implicit
    derivative: see `solve`)."""
    problem = Problem(problem.workload, problem.model, solver.prepare(problem))
    state = jax.lax.while_loop(
        lambda s: running(solver, problem, s),
        lambda s: solver.step(problem, s),
        solver.init(problem, start),
    )
    return finish(solver, problem, state)
