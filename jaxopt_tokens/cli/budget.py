"""`jaxopt-tokens budget` and `jaxopt-tokens evaluate-budget`: CLEAR global token budgets.

`budget` splits a total budget over the queries of a thresholds CSV (column `threshold`; other
columns are ignored) with CLEAR or a baseline; `evaluate-budget` prints the paper-style stream
table (accuracy per stream and per-query budget, gain of CLEAR vs Uniform). docs: *CLEAR*.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from rich.table import Table

import jaxopt_tokens as jt

from .. import InputError
from ._common import positive_float, random_seed
from ._output import console, emit_json

#: `--policy`: CLEAR or one of `jaxopt_tokens.clear.BASELINES` (spelled here so that the
#: parser loads no JAX; a test holds the two equal)
POLICY_CHOICES = ("clear", "uniform", "predictor", "heuristic", "auction")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "budget",
        help="split one global token budget over a batch of queries (CLEAR shadow price)",
        description="Allocate a total token budget over the queries in a CSV of predicted "
        "thresholds "
        "with CLEAR (Lambert-W policy, rational abandonment, market-clearing price) or a baseline.",
    )
    p.add_argument(
        "--budget",
        type=positive_float,
        required=True,
        metavar="TOKENS",
        help="total token budget for the whole batch",
    )
    p.add_argument(
        "--thresholds",
        required=True,
        metavar="FILE.csv",
        help="CSV with a header and a 'threshold' column (predicted tokens per query)",
    )
    p.add_argument("--policy", choices=POLICY_CHOICES, default="clear")
    p.add_argument("--velocity", type=positive_float, default=1.0, help="CLEAR initial velocity v")
    p.add_argument(
        "--decay",
        type=positive_float,
        default=None,
        metavar="BETA",
        help="fixed decay beta per token (default: adaptive)",
    )
    p.add_argument(
        "--min-scale",
        type=positive_float,
        default=0.25,
        help="floor of the adaptive 1/beta as a fraction of the mean threshold",
    )
    p.add_argument(
        "--query-cap", type=positive_float, default=None, metavar="M", help="per-query cap"
    )
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=run)

    e = sub.add_parser(
        "evaluate-budget",
        help="accuracy of CLEAR and baselines on the four traffic streams (paper-style table)",
        description="Evaluate CLEAR, Uniform, Predictor, Heuristic, Auction and Oracle on the "
        "Balanced, "
        "Mostly-Easy, Mostly-Hard and U-Shaped streams at 256/512/1024/2048 tokens per query.",
    )
    e.add_argument(
        "--pool",
        metavar="FILE.csv",
        default=None,
        help="pool CSV (threshold,true_length,solvable[,tier]); default: the shipped pool",
    )
    e.add_argument("--seed", type=random_seed, default=0, help="seed of the stream draws")
    e.add_argument("--format", choices=("table", "json"), default="table")
    e.set_defaults(func=run_evaluate)


def load_thresholds(path) -> np.ndarray:
    """The `threshold` column of a CSV; `InputError` names the line of a bad value."""
    text = jt.deploy.read_text(path, "thresholds CSV")
    rows = list(csv.reader(line.rstrip("\r") for line in text.split("\n") if line))
    path = Path(path)
    if not rows:
        raise InputError(f"{path}: empty file; expected a header with a 'threshold' column")
    header = [h.strip().lower() for h in rows[0]]
    if "threshold" not in header:
        raise InputError(f"{path}:1: no 'threshold' column in header {rows[0]}")
    k = header.index("threshold")
    values = []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        text = row[k].strip() if k < len(row) else ""
        try:
            value = float(text)
        except ValueError:
            raise InputError(f"{path}:{lineno}: threshold must be a number, got {text!r}") from None
        if not np.isfinite(value) or value < 0:
            raise InputError(f"{path}:{lineno}: threshold must be finite and >= 0, got {text!r}")
        values.append(value)
    if not values:
        raise InputError(f"{path}: no data rows")
    return np.asarray(values)


def run(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp

    tau = load_thresholds(args.thresholds)
    decay = "adaptive" if args.decay is None else args.decay
    jt.clear.check_inputs(
        tau,
        args.budget,
        velocity=args.velocity,
        decay=decay,
        query_cap=args.query_cap,
        min_scale=args.min_scale,
    )
    report = {"policy": args.policy, "budget": args.budget, "queries": int(tau.size)}
    with jax.enable_x64(True):
        t = jnp.asarray(tau, jnp.float64)
        if args.policy == "clear":
            a = jt.clear.allocate(
                t,
                args.budget,
                velocity=args.velocity,
                decay=decay,
                query_cap=args.query_cap,
                min_scale=args.min_scale,
            )
            tokens = np.asarray(a.tokens)
            report.update(
                price=float(a.price),
                beta=float(a.beta),
                status=jt.clear.AllocationStatus(int(a.status)).name.lower(),
            )
        else:
            tokens = np.asarray(
                jt.clear.BASELINES[args.policy](t, args.budget, query_cap=args.query_cap)
            )
    report.update(
        total_tokens=float(tokens.sum()),
        admitted=int((tokens > 0).sum()),
        thresholds=tau.tolist(),
        tokens=tokens.tolist(),
    )
    if args.format == "json":
        emit_json(report)
    else:
        _print_allocation(report)
    return 0


def _print_allocation(r: dict) -> None:

    table = Table(
        title=f"{r['policy']}: {r['total_tokens']:.1f} of {r['budget']:g} tokens, "
        f"{r['admitted']}/{r['queries']} queries admitted"
    )
    for col in ("query", "threshold", "tokens", "admitted"):
        table.add_column(col, justify="right")
    for i, (t, x) in enumerate(zip(r["thresholds"], r["tokens"])):
        table.add_row(str(i), f"{t:g}", f"{x:.1f}", "yes" if x > 0 else "no")
    con = console()
    con.print(table)
    if "price" in r:
        con.print(f"price mu = {r['price']:.6g}, beta = {r['beta']:.6g}, status = {r['status']}")


def run_evaluate(args: argparse.Namespace) -> int:

    pool = jt.clear.load_pool(args.pool) if args.pool else jt.clear.default_pool()
    result = jt.clear.evaluate_streams(pool, seed=args.seed)
    if args.format == "json":
        emit_json(result)
        return 0

    table = Table(title="Accuracy (%) per stream and per-query token budget")
    table.add_column("stream")
    table.add_column("tokens/query", justify="right")
    for p in result["policies"]:
        table.add_column(p, justify="right")
    if "gain" in result:
        table.add_column("CLEAR vs Uniform", justify="right")
    for s in result["streams"]:
        for bi, b in enumerate(result["budgets"]):
            row = [s if bi == 0 else "", str(b)]
            row += [f"{result['accuracy'][p][s][bi]:.1f}" for p in result["policies"]]
            if "gain" in result:
                row.append(f"{result['gain'][s][bi]:+.1f}")
            table.add_row(*row, end_section=bi == len(result["budgets"]) - 1)
    console().print(table)
    return 0
