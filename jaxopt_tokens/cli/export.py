"""`jaxopt-tokens export`: per-task request parameters for vLLM, SGLang or OpenAI-style APIs."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

import jaxopt_tokens as jt

from .. import SOLVER_NAMES, InputError
from ..deploy import DEFAULT_ANSWER_RESERVE, EXPORT_FORMATS, ROUNDINGS, SGLANG_PROCESSORS
from ._common import add_force_option, add_workload_options, int_at_least, loaded_workload
from ._output import Outputs, working
from ._report import solved


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
        "--solver", choices=SOLVER_NAMES, default="default", help="solver (default: %(default)s)"
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
    p.add_argument(
        "--sglang-processor",
        choices=tuple(SGLANG_PROCESSORS),
        default="qwen3",
        help="sglang: the thinking-budget logit processor sent with each request (the server "
        "needs --enable-custom-logit-processor), or 'strict' for none (the server needs "
        "--enable-strict-thinking) (default: %(default)s)",
    )
    p.add_argument(
        "--uncertainty",
        metavar="FIT.json",
        help="standard errors of the budgets: the JSON that `jaxopt-tokens fit --format json` "
        "prints (optimal_tokens_se per task); recorded per task as tokens_se",
    )
    p.add_argument(
        "--conservative",
        type=_probability,
        metavar="Q",
        help="export the Q-quantile of each budget, tokens + z_Q * SE (needs --uncertainty; "
        "Q < 0.5 thinks less than the estimate)",
    )
    p.set_defaults(func=run)


def _probability(text: str) -> float:
    try:
        q = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a probability in (0, 1), got {text!r}"
        ) from None
    if not 0 < q < 1:
        raise argparse.ArgumentTypeError(f"expected a probability in (0, 1), got {text!r}")
    return q


def load_uncertainty(path: str, tokens, task_names) -> dict[str, float]:
    """Budget standard errors per task from `fit --format json` output, checked against the
    budgets they are for: a file fitted at other settings (arrival rate, alpha, another
    measurement file) would attach the wrong uncertainty, so it is refused."""
    text = jt.deploy.read_text(path, "uncertainty JSON")
    try:
        data = json.loads(text)
        rows = {}
        for row in data["tasks"]:
            if row["task"] in rows:
                raise InputError(
                    f"--uncertainty: {path}: task {row['task']!r} appears twice; keep one row"
                )
            rows[row["task"]] = row
        se = {name: rows[name]["optimal_tokens_se"] for name in task_names}
        fitted = {name: rows[name]["optimal_tokens"] for name in task_names}
    except json.JSONDecodeError as e:
        raise InputError(
            f"--uncertainty: {path} is not valid JSON (line {e.lineno}: {e.msg})"
        ) from None
    except (KeyError, TypeError) as e:
        raise InputError(
            f"--uncertainty: {path} is not the JSON of `jaxopt-tokens fit --format json` for "
            f"these tasks (missing {e})"
        ) from None
    for name, x in zip(task_names, tokens):
        f = fitted[name]
        if not isinstance(f, (int, float)) or abs(float(f) - float(x)) > 0.5 + 1e-3 * abs(float(x)):
            raise InputError(
                f"--uncertainty: {path}: task {name!r} was fitted with optimal tokens {f!r}, but "
                f"the budget exported is {float(x):.6g}: the standard errors belong to another "
                "workload (fit and export at the same arrival rate, alpha and max tokens)"
            )
    return se


def run(args: argparse.Namespace) -> int:
    outputs = Outputs(args.force)
    target = outputs.file(args.output, "-o") if args.output is not None else None
    with outputs:  # removes what was staged if anything fails, naming a failed write
        text = _policy_text(args)
        if target is None:
            working.stop()
            sys.stdout.write(text)
        else:
            target.write_text(text)
            outputs.commit()
    return 0


def _policy_text(args: argparse.Namespace) -> str:
    with loaded_workload(args) as w, warnings.catch_warnings():
        warnings.simplefilter("ignore", jt.UnstableQueueWarning)  # refused below, in one line
        if args.tokens:
            tokens = jt.deploy.load_tokens(args.tokens, w)
        else:
            r = solved(w, args.solver)  # one program, loaded ahead of time when cached
            tokens = jt.Solution(
                **{k: r[k] for k in ("tokens", "objective", "status", "residual", "iterations")},
                stats=r["stats"],
            )
            status = jt.Status(int(tokens.status))
            if status != jt.Status.CONVERGED:
                raise InputError(
                    f"the solver did not converge ({status.name.lower()}: {status.message}); "
                    "nothing exported"
                )
        uncertainty = None
        if args.uncertainty is not None:
            budgets = jt.deploy.tokens_from_data(tokens, w)
            uncertainty = load_uncertainty(args.uncertainty, budgets, w.task_names)
        elif args.conservative is not None:
            raise InputError("--conservative needs --uncertainty (the budgets' standard errors)")
        policy = jt.deploy.export_policy(
            w,
            tokens,
            engine=args.engine,
            answer_reserve=args.answer_reserve,
            min_budget=args.min_budget,
            rounding=args.rounding,
            zero_budget=args.zero_budget,
            sglang_processor=args.sglang_processor,
            uncertainty=uncertainty,
            conservative=args.conservative,
            source=args.workload or "default (Table I)",
        )
    rho = policy["source"]["utilization"]
    if not rho < 1:
        raise InputError(
            f"the exported budgets load the server to utilization {rho:.4g} >= 1: the queue "
            "would grow without bound; nothing exported"
        )
    return jt.deploy.write_policy(policy)
