"""Policies learned on traffic, scored on held-out traffic: for each shipped trace at
utilization 0.3, 0.6 and 0.85, trained on the first half of the trace and scored on the
second: the model optimum (PK, static, solved at the replayed mean rate), the robust static
policy of `plan_windows` (10-minute windows of the training half), the gateway's
rate-following live loop (`gateway.dry_run` on the held-out half), static budgets learned on
the trace, and a queue-aware table (8 states) learned on the trace; then the same learned
policies on a continuously batching server where its replay has places enough. Then the
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
from jaxopt_tokens import gateway

TRACES = Path(__file__).parent / "data" / "traces"
#: the batching server of the batching rows: 20 ms a step plus 0.5 ms per running request
STEP = (0.02, 0.0005)


def _row(name, u, label, objective, mean, p95, cvar, accuracy) -> None:
    cells = [f"{objective:.3f}", f"{mean:.3g}", f"{p95:.3g}", cvar, f"{accuracy:.4f}"]
    print(f"| {name.split('.')[0]} | {u} | {label} | " + " | ".join(cells) + " |")


def _metrics_row(name, u, label, m) -> None:
    _row(
        name,
        u,
        label,
        float(m.objective),
        float(m.mean_system_time),
        float(m.p95),
        f"{float(m.cvar):.3g}",
        float(m.accuracy),
    )


def _held_out_span(trace, rate, fraction=0.5):
    """The spans `learn_budgets` trains and scores on: the trace at the replayed rate, split
    at `fraction` of its duration."""
    timed = trace.rescaled(rate)
    split = timed.duration * fraction
    return timed.between(0.0, split), timed.between(split, np.inf)


def held_out_table(names, utilizations) -> None:
    w = jt.default_workload("float64")
    print(
        "| trace | utilization | policy | J | mean latency (s) | p95 (s) | CVaR95 (s) | accuracy |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        trace = jt.traffic.read_trace(TRACES / name)
        for u in utilizations:
            static = jt.learn.learn_budgets(w, trace, utilization=u, steps=200, num_replications=4)
            queue = jt.learn.learn_budgets(
                w, trace, utilization=u, states=8, steps=200, num_replications=4
            )
            train, test = _held_out_span(trace, static.rate)
            # the held-out draws learn_budgets scored on (its default key, folded with 2)
            draws = jt.learn.replay_draws(
                w, test, num_replications=4, key=jax.random.fold_in(jax.random.PRNGKey(0), 2)
            )
            same = jt.learn.replay_metrics(static.model_optimum, draws).objective
            assert abs(float(same) - float(static.test["model_optimum"].objective)) < 1e-9
            at = w.replace(arrival_rate=jnp.asarray(static.rate, w.dtype))
            robust = jt.traffic.plan_windows(at, train, window=600.0).static_tokens

            # the dry run serves one task draw (the first replication's) on a server without
            # noise; its static run (never re-solved) is the like-for-like reference
            def dry(interval: float) -> dict:
                config = gateway.GatewayConfig(
                    upstream="http://127.0.0.1:1", max_in_flight=1 << 20, interval=interval
                )
                tasks = np.asarray(draws.task[0])
                return gateway.dry_run(config, test, at, tasks=tasks, reasoning=10**9).summary

            fixed, live = dry(1e9), dry(gateway.GatewayConfig.interval)
            _metrics_row(name, u, "model optimum (PK)", static.test["model_optimum"])
            _metrics_row(
                name, u, "robust static (plan_windows)", jt.learn.replay_metrics(robust, draws)
            )
            updates = f"live loop (dry run, {live['policy_updates']} updates)"
            for label, d in (("model optimum (dry run)", fixed), (updates, live)):
                J, mean, p95, acc = (d[k] for k in ("J", "mean_latency", "p95_latency", "accuracy"))
                _row(name, u, label, J, mean, p95, "-", acc)
            _metrics_row(name, u, "static, learned", static.test["learned"])
            _metrics_row(name, u, "queue-aware, learned", queue.test["learned"])


def batching_table(names, utilizations, slots: int, minutes: float) -> None:
    """The learned policies on the continuously batching server (`STEP`) on the first
    `minutes` of each trace (the fluid replay costs `slots`^2 per request and step), where the
    replay holds every request in the system in `slots` places (a trace that needs more is
    named)."""
    w = jt.default_workload("float64")
    model = jt.ContinuousBatching(step_time=STEP)
    print(
        "| trace | utilization | policy | J | mean latency (s) | p95 (s) | CVaR95 (s) | accuracy |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        trace = jt.traffic.read_trace(TRACES / name)
        trace = trace.between(0.0, minutes * 60.0)
        for u in utilizations:
            common = dict(utilization=u, model=model, slots=slots, steps=60, num_replications=2)
            try:
                static = jt.learn.learn_budgets(w, trace, **common)
                queue = jt.learn.learn_budgets(w, trace, states=8, **common)
            except jt.InputError as e:
                print(f"| {name.split('.')[0]} | {u} | refused: {e} | | | | | |")
                continue
            _metrics_row(name, u, "model optimum (batching model)", static.test["model_optimum"])
            _metrics_row(name, u, "static, learned", static.test["learned"])
            _metrics_row(name, u, "queue-aware, learned", queue.test["learned"])


def python_lindley(gaps, service) -> float:
    wait, total = 0.0, 0.0
    for i in range(1, len(gaps)):
        wait = max(0.0, wait + service[i - 1] - gaps[i])
        total += wait + service[i]
    return total


def speed() -> None:
    w = jt.default_workload("float64")
    rng = np.random.default_rng(0)
    trace = jt.traffic.Trace(np.cumsum(rng.exponential(1.0, 100_000)))
    draws = jt.learn.replay_draws(w, trace, num_replications=1, utilization=0.7)
    tokens = jt.solve(w).tokens
    policies = jnp.linspace(0.0, 1.5, 1000)[:, None] * tokens[None, :]
    run = jax.jit(lambda p: jt.learn.replay_metrics(p, draws).objective)
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
    parser.add_argument("--slots", type=int, default=64, help="places of the batching replay")
    parser.add_argument(
        "--batching-minutes", type=float, default=15.0, help="trace minutes the batching rows use"
    )
    args = parser.parse_args()
    with jax.enable_x64(True):
        names = ["AzureLLMInferenceTrace_code.csv"]
        if not args.quick:
            names += ["AzureLLMInferenceTrace_conv.csv", "mooncake_conversation_trace.jsonl"]
        held_out_table(names, (0.3, 0.6, 0.85))
        print()
        batching_table(names, (0.3, 0.6, 0.85), slots=args.slots, minutes=args.batching_minutes)
        print()
        speed()


if __name__ == "__main__":
    main()
