"""Every headline benchmark on whatever device JAX finds, in one command.

    python benchmarks/device.py [--out results.json] [--scale small|auto]

Runs, at sizes chosen for the device (1e6-1e7 instances on a GPU or TPU, 1e5 on a CPU,
`--scale small` for a smoke run): the default solve of heterogeneous random instances, a
(arrival rate x alpha) sweep of the default workload, the implicit-gradient backward pass
against its forward solve, the queue simulator (policies x queries) and one CLEAR clearing
of a large batch. Every case is timed after its compilation (best of `--repeats`), with the
first call reported beside it, in float32 and float64, and checked for its result (statuses
converged, finite outputs). Prints a table and writes JSON with the device, JAX version,
sizes, times and throughputs. Needs only the package and its `bench` extra; finishes within
about 5 minutes on one GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import jaxopt_tokens as jt  # noqa: E402
from jaxopt_tokens import clear  # noqa: E402

SIZES = {
    # solve members, sweep side, gradient members, simulated policies x queries, CLEAR queries
    "small": dict(solve=2_000, side=40, grad=1_000, policies=8, queries=2_000, clear=20_000),
    "cpu": dict(
        solve=100_000, side=1_000, grad=10_000, policies=100, queries=10_000, clear=1_000_000
    ),
    "accelerator": dict(
        solve=4_000_000,
        side=3_000,
        grad=1_000_000,
        policies=1_000,
        queries=20_000,
        clear=10_000_000,
    ),
}


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """(first call incl. compilation, best warm call, result)."""
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t
    best = first if repeats < 1 else float("inf")  # --repeats 0: a smoke run
    for _ in range(repeats):
        t = time.perf_counter()
        out = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return first, best, out


def cases(sizes: dict, dtype):
    """(name, size, unit, function, check) for every benchmark in one dtype."""
    key = jax.random.key(0)
    batch = jt.random_workloads(key, sizes["solve"], num_tasks=6).astype(dtype)
    w = jt.default_workload().astype(dtype)
    side = sizes["side"]
    rates = np.linspace(0.01, 0.5, side)
    alphas = np.geomspace(1, 100, side)
    grad_batch = jt.random_workloads(jax.random.key(1), sizes["grad"], num_tasks=6).astype(dtype)

    solve = jax.jit(jt.solve)

    def check_solve(sol):
        return float(jnp.mean(sol.status == jt.Status.CONVERGED))

    forward = jax.jit(lambda b: jnp.sum(jt.solve(b).objective))
    backward = jax.jit(jax.grad(lambda b: jnp.sum(jt.solve(b).objective)))
    tokens = (
        jnp.broadcast_to(jt.solve(w).tokens, (sizes["policies"], w.num_tasks))
        * jnp.linspace(0.5, 1.5, sizes["policies"], dtype=dtype)[:, None]
    )
    thresholds = jax.random.uniform(jax.random.key(2), (sizes["clear"],), dtype, 50.0, 2000.0)
    budget = jnp.asarray(0.6 * sizes["clear"] * 1000.0, dtype)
    allocate = jax.jit(clear.allocate)
    return [
        ("solve, random instances", sizes["solve"], "instances", lambda: solve(batch), check_solve),
        (
            "sweep, default workload",
            side * side,
            "points",
            lambda: jt.sweeps.sweep(w, arrival_rate=rates, alpha=alphas, quiet=True),
            lambda df: float((df["status"] == "converged").mean()),
        ),
        (
            "forward solve (for the gradient)",
            sizes["grad"],
            "instances",
            lambda: forward(grad_batch),
            lambda x: float(jnp.isfinite(x)),
        ),
        (
            "implicit gradient (backward)",
            sizes["grad"],
            "instances",
            lambda: backward(grad_batch),
            lambda g: float(jnp.all(jnp.isfinite(g.alpha))),
        ),
        (
            "simulate (policies x queries)",
            sizes["policies"] * sizes["queries"],
            "queries",
            lambda: jt.simulate(w, tokens, sizes["queries"], 1).system_time,
            lambda x: float(jnp.all(jnp.isfinite(x))),
        ),
        (
            "CLEAR clearing",
            sizes["clear"],
            "queries",
            lambda: allocate(thresholds, budget),
            lambda a: float(a.status == clear.AllocationStatus.CLEARED),
        ),
    ]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--scale", choices=("auto", "small", "cpu", "accelerator"), default="auto")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtypes", default="float32,float64")
    args = ap.parse_args(argv)
    device = jax.devices()[0]
    scale = args.scale
    if scale == "auto":
        scale = "cpu" if device.platform == "cpu" else "accelerator"
    sizes = SIZES[scale]
    rows = []
    for name in args.dtypes.split(","):
        dtype = jnp.dtype(name)
        for case, size, unit, fn, check in cases(sizes, dtype):
            first, best, out = timed(fn, args.repeats)
            rows.append(
                {
                    "case": case,
                    "dtype": name,
                    "size": size,
                    "unit": unit,
                    "first_call_s": first,
                    "warm_s": best,
                    "per_second": size / best,
                    "check": check(out),
                }
            )
    by = {(r["case"], r["dtype"]): r for r in rows}
    for name in args.dtypes.split(","):
        f, b = (
            by[("forward solve (for the gradient)", name)],
            by[("implicit gradient (backward)", name)],
        )
        b["ratio_to_forward"] = b["warm_s"] / f["warm_s"]
    result = {
        "device": str(device.device_kind),
        "platform": device.platform,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "jaxopt_tokens": jt.__version__,
        "python": platform.python_version(),
        "scale": scale,
        "sizes": sizes,
        "results": rows,
    }
    table = Table(
        title=f"jaxopt_tokens on {device.device_kind} ({device.platform}), JAX {jax.__version__}"
    )
    for col in ("case", "dtype", "size", "first call (s)", "warm (s)", "per second", "check"):
        table.add_column(col, justify="left" if col == "case" else "right")
    for r in rows:
        check = f"{r['check']:.4f}" + (
            f" (grad/fwd {r['ratio_to_forward']:.2f})" if "ratio_to_forward" in r else ""
        )
        table.add_row(
            r["case"],
            r["dtype"],
            f"{r['size']:,}",
            f"{r['first_call_s']:.2f}",
            f"{r['warm_s']:.4f}",
            f"{r['per_second']:,.0f} {r['unit']}",
            check,
        )
    Console(width=150).print(table)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
