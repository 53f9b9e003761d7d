"""The Wright omega kernel against the elementwise functions it is built from: ns per element,
jitted, over 6e5 elements in [-30, 30] (the solver's range), float64 and float32, side by side.

    python benchmarks/omega.py [--elements 600000] [--repeats 30]

Prints the median and the best of `--repeats` timed calls after a warm-up, interleaved so that
load on the machine hits every function alike.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.table import Table

from jaxopt_tokens.theory import wright_omega


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--elements", type=int, default=600_000)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    x64 = jnp.asarray(np.random.default_rng(0).uniform(-30, 30, args.elements))
    funcs = {"exp": jnp.exp, "log": lambda x: jnp.log(jnp.abs(x) + 1), "wright_omega": wright_omega}
    table = Table(title=f"ns per element, {args.elements:,} elements, {jax.devices()[0].platform}")
    for col in ("function", "float64 median", "float64 best", "float32 median", "float32 best"):
        table.add_column(col, justify="right")
    inputs = {"float64": x64, "float32": x64.astype(jnp.float32)}
    jitted = {name: jax.jit(f) for name, f in funcs.items()}
    times: dict[tuple[str, str], list[float]] = {}
    for f in jitted.values():
        for x in inputs.values():
            f(x).block_until_ready()
    for _ in range(args.repeats):
        for name, f in jitted.items():
            for dt, x in inputs.items():
                t = time.perf_counter()
                f(x).block_until_ready()
                times.setdefault((name, dt), []).append(time.perf_counter() - t)
    for name in funcs:
        row = [name]
        for dt in inputs:
            ts = np.asarray(times[(name, dt)]) / args.elements * 1e9
            row += [f"{np.median(ts):.2f}", f"{ts.min():.2f}"]
        table.add_row(*row)
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
