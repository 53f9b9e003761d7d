"""The gateway's control loop on the Azure code trace in simulated time (`gateway.dry_run`):
the HTTP benchmark's static and live settings without HTTP, the windows where the live policy
loses, and how its interval and window trade latency for accuracy.

    PYTHONPATH=. python benchmarks/dry_run.py [--minutes 10]   # ~30 s

Setting as `benchmarks/gateway.py` (b): the first `--minutes` of the Azure LLM inference trace
2023 (code; CC BY 4.0, see benchmarks/data/traces/NOTICE.md) in its own time, tasks drawn by
the Table I shares (seed 0, the same draw), a continuously batching engine (step 20 ms + 0.5 ms
per running request), a request's reasoning the smaller of 2,000 tokens and its budget, 20
answer and 5 prefill tokens; static: solved once at the trace's mean rate; live: re-solved
every 30 s from the last 2 minutes (`min_requests` 20), service not learned.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np
from rich.console import Console
from rich.table import Table

import jaxopt_tokens as jt
from jaxopt_tokens import gateway

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT / "benchmarks" / "data" / "traces" / "AzureLLMInferenceTrace_code.csv"
STEP = (0.02, 0.0005)


def _config(**settings) -> gateway.GatewayConfig:
    return gateway.GatewayConfig(
        upstream="http://127.0.0.1:1",
        server="batching",
        step_time=STEP,
        learn_service=False,
        max_in_flight=4096,
        **settings,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    trace = jt.traffic.read_trace(TRACE).between(0.0, args.minutes * 60.0)
    with jax.enable_x64(True):
        w = jt.default_workload("float64").replace(arrival_rate=trace.mean_rate)
    tasks = np.random.default_rng(0).choice(w.num_tasks, size=len(trace), p=np.asarray(w.share))
    console = Console(width=160)

    def run(**settings):
        t = time.perf_counter()
        r = gateway.dry_run(_config(**settings), trace, w, tasks=tasks)
        return r, time.perf_counter() - t

    static, t_static = run(interval=3600.0)
    live, t_live = run(interval=30.0, window=120.0, min_requests=20)
    t = Table(title=f"Azure code, first {args.minutes:g} min, dry run (trace time)")
    for col in ("policy", "accuracy", "mean latency (s)", "p95 (s)", "J", "updates", "wall (s)"):
        t.add_column(col, justify="right")
    for name, (r, wall) in (("static", (static, t_static)), ("live", (live, t_live))):
        s = r.summary
        t.add_row(
            name,
            f"{s['accuracy']:.4f}",
            f"{s['mean_latency']:.3f}",
            f"{s['p95_latency']:.2f}",
            f"{s['J']:.3f}",
            str(s["policy_updates"]),
            f"{wall:.1f}",
        )
    console.print(t)

    # where the live policy loses: per control window, its requests against the static's
    t = Table(title="live vs static, by control window (requests arriving in it)")
    for col in ("window (s)", "rate at its start", "requests", "GSM8K budget live/static"):
        t.add_column(col, justify="right")
    for col in ("mean latency live/static", "J live/static"):
        t.add_column(col, justify="right")
    gsm = w.task_names.index("GSM8K")
    arrivals = live.requests["arrival"]
    bounds = [0.0] + [s["time"] for s in live.steps]
    for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        inside = (arrivals >= lo) & (arrivals < hi)
        if not inside.any():
            continue
        mine = inside & (live.requests["task"] == gsm)
        lat_l = float(np.mean(live.requests["latency"][inside]))
        lat_s = float(np.mean(static.requests["latency"][inside]))
        alpha = float(w.alpha)
        j_l = alpha * float(np.mean(live.requests["accuracy"][inside])) - lat_l
        j_s = alpha * float(np.mean(static.requests["accuracy"][inside])) - lat_s
        b_l = float(np.mean(live.requests["budget"][mine])) if mine.any() else float("nan")
        b_s = float(np.mean(static.requests["budget"][mine])) if mine.any() else float("nan")
        rate = live.steps[k - 1]["measured_rate"] if k else float("nan")
        t.add_row(
            f"{lo:.0f}-{hi:.0f}",
            f"{rate:.2f}",
            str(int(inside.sum())),
            f"{b_l:.0f} / {b_s:.0f}",
            f"{lat_l:.2f} / {lat_s:.2f}",
            f"{j_l:.2f} / {j_s:.2f}",
        )
    console.print(t)

    t = Table(title="the live loop's interval and window (dry run)")
    for col in ("interval (s)", "window (s)", "accuracy", "mean latency (s)", "p95 (s)", "J"):
        t.add_column(col, justify="right")
    for interval, window, least in ((30, 120, 20), (10, 60, 10), (5, 30, 10), (2, 10, 5)):
        r, _ = run(interval=float(interval), window=float(window), min_requests=least)
        s = r.summary
        t.add_row(
            str(interval),
            str(window),
            f"{s['accuracy']:.4f}",
            f"{s['mean_latency']:.3f}",
            f"{s['p95_latency']:.2f}",
            f"{s['J']:.3f}",
        )
    console.print(t)

    # tables by queue length from the model: row s = the optimum at a x rate x (1 + k s)
    t = Table(title="tables by requests in the system from the model (in-sample, dry run)")
    for col in ("a", "k", "accuracy", "mean latency (s)", "p95 (s)", "J"):
        t.add_column(col, justify="right")
    model = jt.ContinuousBatching(step_time=STEP)
    for a in (0.25, 0.5, 0.75):
        for k in (0.05, 0.1, 0.2, 0.4):
            rows = []
            with jax.enable_x64(True):
                for s_ in range(25):
                    at = w.replace(arrival_rate=a * trace.mean_rate * (1 + k * s_))
                    tokens = np.asarray(jt.solve(at, model=model).tokens)
                    rows.append(np.where(np.isfinite(tokens), np.floor(tokens), 0.0))
            table = gateway.LearnedTable("model", np.minimum.accumulate(np.array(rows), axis=0), {})
            r = gateway.dry_run(_config(interval=3600.0), trace, w, tasks=tasks, learned=table)
            s = r.summary
            t.add_row(
                f"{a:g}",
                f"{k:g}",
                f"{s['accuracy']:.4f}",
                f"{s['mean_latency']:.3f}",
                f"{s['p95_latency']:.2f}",
                f"{s['J']:.3f}",
            )
    console.print(t)


if __name__ == "__main__":
    main()
