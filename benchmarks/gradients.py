"""Cost of implicit differentiation: backward pass vs the forward batch solve, and compile time.

    python benchmarks/gradients.py [--size 10000]

Forward: `solve` on a batch. Backward: `jax.grad` of the summed optimal objective with respect to
the whole batched workload (every field), which runs the forward solve plus the implicit
backward pass; the backward cost is the difference.
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import jaxopt_tokens as jt  # noqa: E402


def timed(fn, *args, repeats=3):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return first, best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=10_000)
    n = ap.parse_args().size
    w = jt.random_workloads(jax.random.key(0), n, 6)
    forward = jax.jit(lambda w: jt.solve(w).objective)
    grad_all = jax.jit(jax.grad(lambda w: jnp.sum(jt.solve(w).objective)))
    jac_tokens = jax.jit(jax.vmap(jax.jacfwd(lambda w: jt.solve(w).tokens)))
    f_first, f = timed(forward, w)
    g_first, g = timed(grad_all, w)
    j_first, j = timed(jac_tokens, w)
    table = Table(title=f"Implicit differentiation, {n:,} instances, N=6, float64")
    for col in ("computation", "first call (s)", "run (s)", "ratio to forward"):
        table.add_column(col, justify="right")
    table.add_row("forward solve", f"{f_first:.2f}", f"{f:.3f}", "1.00")
    table.add_row("grad of sum J* w.r.t. all fields", f"{g_first:.2f}", f"{g:.3f}", f"{g / f:.2f}")
    table.add_row(
        "  backward pass alone (grad - forward)", "", f"{g - f:.3f}", f"{(g - f) / f:.2f}"
    )
    table.add_row(
        "jacfwd of tokens w.r.t. all 39 inputs", f"{j_first:.2f}", f"{j:.3f}", f"{j / f:.2f}"
    )
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
