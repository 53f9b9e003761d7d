"""Solving a large batch without iterating every member as long as the slowest one.

Under `vmap`, a `while_loop` runs until its *last* member stops: on 1e5 random workloads the
default solver's median member needs 5-6 steps and the slowest about 40, so a plain vmapped
solve does ~40 steps of work for every member. `staged_solve` runs the same per-member loop in
stages instead: every member for the first few steps, then rounds in which only members still
running are gathered into a buffer of fixed size (shapes stay static, so it compiles once and
runs unchanged on accelerators) and take a few more steps, until none is left. Each member
takes exactly the same steps as in the plain solve; only which members share a vectorised step
changes, so the result does not depend on the buffers.

Any solver of the protocol in `base.py` runs this way (its state counts `iterations`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._validate import prepare
from .._workload import Workload
from .base import AbstractSolver, complete, run_until, running
from .solution import Solution

__all__ = ["staged_run", "MIN_STAGED_BATCH"]

FIRST_STEPS = 8  # every member takes these steps together
ROUND_STEPS = 8  # then rounds: up to `buffer` running members take this many more steps
BUFFER_FRACTION = 1 / 16  # the round buffer, as a fraction of the batch
MIN_STAGED_BATCH = 2048


def _take(tree, idx):
    return jax.tree_util.tree_map(lambda x: x[idx], tree)


def _rounds(solver: AbstractSolver, w: Workload, state, buffer: int):
    """Rounds of `ROUND_STEPS` steps for the first `buffer` running members, until none runs."""
    batch = state.iterations.shape[0]
    is_running = jax.vmap(lambda wi, si: running(solver, wi, si))
    advance = jax.vmap(lambda wi, si, cap: run_until(solver, wi, si, cap))

    def one_round(carry):
        state, live = carry
        idx = jnp.nonzero(live, size=buffer, fill_value=0)[0]
        valid = jnp.arange(buffer) < jnp.sum(live)
        part = _take(state, idx)
        sub = advance(_take(w, idx), part, part.iterations + ROUND_STEPS)
        target = jnp.where(valid, idx, batch)  # padding rows are dropped, never written
        state = jax.tree_util.tree_map(
            lambda full, new: full.at[target].set(new, mode="drop"), state, sub
        )
        return state, is_running(w, state)

    state, _ = jax.lax.while_loop(lambda c: jnp.any(c[1]), one_round, (state, is_running(w, state)))
    return state


def staged_run(solver: AbstractSolver, w: Workload) -> Solution:
    """`vmap(run)(solver, w)` for a workload with one batch axis, computed in stages."""
    batch = w.batch_shape[0]
    status_in, ok_in, safe = prepare(w)
    state = jax.vmap(solver.init)(safe)
    state = jax.vmap(lambda wi, si: run_until(solver, wi, si, FIRST_STEPS))(safe, state)
    state = _rounds(solver, safe, state, max(1, int(batch * BUFFER_FRACTION)))
    return jax.vmap(lambda wi, si, st, ok: complete(solver, wi, st, ok, si))(
        safe, state, status_in, ok_in
    )
