"""The same batched solve however it is spelled: `solve(batch)` against `jit(vmap(solve))(batch)`.

    python benchmarks/spellings.py [--size 100000]

1e5 heterogeneous random instances and 1e5 Table-I-family instances (arrival rate in
[0.01, 0.5], alpha log-uniform in [1, 100]), N = 6, float64 and float32: best of 3 warm calls
of each spelling, with the iteration counts (identical by construction; the tests check it).
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import jaxopt_tokens as jt  # noqa: E402


def family(size: int, dtype):
    w = jt.default_workload().astype(dtype)
    k1, k2 = jax.random.split(jax.random.key(1))
    rates = jax.random.uniform(k1, (size,), dtype, 0.01, 0.5)
    alphas = jnp.exp(jax.random.uniform(k2, (size,), dtype, 0.0, np.log(100.0)))
    return jax.vmap(lambda r, a: w.replace(arrival_rate=r, alpha=a))(rates, alphas)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=100_000)
    size = ap.parse_args().size
    table = Table(title=f"Batched solve, {size:,} instances, N = 6: the two spellings")
    for col in ("dtype", "instances", "spelling", "warm (s)", "iterations median / p99 / max"):
        table.add_column(col, justify="left" if col in ("instances", "spelling") else "right")
    spellings = (
        ("solve(batch)", jax.jit(jt.solve)),
        ("jit(vmap(solve))", jax.jit(jax.vmap(jt.solve))),
    )
    for dtype in (jnp.float64, jnp.float32):
        batches = (
            ("random", jt.random_workloads(jax.random.key(0), size, num_tasks=6).astype(dtype)),
            ("Table-I family", family(size, dtype)),
        )
        for name, batch in batches:
            for spelling, f in spellings:
                jax.block_until_ready(f(batch))
                times = []
                for _ in range(3):
                    t = time.perf_counter()
                    jax.block_until_ready(f(batch))
                    times.append(time.perf_counter() - t)
                it = np.asarray(f(batch).iterations)
                table.add_row(
                    jnp.dtype(dtype).name,
                    name,
                    spelling,
                    f"{min(times):.3f}",
                    f"{np.median(it):.0f} / {np.percentile(it, 99):.0f} / {it.max()}",
                )
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
