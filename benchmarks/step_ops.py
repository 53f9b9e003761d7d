"""What one step of the default solver computes: transcendental operations per member and per
task, the fusions XLA compiles it into, and its cost in objective-gradient evaluations.

    python benchmarks/step_ops.py [--size 100000]

1e5 random instances (N = 6), float64 and float32. Each part is compiled alone over the whole
batch (as `benchmarks/step_cost.py` does) and its optimized HLO is read: every elementwise
`exponential`, `log`, `log-plus-one`, `exponential-minus-one`, `power`, `sqrt`/`rsqrt` and
`tanh` is counted with its number of elements, so "per member" is elements / batch size and
"per task" is that over N (the Wright omega kernel's own logs and exps included: it is
inlined). `fusions` counts the fused kernels of the entry computation (each one a pass over its
operands). The reference is one batched evaluation of J and its gradient,
`vmap(value_and_grad(objective))` at the current budgets: `eval-eq.` is a part's CPU time over
that evaluation's (best of 7 warm calls each; CPU time of the process, less noisy than wall
time on a shared machine). The ideal named in the speed issue is about 2 evaluations a step.

Reads the solver's parts through `jaxopt_tokens.internal` (public, not stable).
"""

from __future__ import annotations

import argparse
import functools
import re
from collections import Counter

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _timing import best_wall_cpu  # noqa: E402  (benchmarks/ is on sys.path)
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import jaxopt_tokens as jt  # noqa: E402
from jaxopt_tokens import internal  # noqa: E402

TRANSCENDENTAL = (
    "exponential",
    "log",
    "log-plus-one",
    "exponential-minus-one",
    "power",
    "sqrt",
    "rsqrt",
    "tanh",
)
_OP = re.compile(r"=\s*([a-z]\d+)\[([\d,]*)\][^ ]*\s+(" + "|".join(TRANSCENDENTAL) + r")\(")


def hlo_counts(fn, *args) -> tuple[Counter, int]:
    """Transcendental elements by kind, and the fusions of the entry computation."""
    text = fn.lower(*args).compile().as_text()
    elements: Counter = Counter()
    for _, dims, op in _OP.findall(text):
        elements[op] += int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
    entry = text[text.find("ENTRY") :]
    entry = entry[: entry.find("\n}")]
    fusions = len(re.findall(r"\bfusion\(", entry))
    return elements, fusions


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=100_000)
    size = ap.parse_args().size
    solver = jt.AggregateNewton()
    model = jt.FIFO()
    n = 6
    table = Table(title=f"One step of the default solver, {size:,} random instances, N = {n}")
    for col in (
        "dtype",
        "part",
        "fusions",
        "transcendental / member",
        "of which / task",
        "CPU (ms)",
        "eval-eq.",
    ):
        table.add_column(
            col, justify="left" if col in ("part", "transcendental / member") else "right"
        )
    for dtype in (jnp.float64, jnp.float32):
        w = jt.random_workloads(jax.random.key(0), size, num_tasks=n).astype(dtype)
        _, _, safe = jax.jit(internal.validate_members)(w)
        member = functools.partial(internal.per_member, model=model)
        data = (safe, jax.jit(jax.vmap(lambda wi: solver.prepare(jt.Problem(wi, model))))(safe))
        state = jax.jit(member(solver.init))(data)
        tokens = jt.solve(w).tokens
        parts = [
            (
                "J and gradient (reference)",
                jax.jit(jax.vmap(jax.value_and_grad(jt.objective))),
                (tokens, safe),
            ),
            (
                "budgets at the prices",
                jax.jit(
                    member(
                        lambda p, s: internal.unclipped_budgets(s.d, s.y, p.workload, p.constants)
                    )
                ),
                (data, state),
            ),
            ("one step", jax.jit(member(solver.step)), (data, state)),
            ("postprocess", jax.jit(member(solver.postprocess)), (data, state)),
        ]
        ref = None
        for name, fn, args in parts:
            elements, fusions = hlo_counts(fn, *args)
            cpu = best_wall_cpu(fn, *args)[1]
            ref = cpu if ref is None else ref
            per_member = {k: v / size for k, v in elements.items()}
            total = sum(per_member.values())
            table.add_row(
                jnp.dtype(dtype).name,
                name,
                str(fusions),
                ", ".join(f"{k} {v:.1f}" for k, v in sorted(per_member.items()))
                + f" = {total:.1f}",
                f"{total / n:.2f}",
                f"{cpu * 1e3:.1f}",
                f"{cpu / ref:.1f}",
            )
    Console().print(table)


if __name__ == "__main__":
    main()
