"""`jaxopt-tokens tune`: the accuracy weight that meets a mean-latency target."""

from __future__ import annotations

import argparse

import jaxopt_tokens as jt

from ._common import add_workload_options, loaded_workload, positive_float
from ._output import console, emit_json
from ._report import allocation_report
from .solve import print_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="find alpha whose optimal budgets meet a mean system-time target (latency SLO)",
        description="Most accurate allocation whose mean system time E[T] equals the target: "
        "solves for alpha with Newton's method on the implicit derivative.",
    )
    p.add_argument(
        "--target-latency",
        type=positive_float,
        required=True,
        metavar="SECONDS",
        help="target mean system time E[T] in seconds",
    )
    add_workload_options(p)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import jax

    with loaded_workload(args) as w:
        result = jax.jit(jt.tune_alpha)(w, args.target_latency)
        status = jt.TuneStatus(int(result.status))
        report = allocation_report(w.replace(alpha=result.alpha), result.solution, "default")
    report.update(
        target_latency=args.target_latency,
        tuned_alpha=float(result.alpha),
        tune_status=status.name.lower(),
        tune_message=status.message,
        tune_iterations=int(result.iterations),
    )
    if args.format == "json":
        emit_json(report)
    else:
        console().print(
            f"target E[T] = {args.target_latency:g} s  ->  alpha = {float(result.alpha):.9g}  "
            f"({status.name.lower()}: {status.message})",
            highlight=False,
        )
        print_table(report)
    return 0 if status == jt.TuneStatus.CONVERGED else 1
