"""`jaxopt-tokens verify`: probe an engine with a policy's request fields and report, per task,
whether it kept the reasoning budget it was sent (python: the gateway's `judge`)."""

from __future__ import annotations

import argparse
import json

import jaxopt_tokens as jt

from .. import InputError
from ..deploy import EXPORT_FORMATS
from ._common import add_workload_options, int_at_least, loaded_workload, path_arg, positive_float
from ._output import console, emit_json

#: engines whose budget is a token count (the OpenAI effort levels bound no count)
_COUNTED = tuple(e for e in EXPORT_FORMATS if e not in ("openai", "json"))
DEFAULT_PROMPT = (
    "Think it through at length, checking every step twice, before you answer: how many "
    "prime numbers are there below 1000, and what is their sum?"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="check that an engine keeps the budgets: probe requests per task, reasoning "
        "tokens against the budget sent",
        description="Send a few probe requests per task to an engine (--upstream) with the "
        "request fields of a policy (--policy, written by `export`; or the optimum of the "
        "workload), read how many reasoning tokens each answer used (usage's "
        "reasoning_tokens, or estimated from the reasoning text where the engine does not "
        "count them) and report per task whether the engine kept the budget. A task whose "
        "answers stopped well below the budget is inconclusive: the probe never reached "
        "the limit (use a prompt that makes the model reason longer). Exit status 1 when "
        "any task's budget was exceeded. Example: jaxopt-tokens verify --upstream "
        "http://127.0.0.1:8000 --engine vllm --policy policy.json",
    )
    p.add_argument("--upstream", required=True, metavar="URL", help="the engine's base URL")
    p.add_argument("--engine", choices=_COUNTED, help="default: the policy file's engine")
    p.add_argument("--policy", type=path_arg, metavar="POLICY.json", help="from `export`")
    add_workload_options(p)
    p.add_argument("--model", metavar="NAME", help="the model to ask (default: the first listed)")
    p.add_argument("--probes", type=int_at_least(1), default=2, metavar="N", help="per task (2)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the probe's user message")
    p.add_argument(
        "--tolerance",
        type=int_at_least(0),
        default=8,
        metavar="T",
        help="tokens above the budget still counted as kept (8)",
    )
    p.add_argument(
        "--api-key",
        metavar="KEY",
        help="the engine's key (env:NAME reads the environment variable NAME)",
    )
    p.add_argument("--timeout", type=positive_float, default=300.0, metavar="S")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=run)


def _policy(args: argparse.Namespace) -> tuple[str, dict]:
    """(engine, policy) from the file or solved from the workload."""
    if args.policy is not None:
        try:
            policy = json.loads(jt.deploy.read_text(args.policy, "policy"))
        except ValueError as e:
            raise InputError(f"--policy: {args.policy} is not valid JSON ({e})") from None
        tasks = policy.get("tasks") if isinstance(policy, dict) else None
        if not isinstance(tasks, dict) or not tasks:
            raise InputError(f"--policy: {args.policy} has no 'tasks' (write it with export)")
        engine = args.engine or policy.get("engine")
        if engine not in _COUNTED:
            raise InputError(
                f"--policy: engine {engine!r}: verify needs one of {', '.join(_COUNTED)}"
            )
        if args.engine is not None and policy.get("engine") not in (None, args.engine):
            raise InputError(
                f"--engine: {args.engine}, but the policy was exported for {policy['engine']}"
            )
        return engine, policy
    engine = args.engine or "vllm"
    with loaded_workload(args) as w:
        return engine, jt.deploy.export_policy(w, jt.solve(w), engine=engine)


def run(args: argparse.Namespace) -> int:
    try:
        import httpx
    except ImportError:
        raise InputError("verify needs httpx: pip install 'jaxopt_tokens[serve]'") from None
    from ..gateway import judge, reasoning_text_chars, usage_counts

    engine, policy = _policy(args)
    from ..gateway import read_secret

    key = read_secret("--api-key", args.api_key, min_length=1)
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    base = args.upstream.rstrip("/")
    report: dict[str, dict] = {}
    try:
        with httpx.Client(timeout=args.timeout, headers=headers) as client:
            model = args.model or _first_model(client, base)
            for task, entry in policy["tasks"].items():
                request = entry.get("request") if isinstance(entry, dict) else None
                budget = entry.get("budget") if isinstance(entry, dict) else None
                if not isinstance(request, dict):
                    raise InputError(f"--policy: task {task!r} has no request fields")
                if budget is None:  # no limit: nothing to verify
                    report[task] = {"budget": None, "verdict": "no limit"}
                    continue
                results = []
                for _ in range(args.probes):
                    body = {
                        "model": model,
                        "messages": [{"role": "user", "content": args.prompt}],
                        **request,
                    }
                    r = client.post(base + "/v1/chat/completions", json=body)
                    if r.status_code != 200:
                        raise InputError(
                            f"task {task}: the engine answered HTTP {r.status_code} to the "
                            f"policy's fields ({_message(r)})"
                        )
                    payload = r.json()
                    usage = usage_counts(payload)
                    results.append(
                        judge(
                            float(budget),
                            None if usage is None else usage[1],
                            reasoning_text_chars(payload),
                            args.tolerance,
                        )
                    )
                report[task] = _summary(float(budget), results, args.tolerance)
    except httpx.HTTPError as e:
        raise InputError(f"--upstream: {type(e).__name__} talking to the engine") from None
    out = {"upstream": base, "engine": engine, "model": model, "tasks": report}
    if args.format == "json":
        emit_json(out)
    else:
        _print(out)
    return 1 if any(t["verdict"] == "exceeded" for t in report.values()) else 0


def _first_model(client, base: str) -> str:
    r = client.get(base + "/v1/models")
    data = r.json().get("data") if r.status_code == 200 else None
    if not data or not isinstance(data[0], dict) or "id" not in data[0]:
        raise InputError("--model: the engine lists no model at /v1/models; name one")
    return str(data[0]["id"])


def _message(r) -> str:
    try:
        error = r.json().get("error")
        text = error.get("message") if isinstance(error, dict) else None
    except ValueError:
        text = None
    return " ".join(str(text or r.text[:200]).split())


def _summary(budget: float, results: list, tolerance: int) -> dict:
    """One task's verdict over its probes: exceeded (any violation), kept (some answer
    reached the budget), inconclusive (every answer stopped well short of it), or
    unmeasured (no reasoning count or text)."""
    used = [u for u, _, v in results if v != "unmeasured"]
    verdicts = [v for _, _, v in results]
    if "violation" in verdicts:
        verdict = "exceeded"
    elif not used:
        verdict = "unmeasured"
    elif budget == 0 or max(used) >= 0.9 * budget - tolerance:
        verdict = "kept"
    else:
        verdict = "inconclusive"
    return {
        "budget": budget,
        "probes": len(results),
        "reasoning_tokens": used,
        "estimated": any(e for _, e, _ in results),
        "verdict": verdict,
    }


def _print(out: dict) -> None:
    from rich.table import Table

    t = Table(title=f"budgets on {out['upstream']} ({out['engine']}, model {out['model']})")
    for col in ("task", "budget", "reasoning tokens", "verdict"):
        t.add_column(col, justify="right" if col != "task" else "left")
    for task, r in out["tasks"].items():
        used = ", ".join(str(u) for u in r.get("reasoning_tokens", [])) or "-"
        if r.get("estimated"):
            used += " (estimated from text)"
        budget = "-" if r["budget"] is None else f"{r['budget']:.0f}"
        t.add_row(task, budget, used, r["verdict"])
    console(stderr=True).print(t)
