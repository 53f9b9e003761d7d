"""`jaxopt-tokens sweep | frontier | figures`: sensitivity surfaces, frontiers, pictures."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .._errors import InputError
from .._sweeps.figures import all_figures, figure_frontier, save_figure
from .._sweeps.frontier import frontier_by_alpha, uniform_curve, with_simulated_tail
from .._sweeps.sweep import sweep, write_sweep
from ._common import add_workload_options, loaded_workload


def grid(text: str) -> np.ndarray:
    """`START:STOP:NUM` (inclusive, linear) or a comma-separated list of numbers."""
    try:
        if ":" in text:
            start, stop, num = text.split(":")
            if int(num) < 1:
                raise ValueError
            return np.linspace(float(start), float(stop), int(num))
        return np.asarray([float(v) for v in text.split(",")])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected START:STOP:NUM or a comma-separated list"
        ) from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="solve a grid of (arrival rate, alpha, ...) in one pass; write CSV/Parquet",
        description="Every combination of the grids, solved batched. Per-task fields: "
        "--grid b__GSM8K=0.001:0.01:10.",
    )
    add_workload_options(p, overrides=False)
    p.add_argument(
        "--arrival-rate",
        dest="arrival_rate_grid",
        type=grid,
        metavar="GRID",
        help="arrival rates: START:STOP:NUM or a list (a single value fixes it)",
    )
    p.add_argument(
        "--alpha", dest="alpha_grid", type=grid, metavar="GRID", help="alphas, same syntax"
    )
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="FIELD=GRID",
        help="any other field, e.g. max_tokens=512,1024 or b__GSM8K=0.001:0.01:10",
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_sweep)

    f = sub.add_parser(
        "frontier", help="accuracy vs mean system time frontier (alpha swept) vs uniform budgets"
    )
    add_workload_options(f)
    f.add_argument("--points", type=int, default=1000)
    f.add_argument("--out", required=True, type=Path, metavar="DIR")
    f.add_argument(
        "--simulate-tail",
        type=int,
        default=0,
        metavar="Q",
        help="also simulate every frontier point with Q queries x 10 replications and add the "
        "simulated mean, p95 and p99 system time (the PK model gives only the mean)",
    )
    f.set_defaults(func=run_frontier)

    g = sub.add_parser(
        "figures", help="all figures for a workload (Fig. 3, Fig. 4, heatmaps, frontier)"
    )
    add_workload_options(g)
    g.add_argument("--out", required=True, type=Path, metavar="DIR")
    g.set_defaults(func=run_figures)


def run_sweep(args: argparse.Namespace) -> int:

    grids = {}
    if args.arrival_rate_grid is not None:
        grids["arrival_rate"] = args.arrival_rate_grid
    if args.alpha_grid is not None:
        grids["alpha"] = args.alpha_grid
    for item in args.grid:
        name, _, spec = item.partition("=")
        try:
            grids[name] = grid(spec)
        except argparse.ArgumentTypeError as e:
            raise InputError(f"--grid {item}: {e}") from None
    if not grids:
        raise InputError("give at least one grid (--arrival-rate, --alpha or --grid FIELD=GRID)")
    with loaded_workload(args) as w:
        try:
            df = sweep(w, quiet=args.quiet, **grids)
        except ValueError as e:
            raise InputError(str(e)) from None
    args.out.mkdir(parents=True, exist_ok=True)
    paths = write_sweep(df, args.out / "sweep")
    counts = df["status"].value_counts()
    print(f"{len(df):,} points; status: " + ", ".join(f"{k} {v:,}" for k, v in counts.items() if v))
    for path in paths:
        print(f"wrote {path}")
    return 0


def run_frontier(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")

    with loaded_workload(args) as w:
        df = frontier_by_alpha(w, args.points)
        if args.simulate_tail:
            if args.simulate_tail < 2:
                raise InputError(
                    f"--simulate-tail: need at least 2 queries, got {args.simulate_tail}"
                )
            df = with_simulated_tail(df, w, num_queries=args.simulate_tail)
        budgets, et, acc = uniform_curve(w)
        fig = figure_frontier(w, args.points)
    args.out.mkdir(parents=True, exist_ok=True)
    paths = write_sweep(df, args.out / "frontier_optimal")
    import pandas as pd

    uniform = args.out / "frontier_uniform.csv"
    pd.DataFrame({"budget": budgets, "mean_system_time": et, "accuracy": acc}).to_csv(
        uniform, index=False
    )
    paths += [uniform] + save_figure(fig, args.out, "frontier")
    for path in paths:
        print(f"wrote {path}")
    return 0


def run_figures(args: argparse.Namespace) -> int:

    with loaded_workload(args) as w:
        paths = all_figures(w, args.out)
    for path in paths:
        print(f"wrote {path}")
    return 0
