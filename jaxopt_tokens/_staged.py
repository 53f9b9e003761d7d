"""Solving a large batch without iterating every member as long as the slowest one.

Under `vmap`, a `while_loop` runs until its *last* member stops: on 1e5 random workloads the
default solver's median member needs 5-6 steps and the slowest about 40, so a plain vmapped
solve does ~40 steps of work for every member. `staged_solve` runs the same per-member loop in
stages instead: every member for the first few steps, then rounds in which only members still
running are gathered into a buffer of fixed size (shapes stay static, so it compiles once and
runs unchanged on accelerators) and take a few more steps, until none is left. Each member takes exactly the same steps as in the plain solve; only
which members share a vectorised step changes, so the result does not depend on the buffers.

The solver must expose `parts(w) -> (init, cond, body, finish)` for one workload, with an
`iterations` counter in its state (`AggregateNewton` does).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._solution import Solution
from ._workload import Workload

__all__ = ["staged_solve", "MIN_STAGED_BATCH"]

FIRST_STEPS = 8  # every member takes these steps together
ROUND_STEPS = 8  # then rounds: up to `buffer` running members take this many more steps
BUFFER_FRACTION = 1 / 16  # the round buffer, as a fraction of the batch
MIN_STAGED_BATCH = 2048


def _run_until(solver, w: Workload, state, cap):
    """Continue each member's loop from `state` until it stops or its step count reaches `cap`."""

    def member(wi, si, ci):
        _, cond, body, _ = solver.parts(wi)
        return jax.lax.while_loop(lambda s: cond(s) & (s.iterations < ci), body, si)

    return jax.vmap(member)(w, state, jnp.broadcast_to(cap, state.iterations.shape))


def _running(solver, w: Workload, state):
    return jax.vmap(lambda wi, si: solver.parts(wi)[1](si))(w, state)


def _take(tree, idx):
    return jax.tree_util.tree_map(lambda x: x[idx], tree)


def _rounds(solver, w: Workload, state, buffer: int):
    """Rounds of `ROUND_STEPS` steps for the first `buffer` running members, until none runs."""
    batch = state.iterations.shape[0]

    def one_round(carry):
        state, running = carry
        idx = jnp.nonzero(running, size=buffer, fill_value=0)[0]
        valid = jnp.arange(buffer) < jnp.sum(running)
        part = _take(state, idx)
        sub = _run_until(solver, _take(w, idx), part, part.iterations + ROUND_STEPS)
        target = jnp.where(valid, idx, batch)  # padding rows are dropped, never written
        state = jax.tree_util.tree_map(lambda full, new: full.at[target].set(new, mode="drop"), state, sub)
        return state, _running(solver, w, state)

    state, _ = jax.lax.while_loop(lambda c: jnp.any(c[1]), one_round,
                                  (state, _running(solver, w, state)))
    return state


def staged_solve(solver, w: Workload) -> Solution:
    """`vmap(solver)(w)` for a workload with one batch axis, computed in stages (module docstring)."""
    batch = w.batch_shape[0]
    init = jax.vmap(lambda wi: solver.parts(wi)[0])(w)
    state = _run_until(solver, w, init, FIRST_STEPS)
    return jax.vmap(lambda wi, si: solver.parts(wi)[3](si))(
        w, _rounds(solver, w, state, max(1, int(batch * BUFFER_FRACTION))))
