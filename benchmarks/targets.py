"""The speed targets of the solver, measured side by side in one run, with met / not met.

    python benchmarks/targets.py [--size 100000] [--side 1000] [--sample 200]

Float64 on whatever device JAX finds:

- 1e5 random members (`random_workloads`, N = 6): `jit(solve)(batch)` and
  `jit(vmap(solve))(batch)`, best of 5 warm calls, and the same in evaluation-equivalents (the
  solve's time over one batched `vmap(value_and_grad(objective))` of the same batch, timed
  in the same run);
- 1e5 members of the Table-I family (the default workload at arrival rates in [0.01, 0.5] and
  alphas log-uniform in [1, 100]): both spellings, and the scipy L-BFGS-B loop of
  `solve_throughput.py` timed on a sample of the same members (per instance, extrapolated);
- a 1000 x 1000 (arrival rate x alpha) sweep of the default workload (`jt.sweeps.sweep`, integer
  budgets and the DataFrame included), the second of two runs;
- the share of members certified (status converged), also in float32.

Targets (speed, round three): 1e5 random <= 0.2 s and <= 30 evaluation-equivalents; the
Table-I family <= 0.15 s and >= 1000x the scipy loop; the 1e6-point sweep <= 2 s warm; every
float64 member certified.
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _timing import best_wall_cpu  # noqa: E402  (benchmarks/ is on sys.path)
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from solve_throughput import scipy_per_instance  # noqa: E402  (benchmarks/ is on sys.path)
from spellings import family  # noqa: E402

import jaxopt_tokens as jt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--side", type=int, default=1000)
    ap.add_argument("--sample", type=int, default=200)
    args = ap.parse_args()
    solve = jax.jit(jt.solve)
    vsolve = jax.jit(jax.vmap(jt.solve))
    evaluate = jax.jit(jax.vmap(jax.value_and_grad(jt.objective)))
    table = Table(title=f"Speed targets, float64, {jax.devices()[0].device_kind}")
    for col in ("case", "measured", "target", "met"):
        table.add_column(col, justify="left" if col == "case" else "right")
    certified = {}
    for name, batch in (
        ("random", jt.random_workloads(jax.random.key(0), args.size, num_tasks=6)),
        ("Table-I family", family(args.size, jnp.float64)),
    ):
        ones = jnp.ones_like(batch.A)
        e_wall, e_cpu = best_wall_cpu(evaluate, ones, batch, repeats=5)
        s_wall, s_cpu = best_wall_cpu(solve, batch, repeats=5)
        v_wall, v_cpu = best_wall_cpu(vsolve, batch, repeats=5)
        sol = solve(batch)
        it = np.asarray(sol.iterations)
        certified[name] = float(jnp.mean(sol.status == 0))
        limit = 0.2 if name == "random" else 0.15
        worst = max(s_wall, v_wall)
        table.add_row(
            f"{name}: {args.size:,} members, solve(batch) / jit(vmap(solve))",
            f"{s_wall:.3f} / {v_wall:.3f} s",
            f"<= {limit} s",
            "yes" if worst <= limit else "no",
        )
        table.add_row(
            f"{name}: evaluation-equivalents (CPU time; one evaluation {e_cpu * 1e3:.1f} ms)",
            f"{s_cpu / e_cpu:.0f} / {v_cpu / e_cpu:.0f}",
            "<= 30" if name == "random" else "-",
            ("yes" if max(s_cpu, v_cpu) / e_cpu <= 30 else "no") if name == "random" else "-",
        )
        table.add_row(
            f"{name}: steps a member (mean / p90 / max)",
            f"{it.mean():.2f} / {np.percentile(it, 90):.0f} / {it.max()}",
            "-",
            "-",
        )
        if name != "random":
            per, _ = scipy_per_instance(batch, args.sample)
            ratio = per * args.size / worst
            table.add_row(
                f"{name}: scipy L-BFGS-B loop ({args.sample} members, {per * 1e6:.0f} us each)",
                f"{ratio:,.0f}x slower",
                ">= 1000x",
                "yes" if ratio >= 1000 else "no",
            )
    for name, batch in (
        ("random", jt.random_workloads(jax.random.key(0), args.size, num_tasks=6)),
        ("Table-I family", family(args.size, jnp.float32)),
    ):
        sol = solve(batch.astype(jnp.float32))
        certified[f"{name}, float32"] = float(jnp.mean(sol.status == 0))
    w = jt.default_workload()
    rates, alphas = np.linspace(0.01, 0.5, args.side), np.geomspace(1, 100, args.side)
    jt.sweeps.sweep(w, arrival_rate=rates, alpha=alphas, quiet=True)
    t = time.perf_counter()
    df = jt.sweeps.sweep(w, arrival_rate=rates, alpha=alphas, quiet=True)
    sweep_s = time.perf_counter() - t
    table.add_row(
        f"sweep: {args.side} x {args.side} points of the default workload (warm)",
        f"{sweep_s:.2f} s",
        "<= 2 s",
        "yes" if sweep_s <= 2 else "no",
    )
    certified["sweep"] = float((df["status"] == "converged").mean())
    for name, share in certified.items():
        table.add_row(
            f"certified: {name}",
            f"{share:.5%}",
            "100%" if "float32" not in name else "as documented",
            ("yes" if share == 1.0 else "no") if "float32" not in name else "-",
        )
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
