"""`jaxopt-tokens solve`: optimal budgets for a workload, as a table or JSON."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from .._solver.solve import METHODS, solve
from .._status import Status
from ._common import add_workload_options, loaded_workload
from ._output import emit_json
from ._report import allocation_report


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "solve",
        help="optimal per-task reasoning-token budgets with a convergence certificate",
        description="Solve problem (9) of the queueing paper: per-task budgets that maximise "
        "alpha * mean accuracy - mean system time of the M/G/1 server.",
    )
    add_workload_options(p)
    p.add_argument(
        "--solver", choices=METHODS, default="default", help="solver (default: %(default)s)"
    )
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--float32", action="store_true", help="solve in float32 (default float64)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with loaded_workload(args, float32=args.float32) as w:
        sol = solve(w, args.solver)
        report = allocation_report(w, sol, args.solver)
    if args.format == "json":
        emit_json(report)
    else:
        print_table(report)
    return 0 if report["status"] == Status.CONVERGED.name.lower() else 1


def print_table(r: dict) -> None:

    console = Console()
    t = Table(
        title="Optimal reasoning-token budgets  "
        f"(lambda={r['arrival_rate']:g}/s, alpha={r['alpha']:g}, "
        f"l_max={r['max_tokens']:g}, method={r['method']})"
    )
    t.add_column("task")
    t.add_column("l* (tokens)", justify="right")
    t.add_column("integer", justify="right")
    t.add_column("accuracy", justify="right")
    for name, l, li, p in zip(r["tasks"], r["tokens"], r["tokens_int"], r["accuracy_per_task"]):
        t.add_row(name, f"{l:.2f}", str(li), f"{p:.4f}")
    console.print(t)
    s = Table(show_header=False, box=None)
    s.add_row("objective J", f"{r['objective']:.6f}")
    s.add_row("mean accuracy", f"{r['accuracy']:.4f}")
    s.add_row("mean wait E[W]", f"{r['mean_wait']:.4f} s")
    s.add_row("mean system time E[T]", f"{r['mean_system_time']:.4f} s")
    s.add_row("utilization", f"{r['utilization']:.4f}")
    s.add_row(
        "certificate", f"{r['status']} (residual {r['residual']:.2e}, {r['iterations']} iterations)"
    )
    console.print(s)
