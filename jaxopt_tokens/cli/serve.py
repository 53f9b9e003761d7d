"""`jaxopt-tokens serve`: the live budget gateway in front of a vLLM, SGLang or OpenAI-compatible
server (python: `jaxopt_tokens.gateway`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from typing import Any

from .. import InputError
from ..traffic import TRACE_FORMATS
from ._common import int_at_least, path_arg, positive_float, random_seed
from ._output import console, emit_json

#: flags that take a list or table in TOML and a compact form on the command line
_COMPOUND = {"step_time", "models", "rules", "passthrough", "allow_fields"}
_COMPOUND_HELP = {
    "step_time": "TAU0,TAU1 seconds of the batching server's step",
    "models": "MODEL=TASK,... (a model name's task type)",
    "rules": "TASK=REGEX (repeat; a prompt rule, searched in the last user message)",
    "passthrough": "PATH,... GET routes forwarded to the engine unchanged",
    "allow_fields": "FIELD,... body fields forwarded beyond the engine's allow-list",
}


def _kinds() -> dict[str, str]:
    """Each configuration key's kind for its flag: bool, int, float, str or compound (read
    from the configuration's type hints, the one source of each setting's type)."""
    import typing

    from .. import gateway

    out = {}
    for name, hint in typing.get_type_hints(gateway.GatewayConfig).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        base = args[0] if len(args) == 1 else hint
        out[name] = (
            "compound"
            if name in _COMPOUND
            else {bool: "bool", int: "int", float: "float", str: "str"}[base]
        )
    return out


def _attribute_docs() -> dict[str, str]:
    """Each configuration key's description, from `GatewayConfig`'s `Attributes:` section
    (the one place each setting is documented)."""
    import re

    from .. import gateway

    text = (gateway.GatewayConfig.__doc__ or "").split("Attributes:", 1)[-1]
    docs: dict[str, str] = {}
    current: list[str] = []
    for line in text.splitlines():
        m = re.match(r"^ {8}([a-z_, ]+): (.*)$", line)
        if m:
            current = [n.strip() for n in m.group(1).split(",")]
            for name in current:
                docs[name] = m.group(2).strip()
        elif line.startswith(" " * 12) and current:
            for name in current:
                docs[name] += " " + line.strip()
    return docs


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return ""
    if value is None or value == () or value == {}:
        return ""
    shown = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
    return f" (default: {shown})".replace("%", "%%")


def register(sub: argparse._SubParsersAction) -> None:
    from .. import gateway

    p = sub.add_parser(
        "serve",
        help="run the budget gateway: an OpenAI-compatible proxy that re-solves the budgets "
        "from the load it sees",
        description="Start an OpenAI-compatible HTTP gateway in front of an engine (--upstream): "
        "each request gets the reasoning budget of its task type, and every --interval seconds "
        "the budgets are re-solved from the measured arrival rate, task shares and service "
        "times. Every key of the TOML --config is also a flag (dashes for underscores); flags "
        "win. Needs the 'serve' extra (pip install 'jaxopt_tokens[serve]').",
    )
    p.add_argument("--config", type=path_arg, metavar="serve.toml", help="the TOML configuration")
    kinds = _kinds()
    docs = _attribute_docs()
    for f in dataclasses.fields(gateway.GatewayConfig):
        flag = "--" + f.name.replace("_", "-")
        described = docs.get(f.name, "").replace("%", "%%") + _default_text(f)
        if f.name == "upstream":
            p.add_argument(
                flag, metavar="URL", default=None, help="the engine, e.g. http://127.0.0.1:8000"
            )
        elif f.name in _COMPOUND:
            p.add_argument(
                flag,
                metavar=f.name.upper(),
                action="append" if f.name == "rules" else None,
                help=f"{_COMPOUND_HELP[f.name]}; {described}",
            )
        elif kinds[f.name] == "bool":
            p.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=described
            )
        else:
            p.add_argument(
                flag, metavar=f.name.upper().replace("_", "-"), default=None, help=described
            )
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    p.add_argument(
        "--check",
        action="store_true",
        help="check the configuration, solve the starting policy, print it as JSON and exit "
        "(no server is started)",
    )
    dry = p.add_argument_group(
        "dry run",
        "replay a trace through the gateway's own control loop in simulated time, without "
        "HTTP or an engine (the engine is simulated: the configured server). Example: "
        "jaxopt-tokens serve --config serve.toml --dry-run trace.csv --dry-run-minutes 10",
    )
    dry.add_argument("--dry-run", type=path_arg, metavar="TRACE", help="the trace to replay")
    dry.add_argument("--trace-format", choices=("auto", *TRACE_FORMATS), default="auto")
    dry.add_argument(
        "--dry-run-minutes",
        type=positive_float,
        metavar="M",
        help="replay the trace's first M minutes only",
    )
    dry.add_argument(
        "--reasoning",
        type=int_at_least(0),
        default=2000,
        metavar="N",
        help="reasoning tokens a request generates when no budget cuts it (2000)",
    )
    dry.add_argument("--seed", type=random_seed, default=0, help="the seed of the task draw")
    dry.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=run)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration keys given as flags, typed as the configuration's fields."""
    from .. import gateway

    out: dict[str, Any] = {}
    kinds = _kinds()
    for f in dataclasses.fields(gateway.GatewayConfig):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = kinds[f.name]
        if f.name in ("passthrough", "allow_fields"):
            out[f.name] = [x for x in value.split(",") if x]
        elif f.name == "step_time":
            try:
                out[f.name] = [float(x) for x in value.split(",")]
            except ValueError:
                raise InputError(f"{flag}: expected TAU0,TAU1 seconds, got {value!r}") from None
        elif f.name == "models":
            pairs = [p.partition("=") for p in value.split(",")]
            if any(not sep or not a or not b for a, sep, b in pairs):
                raise InputError(f"{flag}: expected MODEL=TASK,..., got {value!r}")
            out[f.name] = {a: b for a, _, b in pairs}
        elif f.name == "rules":
            rules = []
            for text in value:
                task, sep, pattern = text.partition("=")
                if not sep or not task:
                    raise InputError(f"{flag}: expected TASK=REGEX, got {text!r}")
                rules.append({"task": task, "pattern": pattern})
            out[f.name] = rules
        elif kind in ("bool", "str"):
            out[f.name] = value
        else:
            number = int if kind == "int" else float
            try:
                out[f.name] = number(value)
            except ValueError:
                raise InputError(f"{flag}: expected a number, got {value!r}") from None
    return out


def run(args: argparse.Namespace) -> int:
    from .. import gateway

    flags = overrides(args)
    if args.dry_run is not None and "upstream" not in flags:
        flags["upstream"] = "http://127.0.0.1:1"  # not contacted: the engine is simulated
    if args.config is not None:
        config = gateway.load_config(args.config, flags)
    else:
        config = gateway.config_from_dict(flags, "flags")
    logger = logging.getLogger("jaxopt_tokens.gateway")
    if not logger.handlers:  # one JSON line per event, on standard error
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(getattr(logging, args.log_level.upper()))
    if args.dry_run is not None:
        return _dry_run(args, config)
    # the address is checked before the start-up solve, not after it (bound unless --check)
    gateway.check_address(config, bind=not args.check)
    app = gateway.create_app(config)
    if args.check:
        controller = app.state.gateway.controller
        state = controller.state
        said = {"reason": state.reason, "overloaded": state.overloaded}
        if controller.learned is not None:
            said["budgets_by_state"] = {
                task: [state.budget(task, s) for s in range(controller.learned.states + 1)]
                for task in controller.task_names
            }
        emit_json({**state.policy, "gateway": said})
        return 0
    logging.getLogger("jaxopt_tokens.gateway").info(
        json.dumps(
            {
                "event": "start",
                "listen": f"{config.host}:{config.port}",
                "upstream": gateway.redact(config.upstream),
            }
        )
    )
    gateway.run(app, config)
    return 0


def _dry_run(args: argparse.Namespace, config) -> int:
    """`--dry-run TRACE`: the control loop on the trace in simulated time; a summary and
    every control step (table on standard error, or JSON on standard output)."""
    import math

    from .. import gateway
    from ..traffic import read_trace

    trace = read_trace(args.dry_run, args.trace_format)
    if args.dry_run_minutes is not None:
        trace = trace.between(0.0, args.dry_run_minutes * 60.0)
    result = gateway.dry_run(config, trace, reasoning=args.reasoning, seed=args.seed)

    def clean(x):
        return None if isinstance(x, float) and not math.isfinite(x) else x

    report = {
        "trace": str(args.dry_run),
        "summary": {k: clean(v) for k, v in result.summary.items()},
        "steps": [{k: clean(v) for k, v in s.items()} for s in result.steps],
    }
    if args.format == "json":
        emit_json(report)
        return 0
    from rich.table import Table

    con = console(stderr=True)
    t = Table(title=f"dry run of {args.dry_run}: control steps")
    for col in ("time (s)", "action", "measured rate", "requests", "mean latency", "p95", "J"):
        t.add_column(col, justify="right")
    t.add_column("budgets in force after the step")

    def num(x, fmt="{:.3g}"):
        return "-" if x is None else fmt.format(x)

    for s in result.steps:
        budgets = " ".join(f"{k}={v:.0f}" for k, v in s["budgets"].items())
        t.add_row(
            f"{s['time']:.0f}",
            s["action"],
            num(s["measured_rate"]),
            str(s["requests"]),
            num(s["mean_latency"]),
            num(s["p95_latency"]),
            num(s["J"]),
            budgets,
        )
    con.print(t)
    summary = Table(title="summary")
    for k in report["summary"]:
        summary.add_column(k.replace("_", " "), justify="right")
    summary.add_row(*(num(v, "{:.4g}") for v in report["summary"].values()))
    con.print(summary)
    return 0
