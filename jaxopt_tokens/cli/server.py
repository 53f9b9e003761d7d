"""`jaxopt-tokens fit-server | plan`: a batching server from benchmarks; replicas for a target."""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from pathlib import Path

import numpy as np
from rich.table import Table

import jaxopt_tokens as jt

from .. import InputError
from ._common import (
    add_force_option,
    add_server_options,
    add_workload_options,
    int_at_least,
    loaded_workload,
    positive_float,
    server_from_args,
)
from ._output import Outputs, check_figure_format, console, emit_json

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser(
        "fit-server",
        help="fit a batching server's step time tau0 + tau1 n from benchmark results",
        description="Fit the decode step time of a continuously batching server from "
        "serving-benchmark results: vLLM (`vllm bench serve --save-result`), SGLang "
        "(`bench_serving --output-file`), aiperf / genai-perf profile exports, InferenceX, or a "
        "CSV of concurrency, tpot (s) / tpot_ms. Runs left out (overloaded) are listed.",
    )
    f.add_argument("files", nargs="+", metavar="FILE", help="benchmark JSON files or CSV files")
    f.add_argument(
        "--group",
        type=int_at_least(1),
        metavar="N",
        help="fit the N-th deployment of files that mix several (listed when refused)",
    )
    f.add_argument("--format", choices=("table", "json"), default="table")
    f.set_defaults(func=run_fit)

    p = sub.add_parser(
        "plan",
        help="fewest replicas of a batching server, with their budgets, that meet a latency target",
        description="For 1, 2, ... replicas (--routing), solve the budgets under the "
        "batching model and report E[T], accuracy and (with --target-p95) simulated p95; the "
        "answer is the fewest replicas meeting every target.",
    )
    add_workload_options(p)
    add_server_options(p, default="batching")
    p.add_argument(
        "--target-latency", type=positive_float, required=True, metavar="S", help="mean E[T] (s)"
    )
    p.add_argument(
        "--target-p95", type=positive_float, metavar="S", help="simulated p95 system time (s)"
    )
    p.add_argument("--max-replicas", type=int_at_least(1), default=32, metavar="C")
    p.add_argument(
        "--num-queries",
        type=int_at_least(100),
        default=5000,
        metavar="Q",
        help="queries per simulated replication (default: %(default)s)",
    )
    p.add_argument("--num-replications", type=int_at_least(2), default=5, metavar="R")
    p.add_argument("--plot", metavar="FIG.png", help="save accuracy and latency vs replicas")
    add_force_option(p)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=run_plan)


def run_fit(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", jt.deploy.FitWarning)
        fit = jt.deploy.fit_step_time(*args.files, group=args.group)
    lo0, hi0 = fit.interval("tau0")
    lo1, hi1 = fit.interval("tau1")
    report = {
        "files": args.files,
        "tau0": fit.tau0,
        "tau1": fit.tau1,
        "se_tau0": fit.se_tau0,
        "se_tau1": fit.se_tau1,
        "interval_95": {"tau0": [lo0, hi0], "tau1": [lo1, hi1]},
        "points": int(fit.concurrency.size),
        "step_time_arg": f"{fit.tau0:.6g},{fit.tau1:.6g}",
        "concurrency": fit.concurrency.tolist(),
        "concurrency_method": list(fit.methods),
        "excluded": list(fit.excluded),
        "warnings": [str(w.message) for w in caught],
    }
    if args.format == "json":
        emit_json(report)
        return 0
    con = console()
    t = Table(title=f"Step time tau0 + tau1 n from {fit.concurrency.size} measurements")
    for col in ("parameter", "estimate", "SE", "95% interval"):
        t.add_column(col, justify="right")
    t.add_row("tau0 (s)", f"{fit.tau0:.5g}", f"{fit.se_tau0:.2g}", f"[{lo0:.5g}, {hi0:.5g}]")
    t.add_row(
        "tau1 (s/request)", f"{fit.tau1:.5g}", f"{fit.se_tau1:.2g}", f"[{lo1:.5g}, {hi1:.5g}]"
    )
    con.print(t)
    for w in report["warnings"]:
        if w not in report["excluded"]:
            con.print(f"[yellow]warning:[/yellow] {w}")
    for note in report["excluded"]:
        con.print(f"[yellow]left out:[/yellow] {note}")
    con.print(f"use: --server batching --step-time {report['step_time_arg']}")
    return 0


def run_plan(args: argparse.Namespace) -> int:
    outputs = Outputs(args.force)
    plot = None
    if args.plot is not None:
        check_figure_format(args.plot, "--plot")
        plot = outputs.file(args.plot, "--plot")
    with outputs:  # removes what was staged if anything fails, naming a failed write
        return _plan(args, outputs, plot)


def _plan(args, outputs: Outputs, plot: Path | None) -> int:
    server = server_from_args(args)
    if server is None:
        raise InputError("plan: --server must be batching (replicas of the M/G/1 model: no)")
    with loaded_workload(args) as w:
        result = jt.deploy.plan_replicas(
            w,
            server,
            args.target_latency,
            target_p95=args.target_p95,
            max_replicas=args.max_replicas,
            num_queries=args.num_queries,
            num_replications=args.num_replications,
        )
    rows = [
        {
            **{f.name: getattr(r, f.name) for f in dataclasses.fields(r)},
            "status": r.status.name.lower(),
            "tokens": None if r.tokens is None else list(r.tokens),
        }
        for r in result.rows
    ]
    report = {
        "routing": result.routing,
        "target_latency": result.target_latency,
        "target_p95": result.target_p95,
        "arrival_rate": float(np.asarray(w.arrival_rate)),
        "tasks": list(w.task_names),
        "replicas": result.replicas,
        "budgets": None if result.budgets is None else list(result.budgets),
        "rows": rows,
    }
    if plot is not None:
        _figure(rows, args, plot)
        outputs.commit()
    if args.format == "json":
        emit_json(report)
    else:
        _print(report)
    return 0 if result.replicas is not None else 1


def _figure(rows, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    c = [r["replicas"] for r in rows if r["accuracy"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    accuracy = [r["accuracy"] for r in rows if r["accuracy"] is not None]
    lines = ax.plot(c, accuracy, "o-", label="mean accuracy (left)")
    ax.set(xlabel="replicas", ylabel="mean accuracy at the optimal budgets")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # a replica count is whole
    ax2 = ax.twinx()
    latency = [r["mean_system_time"] for r in rows if r["accuracy"] is not None]
    lines += ax2.plot(c, latency, "s--", color="C1", label="E[T] (right)")
    lines.append(
        ax2.axhline(args.target_latency, color="C1", lw=0.8, ls=":", label="E[T] target (right)")
    )
    ax2.set(ylabel="mean system time E[T] (s)")
    ax.legend(handles=lines, loc="best", fontsize=8)
    ax.set_title(f"Accuracy and latency vs replicas (batching server, {args.routing} routing)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _print(report: dict) -> None:
    con = console()
    t = Table(
        title=f"Replicas for E[T] <= {report['target_latency']:g} s"
        + (f" and p95 <= {report['target_p95']:g} s" if report["target_p95"] else "")
        + f" at {report['arrival_rate']:g} queries/s"
    )
    for col in ("replicas", "E[T] (s)", "sim. p95 (s)", "accuracy", "load", "meets"):
        t.add_column(col, justify="right")
    for r in report["rows"]:
        if r["mean_system_time"] is None:
            t.add_row(str(r["replicas"]), "-", "-", "-", "-", r["status"])
            continue
        p95 = "-" if r["p95_system_time"] is None else f"{r['p95_system_time']:.3f}"
        t.add_row(
            str(r["replicas"]),
            f"{r['mean_system_time']:.3f}",
            p95,
            f"{r['accuracy']:.4f}",
            f"{r['load']:.3f}",
            "yes" if r["meets"] else "",
        )
        if r["meets"]:
            break
    con.print(t)
    if report["replicas"] is None:
        con.print("[red]no replica count up to --max-replicas meets the target[/red]")
    else:
        budgets = ", ".join(f"{n} {x:.0f}" for n, x in zip(report["tasks"], report["budgets"]))
        con.print(f"fewest replicas: {report['replicas']}; budgets: {budgets}")
