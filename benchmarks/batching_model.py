"""The continuous-batching model against its simulator: mean system time across loads, batch
limits, replica counts and routing rules (the table on the docs page *Continuous batching*).

    python benchmarks/batching_model.py [--queries 60000] [--replications 4] [--json OUT.json]

For each configuration the arrival rate is set to a fraction of the capacity at Table I's
budgets; the simulator (`simulate(..., model=ContinuousBatching(...))`, common random
numbers across routings) gives the mean with a 95% interval over replications, and the model
its prediction. Reports the model's
error relative to the simulated mean and whether it lies inside the interval.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.table import Table

import jaxopt_tokens as jt

POLICY = (0.0, 300.0, 0.0, 0.0, 250.0, 30.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=60_000)
    p.add_argument("--replications", type=int, default=4)
    p.add_argument("--loads", default="0.3,0.7,0.9,0.95")
    p.add_argument("--batches", default="none,32,8", help="max_batch values ('none': unlimited)")
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--json", metavar="OUT.json")
    args = p.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    w = jt.default_workload().astype(np.float64)
    policy = jnp.asarray(POLICY)
    loads = [float(x) for x in args.loads.split(",")]
    batches = [None if b.strip() == "none" else int(b) for b in args.batches.split(",")]
    rows = []
    for B in batches:
        for routing in ("random", "shortest_queue", "least_loaded"):
            model = jt.ContinuousBatching(
                step_time=(0.02, 0.0005),
                max_batch=B,
                answer_tokens=50.0,
                replicas=args.replicas,
                routing=routing,
            )
            cap = float(model.capacity(policy, w.replace(arrival_rate=1.0)))
            for load in loads:
                t = time.perf_counter()
                sim = jt.simulate(
                    w.replace(arrival_rate=load * cap),
                    policy[None],
                    args.queries,
                    args.replications,
                    model=model,
                    warmup=args.queries // 5,
                )
                mean, lo, hi = (float(x[0]) for x in sim.interval("system_time"))
                pred = float(sim.predicted_system_time[0])
                p95 = float(sim.summary()["system_time_p95"]["mean"][0])
                rows.append(
                    {
                        "max_batch": B,
                        "replicas": args.replicas,
                        "routing": routing,
                        "load": load,
                        "simulated": mean,
                        "lower": lo,
                        "upper": hi,
                        "predicted": pred,
                        "error": pred / mean - 1,
                        "inside": lo <= pred <= hi,
                        "simulated_p95": p95,
                        "seconds": time.perf_counter() - t,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    table = Table(title=f"model vs simulator, {args.queries} queries x {args.replications}")
    for col in ("max_batch", "routing", "load", "sim. E[T] (95%)", "model", "error", "p95"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r["max_batch"] or "unlimited"),
            r["routing"],
            f"{r['load']:.2f}",
            f"{r['simulated']:.3f} [{r['lower']:.3f}, {r['upper']:.3f}]",
            f"{r['predicted']:.3f}",
            f"{100 * r['error']:+.1f}%" + ("" if r["inside"] else " *"),
            f"{r['simulated_p95']:.2f}",
        )
    Console().print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
