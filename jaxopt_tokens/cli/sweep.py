"""`jaxopt-tokens sweep | frontier | figures`: sensitivity surfaces, frontiers, pictures."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

import jaxopt_tokens as jt

from .. import InputError
from ._common import add_force_option, add_workload_options, int_at_least, loaded_workload, path_arg
from ._output import Outputs


def sweep_files(stem: str) -> tuple[str, ...]:
    """The files `write_sweep` may write for `stem`."""
    return (f"{stem}.csv", f"{stem}.parquet")


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
    p.add_argument(
        "--out",
        required=True,
        type=path_arg,
        metavar="DIR",
        help="the sweep's directory: a Parquet dataset (one part file per chunk, written as it "
        "computes) that jt.sweeps.read_sweep, pandas, pyarrow or DuckDB read",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="complete the same sweep already begun in DIR: compute only the missing parts",
    )
    p.add_argument(
        "--force", action="store_true", help="replace a different (or finished) sweep in DIR"
    )
    p.add_argument(
        "--chunk-size",
        type=int_at_least(1),
        default=65_536,
        metavar="N",
        help="points per compiled call and per part file (default: %(default)s)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    d = p.add_argument_group(
        "several processes or hosts (jax.distributed)",
        "one sweep over every process: each solves and writes its share of the parts",
    )
    d.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="address of process 0's coordinator (also read from JAX_COORDINATOR_ADDRESS)",
    )
    d.add_argument("--num-processes", type=int_at_least(1), metavar="N")
    d.add_argument("--process-id", type=int_at_least(0), metavar="I")
    d.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() with what the cluster provides (Slurm, Open MPI, "
        "Kubernetes, Cloud TPU environment variables)",
    )
    p.set_defaults(func=run_sweep)

    f = sub.add_parser(
        "frontier", help="accuracy vs mean system time frontier (alpha swept) vs uniform budgets"
    )
    add_workload_options(f)
    f.add_argument(
        "--points",
        type=int_at_least(2),
        metavar="N",
        help="alphas on the frontier (default 1000; with --from, the sweep's own)",
    )
    f.add_argument(
        "--from",
        dest="from_sweep",
        type=path_arg,
        metavar="SWEEP_DIR",
        help="read the optimal points from a sweep directory with an alpha grid (only the "
        "columns a frontier needs) instead of solving",
    )
    f.add_argument("--out", required=True, type=path_arg, metavar="DIR")
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
    g.add_argument("--out", required=True, type=path_arg, metavar="DIR")
    g.add_argument(
        "--from",
        dest="from_sweep",
        type=path_arg,
        metavar="SWEEP_DIR",
        help="draw the heatmaps from a sweep directory over arrival_rate and alpha",
    )
    add_force_option(g)
    g.set_defaults(func=run_figures)


def run_sweep(args: argparse.Namespace) -> int:
    import jax

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
    if str(args.out) == "":
        raise InputError("--out: the path is empty")
    initialize_distributed(args)
    with loaded_workload(args) as w:
        try:
            run = jt.sweeps.sweep(
                w,
                out=args.out,
                resume=args.resume,
                force=args.force,
                chunk_size=args.chunk_size,
                quiet=args.quiet,
                **grids,
            )
        except InputError as e:
            text = str(e)
            raise InputError("--" + text if text.startswith("out ") else text) from None
        except KeyboardInterrupt:
            _say_what_was_kept(args)
            return 130
    if jax.process_index() != 0:
        return 0
    done = f"{len(run.computed)} parts written" + (
        f", {run.skipped} already done" if run.skipped else ""
    )
    if not run.complete:  # other processes are still writing their parts
        print(
            f"{run.points:,} points in {run.parts} parts; {done}; other processes' parts pending",
            file=sys.stderr,
        )
        return 0
    counts = jt.sweeps.read_sweep(run.path, columns=["status"])["status"].value_counts()
    print(
        f"{run.points:,} points in {run.parts} parts ({done}); status: "
        + ", ".join(f"{k} {v:,}" for k, v in counts.items() if v),
        file=sys.stderr,
    )
    print(f"wrote {run.path}", file=sys.stderr)
    return 0


def _say_what_was_kept(args: argparse.Namespace) -> None:
    """After Ctrl-C: the parts already written (they are kept) and the command that
    resumes the sweep, on standard error."""
    import re
    import shlex
    import sys
    from pathlib import Path

    out = Path(args.out)
    try:
        manifest = jt.sweeps.read_sweep_metadata(out) if out.is_dir() else None
    except InputError:
        manifest = None
    parts = (
        [p for p in out.iterdir() if re.match(r"part-\d+\.parquet$", p.name)] if manifest else []
    )
    kept = len(parts)
    total = f" of {manifest['parts']}" if manifest is not None else ""
    argv = list(getattr(args, "argv", None) or ["sweep", "--out", str(args.out)])
    argv = [a for a in argv if a != "--force"]
    if "--resume" not in argv:
        argv.append("--resume")
    print(
        f"jaxopt-tokens sweep: interrupted; {kept}{total} parts kept in {args.out}; resume "
        f"with: jaxopt-tokens {' '.join(shlex.quote(a) for a in argv)}",
        file=sys.stderr,
    )


def initialize_distributed(args: argparse.Namespace) -> None:
    """Start JAX's multi-process runtime when the options ask for it.

    `--num-processes N --process-id I` with `--coordinator HOST:PORT` (or
    `JAX_COORDINATOR_ADDRESS`, which JAX reads itself); `--distributed` alone lets JAX detect
    the cluster (Slurm, Open MPI, Kubernetes, Cloud TPU).
    """
    import jax

    given = {
        "coordinator_address": args.coordinator,
        "num_processes": args.num_processes,
        "process_id": args.process_id,
    }
    if not args.distributed and all(v is None for v in given.values()):
        return
    if not args.distributed:
        if args.num_processes is None or args.process_id is None:
            raise InputError("--num-processes N and --process-id I go together")
        if args.coordinator is None and not os.environ.get("JAX_COORDINATOR_ADDRESS"):
            raise InputError(
                "--coordinator HOST:PORT is needed (or JAX_COORDINATOR_ADDRESS in the environment)"
            )
    if args.num_processes is not None and args.process_id is not None:
        if args.process_id >= args.num_processes:
            raise InputError(
                f"--process-id {args.process_id} must be below --num-processes {args.num_processes}"
            )
    if args.coordinator is not None:
        host, _, port = args.coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise InputError(f"--coordinator {args.coordinator!r}: expected HOST:PORT")
    try:
        jax.distributed.initialize(**{k: v for k, v in given.items() if v is not None})
    except (RuntimeError, ValueError) as e:
        raise InputError(f"jax.distributed.initialize failed: {e}") from None


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
    if args.from_sweep is not None:
        _refuse_with_from(args)
    with Outputs(args.force) as outputs, loaded_workload(args) as w:
        staging = outputs.directory(args.out, "--out", owned=owned)
        if args.from_sweep is not None:  # the sweep's own workload, at its own points
            w, points = _sweep_workload(args.from_sweep), None
        else:
            points = 1000 if args.points is None else args.points
        jt.sweeps.converged_optimum(w)
        df = jt.sweeps.frontier_by_alpha(args.from_sweep or w, points or 1000)
        points = points or len(df)
        if args.simulate_tail:
            df = jt.sweeps.with_simulated_tail(df, w, num_queries=args.simulate_tail)
        uniform = jt.sweeps.uniform_curve(w)
        fig = jt.sweeps.figure_frontier(w, points, frontier=df, uniform=uniform)
        jt.sweeps.write_sweep(df, staging / "frontier_optimal")
        budgets, et, acc = uniform
        pd.DataFrame({"budget": budgets, "mean_system_time": et, "accuracy": acc}).to_csv(
            staging / "frontier_uniform.csv", index=False
        )
        jt.sweeps.save_figure(fig, staging, "frontier")
        written = outputs.commit()
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _refuse_with_from(args: argparse.Namespace) -> None:
    """`frontier --from DIR` and `figures --from DIR` draw the sweep's own workload (and
    points): flags that would describe another are refused, not ignored."""
    for flag, value in (
        ("--workload", args.workload),
        ("--arrival-rate", args.arrival_rate),
        ("--alpha", getattr(args, "alpha", None)),
        ("--max-tokens", args.max_tokens),
        ("--points", getattr(args, "points", None)),
    ):
        if value is not None:
            raise InputError(
                f"{flag}: --from draws the sweep's own workload and points; leave it out"
            )


def _sweep_workload(path):
    """The base workload a sweep directory records, refusing sweeps that are not a frontier:
    a frontier is drawn along alpha at one operating point."""
    if not Path(path).is_dir():
        raise InputError(f"--from {path}: not a sweep directory")
    manifest = jt.sweeps.read_sweep_metadata(path)
    grids = manifest["grids"]
    varied = [g for g, spec in grids.items() if spec.get("size") != 1]
    if "alpha" not in grids or varied not in ([], ["alpha"]):
        raise InputError(
            f"--from {path}: a frontier needs a sweep over alpha alone; this one varies "
            f"{varied} (draw heatmaps of a 2-D sweep with `figures --from`)"
        )
    data = manifest["workload"]
    for field, spec in grids.items():  # a one-value grid is part of the operating point
        if field != "alpha" and "__" not in field and spec.get("values"):
            data = {**data, field: spec["values"][0]}
    return jt.workload_from_dict(data, source=str(path))


def run_figures(args: argparse.Namespace) -> int:
    if args.from_sweep is not None:
        _refuse_with_from(args)
    with Outputs(args.force) as outputs, loaded_workload(args) as w:
        if args.from_sweep is not None:  # the sweep's own workload (its tasks, its columns)
            if not Path(args.from_sweep).is_dir():
                raise InputError(f"--from {args.from_sweep}: not a sweep directory")
            manifest = jt.sweeps.read_sweep_metadata(args.from_sweep)
            w = jt.workload_from_dict(manifest["workload"], source=str(args.from_sweep))
        staging = outputs.directory(args.out, "--out", owned=jt.sweeps.figure_names(w))
        jt.sweeps.all_figures(w, staging, sweep_dir=args.from_sweep)
        written = outputs.commit()
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0
