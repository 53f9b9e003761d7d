"""How busy the CPU is while the default solver steps: one step alone against steps in a loop.

    python benchmarks/step_profile.py [--size 100000]

1e5 random members (N = 6, float64), after the first two steps. Runs, each jitted alone and
traced with `jax.profiler` (a Perfetto trace, parsed here): one step of every member; three
steps of every member in the driver's vmapped `while_loop` (`run_until`); and the whole
`jit(solve)`. For each: the wall time of a call, the summed duration of the XLA kernels it ran
(over every thread), their number, and the share of the two-thread capacity they filled
(kernel time / (wall x threads)). The five kernels that took longest in the whole solve are
listed. Reads the solver's parts through `jaxopt_tokens.internal`.
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import gzip
import json
import os
import tempfile
import time

import jax

jax.config.update("jax_enable_x64", True)

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import jaxopt_tokens as jt  # noqa: E402
from jaxopt_tokens import internal  # noqa: E402

CALLS = 3
SKIP = ("ThunkExecutor", "ThreadpoolListener", "$", "PjitFunction", "end: ")


def kernels(fn, *args):
    """Wall seconds per call, and per call: summed kernel seconds, kernel count, and the
    kernel totals by name."""
    jax.block_until_ready(fn(*args))
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            t = time.perf_counter()
            for _ in range(CALLS):
                jax.block_until_ready(fn(*args))
            wall = (time.perf_counter() - t) / CALLS
        (path,) = glob.glob(os.path.join(d, "**", "perfetto_trace.json.gz"), recursive=True)
        with gzip.open(path) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    total: collections.Counter = collections.Counter()
    count = 0
    for e in events:
        if e.get("ph") == "X" and "dur" in e and not e["name"].startswith(SKIP):
            total[e["name"]] += e["dur"] * 1e-6 / CALLS
            count += 1
    return wall, sum(total.values()), count / CALLS, total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=100_000)
    size = ap.parse_args().size
    solver, model = jt.AggregateNewton(), jt.FIFO()
    member = functools.partial(internal.per_member, model=model)
    w = jt.random_workloads(jax.random.key(0), size, num_tasks=6)
    _, _, safe = jax.jit(internal.validate_members)(w)
    data = (safe, jax.jit(jax.vmap(lambda wi: solver.prepare(jt.Problem(wi, model))))(safe))
    state = jax.jit(member(solver.init))(data)
    state = jax.jit(member(lambda p, s: internal.run_until(solver, p, s, 2)))(data, state)
    threads = os.cpu_count() or 1
    parts = (
        ("one step", jax.jit(member(solver.step)), (data, state)),
        (
            "three steps in the driver's while_loop",
            jax.jit(member(lambda p, s: internal.run_until(solver, p, s, s.iterations + 3))),
            (data, state),
        ),
        ("jit(solve)", jax.jit(jt.solve), (w,)),
    )
    table = Table(title=f"Kernels of the default solver, {size:,} random members, float64")
    for col in ("part", "wall (ms)", "kernel time (ms)", "kernels", f"busy ({threads} threads)"):
        table.add_column(col, justify="left" if col == "part" else "right")
    last = None
    for name, fn, args in parts:
        wall, busy, count, last = kernels(fn, *args)
        table.add_row(
            name,
            f"{wall * 1e3:.1f}",
            f"{busy * 1e3:.1f}",
            f"{count:,.0f}",
            f"{busy / (wall * threads):.0%}",
        )
    top = Table(title="Longest kernels of jit(solve), per call")
    for col in ("kernel", "time (ms)"):
        top.add_column(col, justify="left" if col == "kernel" else "right")
    for kernel, seconds in last.most_common(5):
        top.add_row(kernel, f"{seconds * 1e3:.1f}")
    Console(width=120).print(table)
    Console(width=120).print(top)


if __name__ == "__main__":
    main()
