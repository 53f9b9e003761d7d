"""`jaxopt-tokens solve`: optimal budgets for a workload, as a table or JSON."""

from __future__ import annotations

import argparse

from rich.table import Table

import jaxopt_tokens as jt

from .. import SOLVER_NAMES, InputError
from ._common import (
    add_server_options,
    add_workload_options,
    loaded_workload,
    refuse_unstable_server,
    server_from_args,
)
from ._output import console, emit_json
from ._report import server_report, solved_report


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "solve",
        help="optimal per-task reasoning-token budgets with a convergence certificate",
        description="Solve problem (9) of the queueing paper: per-task budgets that maximise "
        "alpha * mean accuracy - mean system time of the M/G/1 server.",
    )
    add_workload_options(p)
    p.add_argument(
        "--solver", choices=SOLVER_NAMES, default="default", help="solver (default: %(default)s)"
    )
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--float32", action="store_true", help="solve in float32 (default float64)")
    add_server_options(p, replicas=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    server = server_from_args(args)
    if server is not None and args.solver != "default":
        raise InputError("--solver: a batching server has its own solver; leave --solver out")
    with loaded_workload(args, float32=args.float32) as w:
        if server is None:
            report = solved_report(w, args.solver)
        else:
            refuse_unstable_server(server, w)
            sol = jt.solve_latency(w, server)
            report = server_report(w, sol, server)
    if args.format == "json":
        emit_json(report)
    elif server is None:
        print_table(report)
    else:
        print_server_table(report)
    return 0 if report["status"] == jt.Status.CONVERGED.name.lower() else 1


def print_server_table(r: dict) -> None:
    s = r["server"]
    con = console()
    t = Table(
        title="Optimal reasoning-token budgets on a continuously batching server  "
        f"(lambda={r['arrival_rate']:g}/s, alpha={r['alpha']:g}, step={s['step_time'][0]:g} + "
        f"{s['step_time'][1]:g} n s, max batch={s['max_batch'] or 'unlimited'}, "
        f"replicas={s['replicas']})"
    )
    for col in ("task", "l* (tokens)", "integer", "accuracy", "E[T_k] (s)"):
        t.add_column(col, justify="left" if col == "task" else "right")
    for name, l, li, p, et in zip(
        r["tasks"], r["tokens"], r["tokens_int"], r["accuracy_per_task"], r["system_time_per_task"]
    ):
        t.add_row(name, f"{l:.2f}", str(li), f"{p:.4f}", "inf" if et is None else f"{et:.3f}")
    con.print(t)
    u = Table(show_header=False, box=None)

    def num(x, fmt):
        return "inf" if x is None else format(x, fmt)

    u.add_row("objective J", num(r["objective"], ".6f"))
    u.add_row("mean accuracy", num(r["accuracy"], ".4f"))
    u.add_row("mean system time E[T]", num(r["mean_system_time"], ".4f") + " s")
    u.add_row("waiting for a batch slot", num(r["queue_wait"], ".4f") + " s")
    u.add_row("mean batch size", num(r["mean_batch"], ".2f"))
    u.add_row("load (arrival rate / capacity)", num(r["load"], ".4f"))
    u.add_row(
        "certificate", f"{r['status']} (residual {r['residual']:.2e}, {r['iterations']} iterations)"
    )
    con.print(u)


def print_table(r: dict) -> None:

    con = console()
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
    con.print(t)
    s = Table(show_header=False, box=None)
    s.add_row("objective J", f"{r['objective']:.6f}")
    s.add_row("mean accuracy", f"{r['accuracy']:.4f}")
    s.add_row("mean wait E[W]", f"{r['mean_wait']:.4f} s")
    s.add_row("mean system time E[T]", f"{r['mean_system_time']:.4f} s")
    s.add_row("utilization", f"{r['utilization']:.4f}")
    s.add_row(
        "certificate", f"{r['status']} (residual {r['residual']:.2e}, {r['iterations']} iterations)"
    )
    con.print(s)
