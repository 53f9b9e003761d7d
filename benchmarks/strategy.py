"""Strategy selection on the synthetic ground-truth benchmark (MATH.md section 3), in one run.

Trains the accuracy probe, then prints: every static strategy (accuracy, tokens, latency,
scalarised cost), the adaptive and oracle frontiers along a ray of prices, each static
strategy's dominance gap, and the queue-aware joint choice on Table I as the arrival rate grows.

    python benchmarks/strategy.py [--train 3000] [--test 4000] [--steps 1500]
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

from jaxopt_tokens import strategy  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--test", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument(
        "--alpha", type=float, default=300.0, help="alpha for the queue-aware sweep"
    )
    args = parser.parse_args()
    console = Console()
    table = strategy.default_table()

    t = time.perf_counter()
    frontier, probe, test = strategy.run_benchmark(
        jax.random.key(0),
        table=table,
        num_train=args.train,
        num_test=args.test,
        probe_steps=args.steps,
    )
    elapsed = time.perf_counter() - t
    mae = float(jnp.mean(jnp.abs(probe(test.features) - test.true_accuracy)))
    console.print(
        f"probe + frontier: {elapsed:.1f} s; held-out log loss "
        f"{float(strategy.probe_log_loss(probe, test.features, test.soft_labels)):.4f}, "
        f"mean |a_hat - a| {mae:.4f}, "
        f"Platt (a, b) = ({float(probe.platt_a):.3f}, {float(probe.platt_b):.3f})"
    )

    gaps, oracle_gaps = (
        strategy.frontier_dominance_gaps(frontier),
        strategy.frontier_dominance_gaps(frontier, "oracle"),
    )
    st = Table(
        title="Static strategies (synthetic costs) and the adaptive frontier's margin over them"
    )
    for col in (
        "strategy",
        "accuracy",
        "tokens",
        "latency (s)",
        "cost units",
        "adaptive gap",
        "oracle gap",
    ):
        st.add_column(col, justify="right")
    for i, name in enumerate(table.names):
        st.add_row(
            name,
            f"{float(frontier.static_accuracy[i]):.4f}",
            f"{float(frontier.static_tokens[i]):.0f}",
            f"{float(frontier.static_latency[i]):.2f}",
            f"{float(frontier.static_cost[i]):.2f}",
            f"{gaps['interpolated'][i]:+.4f}",
            f"{oracle_gaps['interpolated'][i]:+.4f}",
        )
    console.print(st)

    ft = Table(title="Frontier along lam_T = mu/T0, lam_L = mu/L0 (true mean accuracy)")
    for col in (
        "mu",
        "adaptive acc",
        "tokens",
        "latency",
        "oracle acc",
        "tokens ",
        "latency ",
        "top adaptive choice",
    ):
        ft.add_column(col, justify="right")
    for i in range(0, len(frontier.mu), 8):
        share = np.asarray(frontier.adaptive_choice_share[i])
        top = table.names[int(np.argmax(share))]
        ft.add_row(
            f"{float(frontier.mu[i]):.2e}",
            f"{float(frontier.adaptive_accuracy[i]):.4f}",
            f"{float(frontier.adaptive_tokens[i]):.0f}",
            f"{float(frontier.adaptive_latency[i]):.2f}",
            f"{float(frontier.oracle_accuracy[i]):.4f}",
            f"{float(frontier.oracle_tokens[i]):.0f}",
            f"{float(frontier.oracle_latency[i]):.2f}",
            f"{top} ({share.max():.0%})",
        )
    console.print(ft)

    rates = [0.0, 0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.15]
    choices, mean_service, J = strategy.queueing_arrival_sweep(rates, table=table, alpha=args.alpha)
    qt = Table(title=f"Queue-aware strategy per Table I task type (alpha = {args.alpha:g})")
    for col in ("arrival rate", "E[S] (s)", "J", "choice per type"):
        qt.add_column(col, justify="right")
    for r, m, j, ch in zip(rates, mean_service, J, choices):
        qt.add_row(f"{r:g}", f"{m:.2f}", f"{j:.2f}", ", ".join(table.names[int(c)] for c in ch))
    console.print(qt)


if __name__ == "__main__":
    main()
