"""`jaxopt-tokens fit`: accuracy and latency curves from measurements, written as a workload."""

from __future__ import annotations

import argparse
import warnings

from rich.table import Table

import jaxopt_tokens as jt

from .. import InputError
from ._common import add_force_option, positive_float
from ._output import Outputs, check_figure_format, console, emit_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit",
        help="fit accuracy (A, b, D) and latency (t0, c) curves to measurements; write a workload",
        description="Fit p(l) = A (1 - exp(-b l)) + D by binomial maximum likelihood and "
        "t(l) = t0 + c l by weighted regression, per task, with standard errors; write a "
        "workload TOML that `solve` reads.",
    )
    p.add_argument(
        "measurements",
        metavar="MEASUREMENTS.csv",
        help="CSV with task, budget, n_correct + n_total (or accuracy), latency",
    )
    p.add_argument(
        "--shares",
        metavar="SHARES.csv",
        help="request log or share table (task + share/count, or one row per request; "
        "an arrival_time column also sets the arrival rate). Default: equal shares",
    )
    p.add_argument(
        "--task-bands",
        metavar="NAME=MAX,...",
        help="label a request log without a 'task' column by bands of its output tokens, e.g. "
        "short=512,long=inf (each request: the first band whose MAX holds its count)",
    )
    p.add_argument(
        "-o", "--output", metavar="FILE", help="write the workload TOML here (default: print it)"
    )
    p.add_argument("--plot", metavar="FIG.png", help="save the goodness-of-fit figure")
    add_force_option(p)
    p.add_argument(
        "--arrival-rate",
        type=positive_float,
        default=None,
        metavar="X",
        help="arrival rate (queries/s) for the workload (default: from --shares, else 0.1)",
    )
    p.add_argument("--alpha", type=positive_float, default=30.0, metavar="Y")
    p.add_argument("--max-tokens", type=positive_float, default=32768.0, metavar="M")
    p.add_argument("--format", choices=("table", "json"), default="table", help="report format")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # every output is checked (and a bad plot format refused) before any work is done
    outputs = Outputs(args.force)
    toml_path = outputs.file(args.output, "-o") if args.output is not None else None
    plot_path = None
    if args.plot is not None:
        check_figure_format(args.plot, "--plot")
        plot_path = outputs.file(args.plot, "--plot")
    try:
        return _run(args, outputs, toml_path, plot_path)
    finally:
        outputs.abort()  # nothing staged is left behind if the fit fails


def _run(args, outputs, toml_path, plot_path) -> int:
    import jax

    m = jt.deploy.read_measurements(args.measurements)
    shares, rate = (None, None)
    if args.shares:
        shares, rate = jt.deploy.read_request_log(
            args.shares, m.tasks, bands=_bands(args.task_bands)
        )
    elif args.task_bands is not None:
        raise InputError("--task-bands: labels the requests of --shares LOG; give --shares")
    arrival_rate = args.arrival_rate or rate or 0.1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", jt.deploy.FitWarning)
        result = jt.deploy.fit(
            m,
            shares=shares,
            arrival_rate=arrival_rate,
            alpha=args.alpha,
            max_tokens=args.max_tokens,
        )
    tokens, tokens_se = jt.deploy.budget_uncertainty(result)
    header = f"Fitted by jaxopt-tokens fit from {args.measurements}" + (
        f" (shares from {args.shares})" if args.shares else " (equal shares)"
    )
    with jax.enable_x64(True):  # written at full float64 precision
        text = jt.dump_workload(result.workload_float64(), header=header)
    with outputs:
        if toml_path is not None:
            toml_path.write_text(text)
        if plot_path is not None:
            jt.deploy.plot_fit(result, plot_path)
        outputs.commit()
    report = {
        "measurements": args.measurements,
        "tasks": [
            {**row, "optimal_tokens": float(l), "optimal_tokens_se": float(se)}
            for row, l, se in zip(result.table(), tokens, tokens_se)
        ],
        "warnings": [str(w.message) for w in caught],
        "output": args.output,
    }
    if args.format == "json":
        emit_json(report)
    else:
        # the TOML is the data: with no -o it is stdout, and the table goes to stderr
        _print(report, result, stderr=args.output is None)
        if args.output is None:
            print(text)
    return 0


def _print(report: dict, result, stderr: bool = False) -> None:
    con = console(stderr=stderr)
    t = Table(title=f"Fitted curves from {report['measurements']} (estimate ± SE)")
    for col in ("task", "A", "b", "D", "t0 (s)", "c (s/tok)", "fit p", "l*±SE"):
        t.add_column(col, justify="left" if col == "task" else "right")
    for row, fit_ in zip(report["tasks"], result.tasks):
        cells = [f"{row[p][0]:.3g}±{row[p][1]:.1g}" for p in ("A", "b", "D", "t0", "c")]
        t.add_row(
            row["task"],
            *cells,
            f"{row['p_value']:.2f}",
            f"{row['optimal_tokens']:.1f}±{row['optimal_tokens_se']:.1f}",
        )
    con.print(t)
    for w in report["warnings"]:
        con.print(f"[yellow]warning:[/yellow] {w}")
    if report["output"]:
        con.print(f"workload written to {report['output']}")


def _bands(text: str | None) -> dict[str, float] | None:
    """`short=512,long=inf` as `{"short": 512.0, "long": inf}`."""
    if text is None:
        return None
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            bound = float(value)
        except ValueError:
            bound = None
        if not sep or not name.strip() or bound is None or bound != bound:
            raise InputError(
                f"--task-bands: expected NAME=MAX,... (e.g. short=512,long=inf), got {part!r}"
            )
        out[name.strip()] = bound
    return out
