"""Where a batched solve's time goes: the parts of one step, the stages, and warm starts.

    python benchmarks/step_cost.py [--size 100000]

1e5 random instances (N = 6), float64 and float32, on whatever device JAX finds. Each part is
jitted alone and timed as the best of 7 warm calls (CPU seconds of the process are printed
beside the wall time, since a shared machine's wall clock is noisy):

- `omega`: the Wright omega kernel over as many elements as one step evaluates;
- `budgets`: the budgets of eq. (22) at the current prices (the step's elementwise work);
- `one step`: one iteration of the default solver for every member;
- `postprocess`: at the final state, the budgets at the best prices, their KKT residual and
  objective;
- the phases of the staged solve (`_solver/staged.py`), each jitted alone: `validate + prepare +
  init` (validation, per-task constants, starting prices), `first stage` (`FIRST_STEPS` steps for
  every member), `rounds` (the gathered rounds until no member runs; the note gives the
  member-steps they do, a lower bound in step-equivalents) and `derivative` (attaching the
  implicit derivative: the objective and masks at the answer);
- a second table replays the staged rounds on the float64 iteration counts under other
  buffer schedules and prices them with a cost model fitted in the same run (one step and one
  gather + scatter timed at each buffer size); the current schedule is the first row;
- `solve`: the whole staged solve, and the same solve warm-started from the solution at
  alpha 2% higher (a neighbour in a sweep); the last row is the largest difference between the
  two answers in the certificate's units, b_k |l_warm - l_cold| (the KKT residual bounds it
  by about the tolerance: a task with a tiny b_k may move many tokens at no cost to J).

Reads the solver's parts through `jaxopt_tokens.internal` (public, not stable).
"""

from __future__ import annotations

import argparse
import functools

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _timing import best_wall_cpu  # noqa: E402  (benchmarks/ is on sys.path)
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import jaxopt_tokens as jt  # noqa: E402
from jaxopt_tokens import internal  # noqa: E402


def prepare_and_init(solver, model, w):
    """Validation, per-task constants and starting prices of every member."""
    _, _, safe = internal.validate_members(w)
    data = (safe, jax.vmap(lambda wi: solver.prepare(jt.Problem(wi, model)))(safe))
    return internal.per_member(solver.init, model)(data)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=100_000)
    size = ap.parse_args().size
    solver = jt.AggregateNewton()
    model = jt.FIFO()
    table = Table(title=f"Parts of a batched solve, {size:,} random instances, N = 6")
    for col in ("dtype", "part", "wall (ms)", "CPU (ms)", "step-equivalents", "note"):
        table.add_column(col, justify="left" if col in ("part", "note") else "right")
    for dtype in (jnp.float64, jnp.float32):
        w = jt.random_workloads(jax.random.key(0), size, num_tasks=6).astype(dtype)
        _, _, safe = jax.jit(internal.validate_members)(w)
        member = functools.partial(internal.per_member, model=model)
        data = (safe, jax.jit(jax.vmap(lambda wi: solver.prepare(jt.Problem(wi, model))))(safe))
        state = jax.jit(member(solver.init))(data)
        final = jax.jit(member(lambda p, s: internal.run_until(solver, p, s, solver.max_steps)))(
            data, state
        )
        x = jax.random.uniform(jax.random.key(1), (size, 6), dtype, -30, 30)
        first = jax.jit(
            member(lambda p, s: internal.run_until(solver, p, s, internal.FIRST_STEPS))
        )(data, state)
        solve = jax.jit(jt.solve)
        sol = solve(w)
        rest = np.maximum(np.asarray(sol.iterations) - internal.FIRST_STEPS, 0).mean()
        neighbour = solve(w.replace(alpha=w.alpha * 1.02)).tokens
        warm = jax.jit(lambda w, s: jt.solve(w, start=s))
        sol_warm = warm(w, neighbour)
        parts = [
            ("omega", jax.jit(jt.theory.wright_omega), (x,), "6 elements a member"),
            (
                "budgets",
                jax.jit(
                    member(
                        lambda p, s: internal.unclipped_budgets(s.d, s.y, p.workload, p.constants)
                    )
                ),
                (data, state),
                "1 omega + 1 log a task",
            ),
            ("one step", jax.jit(member(solver.step)), (data, state), ""),
            ("postprocess", jax.jit(member(solver.postprocess)), (data, final), ""),
            (
                "phase: validate + prepare + init",
                jax.jit(lambda w: prepare_and_init(solver, model, w)),
                (w,),
                "",
            ),
            (
                "phase: first stage",
                jax.jit(
                    member(lambda p, s: internal.run_until(solver, p, s, internal.FIRST_STEPS))
                ),
                (data, state),
                f"{internal.FIRST_STEPS} steps for every member",
            ),
            (
                "phase: rounds",
                jax.jit(
                    lambda d, s: internal.rounds(solver, model, d, s, internal.buffer_sizes(size))
                ),
                (data, first),
                f"{rest:.2f} member-steps a member",
            ),
            (
                "phase: derivative",
                jax.jit(jax.vmap(lambda s, wi: internal.attach_gradient(jt.Problem(wi, model), s))),
                (jax.lax.stop_gradient(sol), safe),
                "objective and masks at the answer",
            ),
            (
                "solve",
                solve,
                (w,),
                "iterations mean {:.2f}, max {}".format(
                    float(jnp.mean(sol.iterations)), int(jnp.max(sol.iterations))
                ),
            ),
            (
                "solve, warm start",
                warm,
                (w, neighbour),
                "iterations mean {:.2f}, max {}".format(
                    float(jnp.mean(sol_warm.iterations)), int(jnp.max(sol_warm.iterations))
                ),
            ),
        ]
        timed = [(name, *best_wall_cpu(fn, *args), note) for name, fn, args, note in parts]
        step_cpu = next(cpu for name, _, cpu, _ in timed if name == "one step")
        for name, wall, cpu, note in timed:  # step-equivalents in CPU time (less noisy)
            table.add_row(
                jnp.dtype(dtype).name,
                name,
                f"{wall * 1e3:.1f}",
                f"{cpu * 1e3:.1f}",
                f"{cpu / step_cpu:.1f}",
                note,
            )
        both = np.asarray((sol.status == 0) & (sol_warm.status == 0))
        gap = np.asarray(w.b) * np.abs(np.asarray(sol.tokens) - np.asarray(sol_warm.tokens))
        table.add_row(
            jnp.dtype(dtype).name,
            "warm vs cold: max b|dl|",
            "",
            "",
            "",
            f"{np.max(gap[both]):.1e} ({both.mean():.2%} converged both ways)",
        )
        if dtype == jnp.float64:
            schedules = schedule_table(solver, model, data, first, np.asarray(sol.iterations))
    Console(width=130).print(table)
    Console(width=130).print(schedules)


CANDIDATES = (
    internal.BUFFER_FRACTIONS,
    (1 / 4, 1 / 8, 1 / 32),
    (1 / 4, 1 / 8, 1 / 16, 1 / 64),
    (1 / 4, 1 / 8, 1 / 16, 1 / 64, 1 / 256),
    (1 / 4, 3 / 16, 1 / 8, 1 / 16, 1 / 64, 1 / 256),
)


def _fraction(f: float) -> str:
    return f"1/{round(1 / f)}" if abs(round(1 / f) * f - 1) < 1e-12 else f"{f:.4g}"


def replay(iterations, batch: int, fractions, round_steps: int):
    """The rounds `internal.rounds` runs for members needing `iterations` steps: a list of
    (buffer size, members in it), by the same rule (smallest buffer holding every running
    member, else the largest, filled in index order)."""
    sizes = sorted({max(1, int(batch * f)) for f in fractions}, reverse=True)
    left = np.maximum(iterations - internal.FIRST_STEPS, 0)
    rounds = []
    while (left > 0).any():
        live = np.nonzero(left > 0)[0]
        size = sizes[sum(len(live) <= s for s in sizes[1:])]
        take = live[:size]
        left[take] -= np.minimum(round_steps, left[take])
        rounds.append((size, len(take)))
    return rounds


def schedule_table(solver, model, data, first, iterations):
    """Rounds' CPU time under other buffer schedules, from a cost model fitted here: one step
    and one gather + scatter timed at each buffer size (interpolated in log-log between)."""
    batch = iterations.shape[0]
    live = np.asarray(
        internal.per_member(lambda p, s: internal.running(solver, p, s), model)(data, first)
    )
    step = jax.jit(internal.per_member(solver.step, model))
    probe = sorted({max(1, int(batch * f)) for c in CANDIDATES for f in c})
    step_ms, move_ms = [], []
    for size in probe:
        sub = jax.tree_util.tree_map(lambda x: x[:size], (data, first))
        step_ms.append(best_wall_cpu(step, *sub)[1] * 1e3)
        move = jax.jit(
            lambda d, s, m, size=size: internal.on_members(lambda a, b: b, m, size, d, s)[0]
        )
        move_ms.append(best_wall_cpu(move, data, first, jnp.asarray(live))[1] * 1e3)

    def cost(size):
        x = np.log(size)
        return np.exp(np.interp(x, np.log(probe), np.log(step_ms))), np.exp(
            np.interp(x, np.log(probe), np.log(move_ms))
        )

    full_step = best_wall_cpu(step, data, first)[1] * 1e3
    table = Table(
        title="The rounds under other buffer schedules (float64; model fitted to timings)"
    )
    for col in ("buffers (fractions of the batch)", "round steps", "rounds", "model CPU (ms)"):
        table.add_column(col, justify="left" if col.startswith("buffers") else "right")
    table.add_column("step-equivalents", justify="right")
    for fractions in CANDIDATES:
        for round_steps in (2, 3):
            rounds = replay(iterations, batch, fractions, round_steps)
            ms = sum(round_steps * cost(size)[0] + cost(size)[1] for size, _ in rounds)
            table.add_row(
                ", ".join(_fraction(f) for f in fractions),
                str(round_steps),
                str(len(rounds)),
                f"{ms:.0f}",
                f"{ms / full_step:.1f}",
            )
    return table


if __name__ == "__main__":
    main()
