"""`jaxopt-tokens export`: per-task request parameters for vLLM, SGLang or OpenAI-style APIs."""

from __future__ import annotations

import argparse
import sys
import warnings

from .._deploy.export import (
    DEFAULT_ANSWER_RESERVE,
    EXPORT_FORMATS,
    ROUNDINGS,
    export_policy,
    load_tokens,
    write_policy,
)
from .._errors import InputError
from .._queue.simulate import UnstableQueueWarning
from .._solver.solve import METHODS, solve
from .._status import Status
from ._common import add_force_option, add_workload_options, int_at_least, loaded_workload
from ._output import Outputs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export the optimal budgets as per-task request parameters for a serving engine",
        description="Solve the workload (or read budgets with --tokens) and write, per task type, "
        "the chat-completions request fields that enforce its reasoning budget: vLLM "
        "thinking_token_budget, SGLang custom_params.thinking_budget, OpenAI reasoning_effort + "
        "max_completion_tokens, or a neutral JSON form.",
    )
    p.add_argument(
        "--engine",
        choices=EXPORT_FORMATS,
        default="vllm",
        help="serving engine (default: %(default)s)",
    )
    p.add_argument(
        "-o", "--output", metavar="FILE", help="write the policy here (default: print it)"
    )
    add_force_option(p)
    p.add_argument(
        "--tokens",
        metavar="FILE",
        help="JSON budgets to export instead of solving: a list in task order or a mapping "
        "task -> tokens",
    )
    add_workload_options(p)
    p.add_argument(
        "--solver", choices=METHODS, default="default", help="solver (default: %(default)s)"
    )
    p.add_argument(
        "--answer-reserve",
        type=int_at_least(0),
        default=DEFAULT_ANSWER_RESERVE,
        metavar="N",
        help="tokens kept for the answer; request limit = budget + N (default: %(default)s)",
    )
    p.add_argument(
        "--min-budget",
        type=int_at_least(0),
        default=0,
        metavar="N",
        help="raise positive budgets below N to N (default: %(default)s)",
    )
    p.add_argument(
        "--rounding",
        choices=ROUNDINGS,
        default="integer",
        help="integer budgets: best floor/ceil (integer), ceil or round (default: %(default)s)",
    )
    p.add_argument(
        "--zero-budget",
        choices=("disable", "budget"),
        default="disable",
        help="budget 0: disable thinking via chat_template_kwargs, or send the budget field as 0 "
        "(default: %(default)s)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    outputs = Outputs(args.force)
    target = outputs.file(args.output, "-o") if args.output is not None else None
    try:
        text = _policy_text(args)
        if target is None:
            sys.stdout.write(text)
        else:
            target.write_text(text)
            outputs.commit()
    finally:
        outputs.abort()
    return 0


def _policy_text(args: argparse.Namespace) -> str:
    with loaded_workload(args) as w, warnings.catch_warnings():
        warnings.simplefilter("ignore", UnstableQueueWarning)  # refused below, in one line
        if args.tokens:
            tokens = load_tokens(args.tokens, w)
        else:
            tokens = solve(w, args.solver)
            status = Status(int(tokens.status))
            if status != Status.CONVERGED:
                raise InputError(
                    f"the solver did not converge ({status.name.lower()}: {status.message}); "
                    "nothing exported"
                )
        policy = export_policy(
            w,
            tokens,
            engine=args.engine,
            answer_reserve=args.answer_reserve,
            min_budget=args.min_budget,
            rounding=args.rounding,
            zero_budget=args.zero_budget,
            source=args.workload or "default (Table I)",
        )
    rho = policy["source"]["utilization"]
    if not rho < 1:
        raise InputError(
            f"the exported budgets load the server to utilization {rho:.4g} >= 1: the queue "
            "would grow without bound; nothing exported"
        )
    return write_policy(policy)
