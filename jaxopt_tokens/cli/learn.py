"""`jaxopt-tokens learn`: budgets learned on a recorded trace by gradient through its replay,
reported on a held-out later span beside the model optimum (python: `learn_budgets`)."""

from __future__ import annotations

import argparse
import json

import numpy as np
from rich.table import Table

import jaxopt_tokens as jt

from .. import InputError
from ..traffic import TRACE_FORMATS
from ._common import (
    REPLAY_FLAGS,
    add_force_option,
    add_workload_options,
    int_at_least,
    loaded_workload,
    path_arg,
    positive_float,
    random_seed,
    said_as_flags,
)
from ._output import Outputs, console, emit_json

_METRICS = ("objective", "mean_system_time", "p95", "cvar", "accuracy")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "learn",
        help="learn budgets on a recorded trace (static or by queue length), checked on a "
        "held-out span",
        description="Replay the trace through the FIFO server (differentiably), learn the "
        "budgets that maximise the replayed J on its first part (--train-fraction) by "
        "gradient, and report them on the rest beside the model optimum. --states S learns "
        "a table of budgets by the number of requests an arrival finds (0..S). "
        "Example: jaxopt-tokens learn trace.csv --utilization 0.6 --states 8 -o policy.json",
    )
    p.add_argument("trace", type=path_arg, metavar="FILE", help="the trace file")
    p.add_argument("--trace-format", choices=("auto", *TRACE_FORMATS), default="auto")
    add_workload_options(p)
    load = p.add_mutually_exclusive_group()
    load.add_argument(
        "--utilization",
        type=positive_float,
        metavar="U",
        help="replay at the load U of the model optimum",
    )
    load.add_argument(
        "--replay-rate",
        type=positive_float,
        metavar="R",
        help="replay at R requests/s (default: the trace's own rate)",
    )
    p.add_argument(
        "--states",
        type=int_at_least(0),
        default=0,
        metavar="S",
        help="0: static budgets; S: a table by requests in the system (default 0)",
    )
    p.add_argument(
        "--train-fraction",
        type=positive_float,
        default=0.5,
        metavar="F",
        help="the first fraction of the trace trains, the rest is held out (0.5)",
    )
    p.add_argument(
        "--last",
        type=positive_float,
        metavar="HOURS",
        help="learn on the trace's last HOURS only (e.g. a gateway's request log, re-learned "
        "on a schedule)",
    )
    p.add_argument(
        "--task-types",
        choices=("shares", "trace"),
        default="shares",
        help="each request's task: drawn from the workload's shares, or the trace's own labels "
        "(a gateway's request log has them) (default: shares)",
    )
    p.add_argument("--steps", type=int_at_least(1), default=300, metavar="N")
    p.add_argument("--num-replications", type=int_at_least(1), default=8, metavar="R")
    p.add_argument("--seed", type=random_seed, default=0)
    p.add_argument("-o", "--output", metavar="POLICY.json", help="write the learned policy")
    add_force_option(p)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import jax

    if not args.train_fraction < 1:
        raise InputError(f"--train-fraction: in (0, 1), got {args.train_fraction}")
    outputs = Outputs(args.force)
    target = outputs.file(args.output, "-o") if args.output is not None else None
    try:
        trace = jt.traffic.read_trace(args.trace, args.trace_format)
        if args.last is not None:
            trace = _last(trace, args.last)
        with loaded_workload(args) as w:
            with said_as_flags(REPLAY_FLAGS):
                result = jt.learn.learn_budgets(
                    w,
                    trace,
                    states=args.states,
                    train_fraction=args.train_fraction,
                    utilization=args.utilization,
                    rate=args.replay_rate,
                    num_replications=args.num_replications,
                    steps=args.steps,
                    task_types=args.task_types,
                    key=jax.random.PRNGKey(args.seed),
                )
            report = _report(args, w.task_names, result)
        if target is not None:
            with outputs:
                target.write_text(json.dumps(report, allow_nan=False, indent=1) + "\n")
                outputs.commit()
    finally:
        outputs.abort()
    if args.format == "json":
        emit_json(report)
    else:
        _print(report)
    return 0 if result.status == jt.Status.CONVERGED else 1


def _last(trace, hours: float):
    """The requests of the trace's last `hours` (at least 2 of them)."""
    start = max(trace.duration - hours * 3600.0, 0.0)
    count = int(np.sum(np.asarray(trace.arrival_times) >= start))
    if count < 2:
        raise InputError(
            f"--last: {count} request(s) in the trace's last {hours:g} h "
            f"(it spans {trace.duration / 3600:.3g} h); give more hours"
        )
    return trace.between(start, np.inf)


def _report(args, tasks, result) -> dict:
    table = np.asarray(result.policy.table)

    def metrics(m):
        return {k: float(np.asarray(getattr(m, k))) for k in _METRICS}

    return {
        "trace": str(args.trace),
        "tasks": list(tasks),
        "replayed_rate": result.rate,
        "states": int(table.shape[0]) - 1,
        "status": jt.Status(result.status).name,
        "budgets_by_state": table.tolist(),
        "model_optimum": np.asarray(result.model_optimum).tolist(),
        "train": {k: metrics(v) for k, v in result.train.items()},
        "held_out": {k: metrics(v) for k, v in result.test.items()},
    }


def _print(report: dict) -> None:
    con = console()
    t = Table(title=f"Held-out replay of {report['trace']} at {report['replayed_rate']:.4g}/s")
    t.add_column("policy")
    for k in _METRICS:
        t.add_column(k.replace("_", " "), justify="right")
    for name, m in report["held_out"].items():
        t.add_row(name.replace("_", " "), *(f"{m[k]:.4g}" for k in _METRICS))
    con.print(t)
    b = Table(title="learned budgets (rows: requests an arrival finds)")
    b.add_column("state")
    for task in report["tasks"]:
        b.add_column(task, justify="right")
    rows = report["budgets_by_state"]
    for s, row in enumerate(rows):
        label = f">= {s}" if s == len(rows) - 1 and len(rows) > 1 else str(s)
        b.add_row(label if len(rows) > 1 else "all", *(f"{x:.0f}" for x in row))
    con.print(b)
    con.print(f"status: {report['status']}")
