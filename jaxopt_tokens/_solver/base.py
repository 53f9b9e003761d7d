r"""The solver protocol and the one driver that runs every solver.

A solver is an `eqx.Module` whose fields are its settings (static configuration); the data
it works on, a `Workload`, is traced. It solves *one* unbatched workload through these
methods, in the spirit of optimistix (`init`, `step`, `terminate`, `postprocess` required):

- `prepare(w) -> problem`: what the iteration works on: the workload, with whatever
  depends on it alone (per-task constants) computed once, outside the loop; by default the
  workload itself;
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
(`staged.py`); `solve` (in `solve.py`) picks one of them, masks rejected members and
attaches the implicit derivative of the budgets. The workload a solver sees has been
checked (`member_status`) and sanitised: its methods never see values outside the model.

See the docs page *Solvers* for the protocol and the list of solvers.
"""

from __future__ import annotations

import abc
from typing import Any, Generic, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from .._kkt import residual_floor
from .._validate import prepare
from .._workload import Workload
from .solution import Solution, masked_solution

__all__ = [
    "AbstractSolver",
    "Iterate",
    "run",
    "run_until",
    "running",
    "complete",
    "certified",
    "usable_start",
    "initial_state",
]

State = TypeVar("State")


class Iterate(eqx.Module):
    """What `postprocess` returns for one member: budgets with their certificate."""

    tokens: Float[Array, " n"]
    objective: Float[Array, ""]
    status: Int[Array, ""]
    residual: Float[Array, ""]
    stats: dict[str, Array]


class AbstractSolver(eqx.Module, Generic[State]):
    """The protocol every solver of problem (9) implements (module docstring).

    Subclasses declare `rtol` (target residual; `None` for the dtype's default) and
    `max_steps`, plus their own settings, as fields.
    """

    rtol: eqx.AbstractVar[float | None]
    max_steps: eqx.AbstractVar[int]

    #: the latency model whose objective the solver maximises (`None`: the paper's FIFO
    #: M/G/1 with deterministic service, eq. (7)); it decides the implicit derivative.
    model: eqx.AbstractVar[Any]

    def prepare(self, w: Workload) -> Any:
        """The problem `init`/`step`/`terminate`/`postprocess` receive: by default `w`.

        Computed once per member before the loop (and gathered with the state in the staged
        driver), so that a step does no work that depends on the workload alone.
        """
        return w

    @abc.abstractmethod
    def init(self, w: Workload, start: Array | None = None) -> State:
        """The loop state before the first step, from the budgets `start` where given."""

    @abc.abstractmethod
    def step(self, w: Workload, state: State) -> State:
        """One iteration."""

    @abc.abstractmethod
    def terminate(self, w: Workload, state: State) -> Bool[Array, ""]:
        """True once the member needs no further step (the step limit is the driver's)."""

    @abc.abstractmethod
    def postprocess(self, w: Workload, state: State) -> Iterate:
        """The member's budgets, status, residual and statistics."""

    def refine(self, w: Workload, it: Iterate) -> Iterate:
        """A better `Iterate` for a member whose `postprocess` did not converge: by default
        `it` itself. Called for every such member, and may be called for others."""
        return it


def certified(w: Workload, tokens, residual, rtol: float) -> Bool[Array, ""]:
    """Whether `residual` (the KKT residual of `tokens`) certifies an optimum: at most `rtol`,
    or at most the dtype's rounding floor near saturation (`residual_floor`)."""
    return jnp.isfinite(residual) & (residual <= jnp.maximum(rtol, residual_floor(tokens, w)))


def running(solver: AbstractSolver, w, state) -> Bool[Array, ""]:
    """Whether the driver would take another step."""
    return ~solver.terminate(w, state) & (state.iterations < solver.max_steps)


def run_until(solver: AbstractSolver, w, state, cap) -> Any:
    """Continue one member's loop until it stops or its step count reaches `cap`."""
    return jax.lax.while_loop(
        lambda s: running(solver, w, s) & (s.iterations < cap), lambda s: solver.step(w, s), state
    )


def complete(solver: AbstractSolver, w, status_in, ok_in, state, it=None) -> Solution:
    """The `Solution` of one member from its final state (rejected members masked); `w` is
    the member's prepared problem. `it`: the member's final `Iterate` where the caller has
    made it (postprocessed and refined), else it is made here."""
    if it is None:
        it = solver.refine(w, solver.postprocess(w, state))
    return masked_solution(
        ok_in,
        status_in,
        it.status,
        it.tokens,
        it.objective,
        it.residual,
        state.iterations,
        it.stats,
    )


def initial_state(solver: AbstractSolver, problem, start: Array | None = None):
    """`solver.init(problem, start)`; without a start, `solver.init(problem)`, so that a
    solver written before warm starts (an `init` without `start`) runs unchanged."""
    return solver.init(problem) if start is None else solver.init(problem, start)


def usable_start(start: Array, w: Workload) -> tuple[Array, Array]:
    r"""`start` where it can seed a solver: finite budgets, projected onto $[0, l_{\max}]$.
    Returns (budgets, whether every budget was finite)."""
    finite = jnp.all(jnp.isfinite(start), axis=-1)
    tokens = jnp.clip(jnp.where(jnp.isfinite(start), start, 0), 0, w.max_tokens[..., None])
    return tokens.astype(w.dtype), finite


def run(solver: AbstractSolver, w: Workload, start: Array | None = None) -> Solution:
    """Solve one unbatched workload with `solver`, from the budgets `start` where given (no
    implicit derivative; see `solve`)."""
    status_in, ok_in, safe = prepare(w)
    problem = solver.prepare(safe)
    state = jax.lax.while_loop(
        lambda s: running(solver, problem, s),
        lambda s: solver.step(problem, s),
        initial_state(solver, problem, start),
    )
    return complete(solver, problem, status_in, ok_in, state)
