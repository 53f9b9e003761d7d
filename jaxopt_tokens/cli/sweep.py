"""`jaxopt-tokens sweep | frontier | figures`: sensitivity surfaces, frontiers, pictures."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .._errors import InputError
from .._sweeps.figures import (
    all_figures,
    converged_optimum,
    figure_frontier,
    figure_names,
    save_figure,
)
from .._sweeps.frontier import frontier_by_alpha, uniform_curve, with_simulated_tail
from .._sweeps.sweep import sweep, write_sweep
from ._common import add_force_option, add_workload_options, int_at_least, loaded_workload
from ._output import Outputs


def sweep_files(stem: str) -> tuple[str, ...]:
    """The files `write_sweep` may write for `stem`."""
    return (f"{stem}.csv", f"{stem}.parquet")


SWEEP_FILES = sweep_files("sweep")


MAX_GRID = 10**7  # values on one axis; the product of the axes is checked against memory


def grid(text: str) -> np.ndarray:
    """`START:STOP:NUM` (inclusive, linear) or a comma-separated list of numbers."""
    try:
        if ":" in text:
            start, stop, num = text.split(":")
            if not 1 <= int(num) <= MAX_GRID:
                raise argparse.ArgumentTypeError(
                    f"{text!r}: NUM must be in [1, {MAX_GRID:,}], got {int(num):,}"
                )
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
    add_force_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_sweep)

    f = sub.add_parser(
        "frontier", help="accuracy vs mean system time frontier (alpha swept) vs uniform budgets"
    )
    add_workload_options(f)
    f.add_argument("--points", type=int_at_least(2), default=1000, metavar="N")
    f.add_argument("--out", required=True, type=Path, metavar="DIR")
    add_force_option(f)
    f.add_argument(
        "--simulate-tail",
        type=int_at_least(0),
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
    add_force_option(g)
    g.set_defaults(func=run_figures)


def run_sweep(args: argparse.Namespace) -> int:
    grids = {}
    if args.arrival_rate_grid is not None:
        grids["arrival_rate"] = args.arrival_rate_grid
    if args.alpha_grid is not None:
        grids["alpha"] = args.alpha_grid
    for item in args.grid:
        name, eq, spec = item.partition("=")
        if not eq or not name:
            raise InputError(f"--grid {item!r}: expected FIELD=GRID, e.g. b__GSM8K=0.001:0.01:10")
        if name in grids:
            flag = {"arrival_rate": "--arrival-rate", "alpha": "--alpha"}.get(name, "--grid")
            raise InputError(f"--grid {item}: '{name}' is already swept by {flag}; give it once")
        try:
            grids[name] = grid(spec)
        except argparse.ArgumentTypeError as e:
            raise InputError(f"--grid {item}: {e}") from None
    if not grids:
        raise InputError("give at least one grid (--arrival-rate, --alpha or --grid FIELD=GRID)")
    with Outputs(args.force) as outputs, loaded_workload(args) as w:
        staging = outputs.directory(args.out, "--out", owned=SWEEP_FILES)
        df = sweep(w, quiet=args.quiet, **grids)
        write_sweep(df, staging / "sweep")
        written = outputs.commit()
    counts = df["status"].value_counts()
    print(f"{len(df):,} points; status: " + ", ".join(f"{k} {v:,}" for k, v in counts.items() if v))
    for path in written:
        print(f"wrote {path}")
    return 0


def run_frontier(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    if args.simulate_tail and args.simulate_tail < 2:
        raise InputError(f"--simulate-tail: need at least 2 queries, got {args.simulate_tail}")
    owned = (
        *sweep_files("frontier_optimal"),
        "frontier_uniform.csv",
        "frontier.png",
        "frontier.svg",
    )
    with Outputs(args.force) as outputs, loaded_workload(args) as w:
        staging = outputs.directory(args.out, "--out", owned=owned)
        converged_optimum(w)
        df = frontier_by_alpha(w, args.points)
        if args.simulate_tail:
            df = with_simulated_tail(df, w, num_queries=args.simulate_tail)
        uniform = uniform_curve(w)
        fig = figure_frontier(w, args.points, frontier=df, uniform=uniform)
        write_sweep(df, staging / "frontier_optimal")
        budgets, et, acc = uniform
        pd.DataFrame({"budget": budgets, "mean_system_time": et, "accuracy": acc}).to_csv(
            staging / "frontier_uniform.csv", index=False
        )
        save_figure(fig, staging, "frontier")
        written = outputs.commit()
    for path in written:
        print(f"wrote {path}")
    return 0


def run_figures(args: argparse.Namespace) -> int:
    with Outputs(args.force) as outputs, loaded_workload(args) as w:
        staging = outputs.directory(args.out, "--out", owned=figure_names(w))
        all_figures(w, staging)
        written = outputs.commit()
    for path in written:
        print(f"wrote {path}")
    return 0
