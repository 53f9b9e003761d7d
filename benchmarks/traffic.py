"""Latency models against trace replay: the mean system time each model predicts over the one
a replay of a public production trace gives, at three utilizations and with two kinds of
service (a task drawn by the shares; that task's time scaled by the request's own output
tokens).

    PYTHONPATH=. python benchmarks/traffic.py [--replications 10] [--markdown]

The workload is Table I at its optimal budgets (solved at the workload's own rate); the trace's
arrival times are rescaled so the server's load is the target utilization. Models:

- `PK`: FIFO M/G/1 at the trace's mean rate (what the package assumed before);
- `Kingman scv`: GI/G/1 with the inter-arrival squared coefficient of variation;
- `Kingman idc`: GI/G/1 with the index of dispersion of counts in windows of the queue's
  relaxation time, E[S] (1 + c_s^2) / (1 - rho)^2 (clipped to [1 s, a quarter of the trace]);
- `TimeVarying 60s` / `600s`: piecewise-stationary M/G/1 over windows of that length.

With `service="trace"` every model is given the service-time variability the trace's token
counts add (`service_cv` = the coefficient of variation of the work factors).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np
from rich.console import Console
from rich.table import Table

import jaxopt_tokens as jt

TRACES = {
    "Azure conversation": "AzureLLMInferenceTrace_conv.csv",
    "Azure code": "AzureLLMInferenceTrace_code.csv",
    "Mooncake conversation": "mooncake_conversation_trace.jsonl",
}
UTILIZATIONS = (0.3, 0.6, 0.85)
DATA = Path(__file__).parent / "data" / "traces"


def models(trace: jt.traffic.Trace, w: jt.Workload, tokens, service_cv: float):
    """The latency models compared, for `w` at the replayed rate."""
    m1, m2 = (float(m) for m in jt.service_moments(tokens, w))
    rho = float(w.arrival_rate) * m1
    cs2 = m2 / m1**2 * (1 + service_cv**2) - 1
    relax = m1 * (1 + cs2) / (1 - rho) ** 2
    # windows in the trace's own clock: the replay stretched it by mean_rate / rate
    stretch = trace.mean_rate / float(w.arrival_rate)
    scale = float(np.clip(relax / stretch, 1.0, trace.duration / 4))
    fifo = jt.FIFO(service_cv=service_cv)
    return {
        "PK": fifo,
        "Kingman scv": jt.Kingman(service_cv=service_cv, arrival_scv=jt.traffic.arrival_scv(trace)),
        "Kingman idc": jt.Kingman(
            service_cv=service_cv, arrival_scv=jt.traffic.arrival_scv(trace, scale)
        ),
        "TimeVarying 60s": jt.TimeVarying.from_trace(trace, 60.0, fifo),
        "TimeVarying 600s": jt.TimeVarying.from_trace(trace, 600.0, fifo),
    }


def measure(replications: int) -> list[dict]:
    jax.config.update("jax_enable_x64", True)
    w0 = jt.default_workload()
    tokens = jt.solve(w0).tokens
    rows = []
    for name, file in TRACES.items():
        trace = jt.traffic.read_trace(DATA / file)
        factor = trace.output_tokens / trace.output_tokens.mean()
        for service in jt.traffic.SERVICES:
            cv = float(factor.std()) if service == "trace" else 0.0
            for u in UTILIZATIONS:
                sim = jt.simulate(
                    w0,
                    tokens,
                    None,
                    replications,
                    arrivals=jt.traffic.Replay(trace, utilization=u, service=service),
                    model=jt.FIFO(service_cv=cv),
                )
                replay = float(np.mean(np.asarray(sim.system_time)))
                w = w0.replace(arrival_rate=sim.mean_arrival_rate)
                row = {"trace": name, "service": service, "utilization": u, "replay": replay}
                for label, model in models(trace, w, tokens, cv).items():
                    row[label] = float(model.mean_system_time(tokens, w)) / replay
                rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replications", type=int, default=10)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    rows = measure(args.replications)
    labels = [k for k in rows[0] if k not in ("trace", "service", "utilization", "replay")]
    if args.markdown:
        print("| trace | service | utilization | replay E[T] (s) | " + " | ".join(labels) + " |")
        print("|---|---|---|---|" + "---|" * len(labels))
        for r in rows:
            cells = " | ".join(f"{r[k]:.2f}" for k in labels)
            print(
                f"| {r['trace']} | {r['service']} | {r['utilization']} | {r['replay']:.3g} | "
                f"{cells} |"
            )
        return
    table = Table(title="model / replay, mean system time")
    for col in ("trace", "service", "u", "replay (s)", *labels):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["trace"],
            r["service"],
            f"{r['utilization']}",
            f"{r['replay']:.3g}",
            *(f"{r[k]:.2f}" for k in labels),
        )
    Console().print(table)


if __name__ == "__main__":
    main()
