r"""The solver protocol and the one driver that runs every solver.

A solver is an `eqx.Module` whose fields are its settings (static configuration); the data
it works on, a `Workload`, is traced. It solves *one* unbatched workload through four
methods, in the spirit of optimistix:

- `init(w) -> state`: the loop carry before the first step (an `eqx.Module` with an int32
  `iterations` counter);
- `step(w, state) -> state`: one iteration;
- `terminate(w, state) -> Bool[]`: whether the member has finished (converged, stalled or
  broken down; the step limit is the driver's);
- `postprocess(w, state) -> Iterate`: the budgets, status, residual and statistics.

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

__all__ = ["AbstractSolver", "Iterate", "run", "run_until", "running", "complete", "certified"]

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

    @abc.abstractmethod
    def init(self, w: Workload) -> State:
        """The loop state before the first step."""

    @abc.abstractmethod
    def step(self, w: Workload, state: State) -> State:
        """One iteration."""

    @abc.abstractmethod
    def terminate(self, w: Workload, state: State) -> Bool[Array, ""]:
        """True once the member needs no further step (the step limit is the driver's)."""

    @abc.abstractmethod
    def postprocess(self, w: Workload, state: State) -> Iterate:
        """The member's budgets, status, residual and statistics."""


def certified(w: Workload, tokens, residual, rtol: float) -> Bool[Array, ""]:
    """Whether `residual` (the KKT residual of `tokens`) certifies an optimum: at most `rtol`,
    or at most the dtype's rounding floor near saturation (`residual_floor`)."""
    return jnp.isfinite(residual) & (residual <= jnp.maximum(rtol, residual_floor(tokens, w)))


def running(solver: AbstractSolver, w: Workload, state) -> Bool[Array, ""]:
    """Whether the driver would take another step."""
    return ~solver.terminate(w, state) & (state.iterations < solver.max_steps)


def run_until(solver: AbstractSolver, w: Workload, state, cap) -> Any:
    """Continue one member's loop until it stops or its step count reaches `cap`."""
    return jax.lax.while_loop(
        lambda s: running(solver, w, s) & (s.iterations < cap), lambda s: solver.step(w, s), state
    )


def complete(solver: AbstractSolver, w: Workload, status_in, ok_in, state) -> Solution:
    """The `Solution` of one member from its final state (rejected members masked)."""
    it = solver.postprocess(w, state)
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


def run(solver: AbstractSolver, w: Workload) -> Solution:
    """Solve one unbatched workload with `solver` (no implicit derivative; see `solve`)."""
    status_in, ok_in, safe = prepare(w)
    state = jax.lax.while_loop(
        lambda s: running(solver, safe, s), lambda s: solver.step(safe, s), solver.init(safe)
    )
    return complete(solver, safe, status_in, ok_in, state)
