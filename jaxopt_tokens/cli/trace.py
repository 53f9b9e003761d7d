"""`jaxopt-tokens trace`: how bursty a recorded request trace is, and whether one mean rate
describes it."""

from __future__ import annotations

import argparse

from rich.table import Table

import jaxopt_tokens as jt

from ..traffic import TIME_UNITS, TRACE_FORMATS
from ._common import add_force_option, path_arg, positive_float
from ._output import Outputs, check_figure_format, console, emit_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "trace",
        help="describe a recorded request trace: rates by window, burstiness, dispersion",
        description="Read a request trace (the Azure LLM inference trace CSV, Mooncake's JSON "
        "lines, BurstGPT's CSV, or a CSV/JSON lines file with a time column) and report its "
        "mean rate, the rate per window, the inter-arrival coefficient of variation, the index "
        "of dispersion of counts across window lengths, simultaneous arrivals and the "
        "correlation of request count with work per window (python: arrival_stats).",
    )
    p.add_argument("trace", type=path_arg, metavar="FILE", help="the trace file")
    p.add_argument("--trace-format", choices=("auto", *TRACE_FORMATS), default="auto")
    p.add_argument(
        "--time-unit",
        choices=("auto", *TIME_UNITS, "iso"),
        default="auto",
        help="how the time column is read (default: from the format and column name)",
    )
    p.add_argument(
        "--window",
        type=positive_float,
        default=60.0,
        metavar="SECONDS",
        help="window of the per-window rates and the warnings (default 60)",
    )
    p.add_argument("--plot", metavar="FIG.png", help="save the rate and dispersion figure")
    add_force_option(p)
    p.add_argument("--format", choices=("table", "json"), default="table", help="report format")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    outputs = Outputs(args.force)
    plot_path = None
    if args.plot is not None:
        check_figure_format(args.plot, "--plot")
        plot_path = outputs.file(args.plot, "--plot")
    try:
        trace = jt.traffic.read_trace(args.trace, args.trace_format, time_unit=args.time_unit)
        stats = jt.traffic.arrival_stats(trace, args.window)
        with outputs:
            if plot_path is not None:
                jt.traffic.plot_arrivals(trace, plot_path, window=args.window)
            outputs.commit()
    finally:
        outputs.abort()
    report = {
        "trace": str(args.trace),
        "format": trace.format,
        "start": trace.start,
        "dropped": {reason: rows for reason, rows in trace.dropped},
        "has_tokens": trace.output_tokens is not None,
        "has_labels": trace.labels is not None,
        **stats.to_dict(),
        "plot": args.plot,
    }
    if args.format == "json":
        emit_json(report)
        return 0
    con = console()
    t = Table(title=f"{args.trace} ({trace.format}): {len(trace):,} requests")
    t.add_column("statistic")
    t.add_column("value", justify="right")
    t.add_row("duration (s)", f"{stats.duration:.6g}")
    t.add_row("mean rate (requests/s)", f"{stats.mean_rate:.4g}")
    for k, v in stats.window_rate.items():
        t.add_row(f"{k} rate per {stats.window:g}-s window", f"{v:.4g}")
    t.add_row("inter-arrival CV", f"{stats.interarrival_cv:.3g}")
    for w, d in stats.dispersion.items():
        t.add_row(f"index of dispersion, {w:g}-s windows", f"{d:.3g}")
    t.add_row("simultaneous arrivals (fraction)", f"{stats.simultaneous_fraction:.3g}")
    t.add_row("largest simultaneous batch", str(stats.largest_batch))
    if stats.work_correlation is not None:
        t.add_row("corr(requests, tokens/request) per window", f"{stats.work_correlation:.3g}")
    con.print(t)
    for note in stats.warnings:
        con.print(f"[yellow]warning:[/] {note}", soft_wrap=True)
    for reason, rows in trace.dropped:
        con.print(f"[yellow]left out:[/] {reason} ({rows} rows)", soft_wrap=True)
    return 0
