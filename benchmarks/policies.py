"""Policies learned on traffic, scored on held-out traffic: for each shipped trace at
utilization 0.3, 0.6 and 0.85, trained on the first half of the trace and scored on the
second: the model optimum (PK, static, solved at the replayed mean rate), static budgets
learned on the trace, and a queue-aware table (8 states) learned on the trace. Then the
replay's speed: 1,000 static policies on a 100,000-request trace in one call, against a
plain-Python Lindley loop on the same draws (one policy, same run).

Run: `python benchmarks/policies.py` (a few minutes on 2 CPU cores; `--quick` for one trace).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxopt_tokens as jt

TRACES = Path(__file__).parent / "data" / "traces"


def held_out_table(names, utilizations) -> None:
    w = jt.default_workload("float64")
    print(
        "| trace | utilization | policy | J | mean latency (s) | p95 (s) | CVaR95 (s) | accuracy |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        trace = jt.read_trace(TRACES / name)
        for u in utilizations:
            static = jt.learn_budgets(w, trace, utilization=u, steps=200, num_replications=4)
            queue = jt.learn_budgets(
                w, trace, utilization=u, states=8, steps=200, num_replications=4
            )
            rows = (
                ("model optimum (PK)", static.test["model_optimum"]),
                ("static, learned", static.test["learned"]),
                ("queue-aware, learned", queue.test["learned"]),
            )
            for label, m in rows:
                print(
                    f"| {name.split('.')[0]} | {u} | {label} | {float(m.objective):.3f} | "
                    f"{float(m.mean_system_time):.3g} | {float(m.p95):.3g} | "
                    f"{float(m.cvar):.3g} | {float(m.accuracy):.4f} |"
                )


def python_lindley(gaps, service) -> float:
    wait, total = 0.0, 0.0
    for i in range(1, len(gaps)):
        wait = max(0.0, wait + service[i - 1] - gaps[i])
        total += wait + service[i]
    return total


def speed() -> None:
    w = jt.default_workload("float64")
    rng = np.random.default_rng(0)
    trace = jt.Trace(np.cumsum(rng.exponential(1.0, 100_000)))
    draws = jt.replay_draws(w, trace, num_replications=1, utilization=0.7)
    tokens = jt.solve(w).tokens
    policies = jnp.linspace(0.0, 1.5, 1000)[:, None] * tokens[None, :]
    run = jax.jit(lambda p: jt.replay_metrics(p, draws).objective)
    run(policies).block_until_ready()  # compile
    t = time.perf_counter()
    run(policies).block_until_ready()
    batched = time.perf_counter() - t
    gaps = np.asarray(draws.gaps[0])
    svc = np.asarray((w.t0 + w.c * tokens)[draws.task[0]] * draws.factor[0])
    t = time.perf_counter()
    python_lindley(gaps, svc)
    loop = time.perf_counter() - t
    print(
        f"1,000 policies x 100,000 requests in one call: {batched:.2f} s "
        f"({batched / 1000 * 1e3:.2f} ms a policy); plain-Python Lindley loop, one policy: "
        f"{loop * 1e3:.1f} ms; ratio {loop * 1000 / batched:.0f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    with jax.enable_x64(True):
        names = ["AzureLLMInferenceTrace_code.csv"]
        if not args.quick:
            names += ["AzureLLMInferenceTrace_conv.csv", "mooncake_conversation_trace.jsonl"]
        held_out_table(names, (0.3, 0.6, 0.85))
        speed()


if __name__ == "__main__":
    main()
