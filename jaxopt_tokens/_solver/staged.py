"""Solving a large batch without iterating every member as long as the slowest one.

Under `vmap`, a `while_loop` runs until its *last* member stops, so a plain vmapped solve does
the slowest member's steps of work for every member (on random workloads the slowest member
needs several times the median's steps). `staged_run` runs the same per-member loop in
stages instead: every member for the first `FIRST_STEPS` steps, then rounds in which the
members still running are gathered into a buffer and take `ROUND_STEPS` more steps, until none
is left. The buffer of a round is the smallest of a few fixed sizes (a quarter, a sixteenth
and a sixty-fourth of the batch) that holds every running member, chosen by `lax.switch`:
shapes stay static, so the solve compiles once and runs unchanged on accelerators, and the
last rounds, with few members left, cost little. Each member takes exactly the same steps as
in the plain solve; only which members share a vectorised step changes, so the result does
not depend on the buffers.

After the rounds, `postprocess` runs for every member and the solver's `refine` only for the
members it left unconverged, gathered the same way (a `while_loop` inside `postprocess` would
make every member pay for the hardest one).

Any solver of the protocol in `base.py` runs this way (its state counts `iterations`). The
rounds cost more than the member-steps they do: members that stop inside a round leave their
slots idle, partly filled buffers run full, and each round pays a gather and a scatter. How
the schedule was chosen, and what each phase costs, is measured by `benchmarks/step_cost.py`
and recorded in `benchmarks/README.md`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._status import Status
from .base import AbstractSolver, Problem, finish, run_until, running
from .solution import Solution

__all__ = [
    "staged_run",
    "rounds",
    "on_members",
    "per_member",
    "buffer_sizes",
    "MIN_STAGED_BATCH",
    "FIRST_STEPS",
    "ROUND_STEPS",
    "BUFFER_FRACTIONS",
]

FIRST_STEPS = 2  # every member takes these steps together
ROUND_STEPS = 3  # then rounds: the running members, gathered, take this many more steps
BUFFER_FRACTIONS = (1 / 4, 1 / 16, 1 / 64)  # the round buffers, as fractions of the batch
MIN_STAGED_BATCH = 2048


def _take(tree, idx):
    return jax.tree_util.tree_map(lambda x: x[idx], tree)


def on_members(fn, mask, size: int, w, tree):
    """`tree` with `fn(w_i, tree_i)` written for the first `size` members where `mask` holds
    (gathered into a buffer of `size` rows, so shapes stay static); also returns the indices
    written, padding rows pointing past the batch."""
    batch = mask.shape[0]
    idx = jnp.nonzero(mask, size=size, fill_value=0)[0]
    valid = jnp.arange(size) < jnp.sum(mask)
    sub = fn(_take(w, idx), _take(tree, idx))
    target = jnp.where(valid, idx, batch)  # padding rows are dropped, never written
    tree = jax.tree_util.tree_map(
        lambda full, new: full.at[target].set(new, mode="drop"), tree, sub
    )
    return tree, target


def buffer_sizes(batch: int) -> tuple[int, ...]:
    """The round buffers for a batch of `batch` members, largest first (no duplicates)."""
    sizes = sorted({max(1, int(batch * f)) for f in BUFFER_FRACTIONS}, reverse=True)
    return tuple(sizes)


def per_member(fn, model):
    """`fn(problem, *rest)` vmapped over members given as `(workload, constants)` data; the
    model is shared by the batch."""
    return jax.vmap(lambda data, *rest: fn(Problem(data[0], model, data[1]), *rest))


def rounds(solver: AbstractSolver, model, data, state, sizes: tuple[int, ...]):
    """Rounds of `ROUND_STEPS` steps for the running members, until none runs; each round in
    the smallest buffer of `sizes` that holds them all (the largest takes the first ones)."""
    is_running = per_member(lambda p, s: running(solver, p, s), model)
    advance = per_member(lambda p, s: run_until(solver, p, s, s.iterations + ROUND_STEPS), model)

    def round_in(size):
        def one_round(state, live):
            return on_members(advance, live, size, data, state)[0]

        return one_round

    branches = [round_in(size) for size in sizes]
    smaller = jnp.asarray(sizes[1:], jnp.int32)

    def body(carry):
        state, live = carry
        # sizes are decreasing: the number of smaller buffers that still hold every running
        # member is the index of the smallest one that does
        k = jnp.sum(jnp.sum(live) <= smaller)
        state = jax.lax.switch(k, branches, state, live)
        return state, is_running(data, state)

    state, _ = jax.lax.while_loop(lambda c: jnp.any(c[1]), body, (state, is_running(data, state)))
    return state


def _refine(solver: AbstractSolver, model, data, its, active, buffer: int):
    """`solver.refine` for the active members `postprocess` left unconverged, `buffer` at a
    time (a few members, usually none: a pass over the whole batch would cost a step)."""
    todo = active & (its.status != Status.CONVERGED)
    refine = per_member(solver.refine, model)

    def body(carry):
        its, todo = carry
        its, target = on_members(refine, todo, buffer, data, its)
        return its, todo.at[target].set(False, mode="drop")

    its, _ = jax.lax.while_loop(lambda c: jnp.any(c[1]), body, (its, todo))
    return its


def staged_run(solver: AbstractSolver, problem: Problem, start, active) -> Solution:
    """`vmap(run)` for a validated problem whose workload has one batch axis (the model is
    shared), computed in stages; `active`: the members worth refining (valid ones)."""
    model, w = problem.model, problem.workload
    batch = w.batch_shape[0]
    constants = jax.vmap(lambda wi: solver.prepare(Problem(wi, model)))(w)
    data = (w, constants)
    state = per_member(solver.init, model)(data, start)
    state = per_member(lambda p, s: run_until(solver, p, s, FIRST_STEPS), model)(data, state)
    sizes = buffer_sizes(batch)
    state = rounds(solver, model, data, state, sizes)
    its = per_member(solver.postprocess, model)(data, state)
    if type(solver).refine is not AbstractSolver.refine:  # skip the loop for the default
        its = _refine(solver, model, data, its, active, sizes[-1])
    return per_member(lambda p, state, it: finish(solver, p, state, it), model)(data, state, its)
