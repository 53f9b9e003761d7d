"""Export per-task reasoning-token budgets as request parameters for serving engines.

`export_policy(workload, tokens, engine=...)` turns budgets (a `Solution`, a sequence in
task order, or a mapping task name -> tokens) into a JSON-ready policy: for each task type,
the fields to put in a chat-completions request so that the engine enforces the budget.

Budget pipeline (in this order, per task):

1. **Uncertainty.** With `uncertainty` (standard errors of the budgets, e.g. from
   `budget_uncertainty`) every task records `tokens_se`; with `conservative=q` the budget
   exported is the lower quantile `tokens + z_q * se` (clipped at 0) instead of `tokens`.
2. **Integer budget.** `rounding="integer"` (default) uses `integer_budgets` (the best
   floor/ceil combination of eq. (39) for up to 16 tasks, rounding + local search above);
   `"ceil"` rounds up (with a 1e-6 tolerance, so 340.0000001 -> 340); `"round"` rounds to
   nearest. All keep budgets in [0, floor(max_tokens)].
3. **Minimum budget.** A positive budget below `min_budget` is raised to `min_budget`
   (a budget of a few tokens only truncates the thinking block). Zero stays zero.
4. **Answer reserve.** Reasoning tokens count against the request's output limit, so the
   request's limit is `budget + answer_reserve` and the budget is capped at
   `floor(workload.max_tokens) - answer_reserve`; the request limit therefore never exceeds
   the workload's `max_tokens`. The reserve cap wins over `min_budget`.
5. **Zero.** A budget of 0 means "do not think". With `zero_budget="disable"` (default) it
   maps to the chat-template switch `chat_template_kwargs: {"enable_thinking": false}`
   (Qwen3-style hybrid models, on vLLM and SGLang; `"enable_thinking": false` in the neutral
   format, `reasoning_effort: "none"` for `"openai"`) and no budget field is sent; with
   `zero_budget="budget"` the budget field is sent as 0 (both engines force the end of the
   thinking block at once; SGLang's logit processor lets one newline through first).
6. **Unlimited.** A task whose tokens are `None` or `inf` gets no thinking limit: vLLM
   `thinking_token_budget: -1`, SGLang `thinking_budget: -1` (both engines read a negative
   value as "no limit"), effort `"high"`, neutral `thinking_budget: null`; its request limit
   is `floor(max_tokens)`, and the metadata counts it at that limit.

Each task entry records the continuous tokens, the exported `budget` and which clamps
(`"min_budget"`, `"answer_reserve"`, `"max_tokens"`) changed it.

Formats and the body fields of an OpenAI-compatible `/v1/chat/completions` request they
emit (with the `openai` Python client, fields the client does not know go in `extra_body`;
see `openai_client_kwargs`):

- `"vllm"`: `max_completion_tokens`, `thinking_token_budget`. The server needs a reasoning
  parser (`--reasoning-parser qwen3`); `--reasoning-config` is optional (it overrides the
  start/end strings that the parser supplies). Without a parser vLLM rejects the request.
- `"sglang"`: `max_completion_tokens`, `custom_params: {"thinking_budget": B}` and, with
  `sglang_processor="qwen3"` (default) or `"deepseek-r1"`, `custom_logit_processor`: the
  serialised reference to SGLang's `Qwen3ThinkingBudgetLogitProcessor` /
  `DeepSeekR1ThinkingBudgetLogitProcessor`; the server must run with
  `--enable-custom-logit-processor` (without it SGLang rejects the request). With
  `sglang_processor="strict"` no processor is sent and the budget is enforced by the
  grammar backend, for a server started with `--enable-strict-thinking` and
  `--reasoning-parser`.
- `"openai"`: `max_completion_tokens` and `reasoning_effort`, chosen by token bands
  (`effort_bounds`, default `{"low": 1024, "medium": 8192}`: the first level whose upper
  bound is >= the budget, `"high"` above; 0 -> `"none"`, or `"minimal"` with
  `zero_budget="budget"`). Only `max_completion_tokens` caps tokens: OpenAI does not publish
  a token count per effort level, and vLLM and SGLang read the effort only as
  `enable_thinking = (effort != "none")` plus a chat-template variable (templates that use
  it, e.g. gpt-oss, honour the bands; Qwen3's does not).
- `"dynamo"` (NVIDIA Dynamo's OpenAI frontend): `max_completion_tokens` and the root-level
  `thinking_token_budget` (an unsigned integer: a task without a limit sends none), which
  the frontend forwards to vLLM's `thinking_token_budget` or SGLang's thinking budget.
  Frontends older than the field answer HTTP 400 to it (they refuse unknown fields).
- `"llamacpp"` (llama.cpp's `llama-server`, and servers built on it): `max_completion_tokens`
  and the budget under both names the server has read, `thinking_budget_tokens` and
  `reasoning_budget_tokens` (-1: no limit); the server enforces it only when the model's
  chat template has thinking tags, and older builds only when the server runs with
  `--reasoning-budget -1` (the default).
- `"json"`: engine-neutral `max_tokens`, `thinking_budget` (or `enable_thinking: false`).

What each engine accepts was read from its own request models and sources (the files and
versions are listed on the docs page *Fitting and export*). The request bodies are checked in
the tests against pinned copies of these request models' fields (`tests/engine_schemas.py`),
against SGLang's own pydantic `ChatCompletionRequest`, and sent with the real `openai` client
to a loopback server.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from statistics import NormalDist
from typing import Any

import jax.numpy as jnp
import numpy as np

from .._choices import (
    DEFAULT_ANSWER_RESERVE,
    DEFAULT_EFFORT_BOUNDS,
    EXPORT_FORMATS,
    ROUNDINGS,
    SGLANG_PROCESSORS,
)
from .._errors import InputError, UnstableQueueWarning
from .._files import read_text
from .._integer import integer_budgets
from .._objective import mean_system_time, objective, utilization
from .._programs import call
from .._solver.solution import Solution
from .._status import Status
from .._version import __version__
from .._workload import Workload

__all__ = [
    "export_policy",
    "write_policy",
    "load_tokens",
    "tokens_from_data",
    "openai_client_kwargs",
    "EXPORT_FORMATS",
    "DEFAULT_ANSWER_RESERVE",
    "DEFAULT_EFFORT_BOUNDS",
    "SGLANG_PROCESSORS",
]

ZERO_BUDGET = ("disable", "budget")
TOP_EFFORT = "high"
#: `reasoning_effort` for a zero budget: thinking off ("disable"), or the lowest level
ZERO_EFFORT = {"disable": "none", "budget": "minimal"}
_DISABLE = {"chat_template_kwargs": {"enable_thinking": False}}
# Fields the `openai` client takes as keyword arguments; the rest go in `extra_body`.
_OPENAI_CLIENT_FIELDS = frozenset({"max_tokens", "max_completion_tokens", "reasoning_effort"})


def _sglang_processor_reference(module: str, name: str) -> str:
    """The `custom_logit_processor` string SGLang's `CustomLogitProcessor.to_str()` makes for
    an importable processor class: JSON `{"callable": hex}` of the class pickled by reference
    (pickle protocol 4: PROTO, FRAME, module and qualified name, STACK_GLOBAL), which the
    server loads with `dill.loads(bytes.fromhex(...))`."""
    body = b""
    for part in (module.encode(), name.encode()):
        body += b"\x8c" + bytes([len(part)]) + part + b"\x94"  # SHORT_BINUNICODE, MEMOIZE
    body += b"\x93\x94."  # STACK_GLOBAL, MEMOIZE, STOP
    payload = b"\x80\x04\x95" + len(body).to_bytes(8, "little") + body
    return json.dumps({"callable": payload.hex()})


def _int_option(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        else:
            raise InputError(f"{field} must be a non-negative integer, got {value!r}")
    if value < 0:
        raise InputError(f"{field} must be a non-negative integer, got {value}")
    return int(value)


def tokens_from_data(data: Any, workload: Workload) -> np.ndarray:
    """Continuous budgets in task order from a list (task order) or a mapping name -> tokens.

    `None` or `inf` for a task means no thinking limit (returned as `inf`). Raises
    `InputError` naming the field (`tokens`, `tokens[<task>]`) for a wrong length, unknown or
    missing task names, non-numbers, NaN or negative values.

    Args:
        data: a list in task order, or a mapping task -> tokens.
        workload: the workload whose tasks the budgets are for.

    Returns:
        The budgets in task order (`inf`: no limit).
    """
    names = workload.task_names
    if isinstance(data, Solution):
        data = np.asarray(data.tokens)
    if isinstance(data, Mapping):
        unknown = [k for k in data if k not in names]
        if unknown:
            raise InputError(
                f"tokens: unknown task name(s) {unknown}; the workload's tasks are {list(names)}"
            )
        missing = [n for n in names if n not in data]
        if missing:
            raise InputError(f"tokens: missing task(s) {missing}")
        values = [data[n] for n in names]
    else:
        if isinstance(data, (str, bytes)):
            raise InputError("tokens must be a list of numbers or a mapping task -> tokens")
        try:
            arr = (
                np.asarray(data)
                if hasattr(data, "__array__")
                else np.asarray(list(data), dtype=object)
            )
        except Exception:  # noqa: BLE001 - anything unreadable is bad input
            raise InputError(
                "tokens must be a list of numbers or a mapping task -> tokens"
            ) from None
        if arr.ndim != 1:
            raise InputError(
                "tokens must be one-dimensional (one value per task) or a mapping task -> "
                f"tokens; got shape {arr.shape}"
            )
        values = list(arr)
        if len(values) != len(names):
            raise InputError(
                f"tokens has {len(values)} values but the workload has {len(names)} tasks "
                f"{list(names)}"
            )
    out = np.empty(len(names), dtype=np.float64)
    for k, (name, v) in enumerate(zip(names, values)):
        if v is None:  # no thinking limit
            out[k] = np.inf
            continue
        if isinstance(v, (bool, np.bool_)):
            raise InputError(f"tokens[{name}] must be a number, got {v!r}")
        if not isinstance(v, (int, float, np.integer, np.floating)):
            try:
                v = float(np.asarray(v))  # 0-d arrays
            except Exception:  # noqa: BLE001
                raise InputError(f"tokens[{name}] must be a number, got {v!r}") from None
        try:
            v = float(v)
        except OverflowError:
            raise InputError(f"tokens[{name}] is too large for a float") from None
        if math.isnan(v) or v == -math.inf:
            raise InputError(
                f"tokens[{name}] must be a number >= 0 (or inf / null: no limit), got {v}"
            )
        if v < 0:
            raise InputError(f"tokens[{name}] must be >= 0, got {v:g}")
        out[k] = v
    return out


def load_tokens(path: str | Path, workload: Workload) -> np.ndarray:
    """Budgets from a JSON file: a list in task order, a mapping task -> tokens, or an object
    with a `tokens` entry holding either (e.g. the output of `jaxopt-tokens solve --format
    json`).

    Args:
        path: the JSON file.
        workload: the workload whose tasks the budgets are for.

    Returns:
        The budgets in task order (`inf`: no limit).
    """
    text = read_text(path, "tokens JSON")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"--tokens: {path} is not valid JSON (line {e.lineno}: {e.msg})") from None
    except (OverflowError, RecursionError, ValueError) as e:
        raise InputError(f"--tokens: {path}: {e}") from None
    if isinstance(data, Mapping) and "tokens" in data and not set(data) <= set(workload.task_names):
        status = data.get("status", "converged")
        if status != "converged":
            raise InputError(
                f"--tokens: {path} holds a solve that did not converge (status {status!r}); "
                "refusing to export it"
            )
        data = data["tokens"]
    return tokens_from_data(data, workload)


def _figures(budgets, w: Workload) -> dict[str, Any]:
    """The exported budgets' load, objective and mean system time (one program)."""
    return {
        "utilization": utilization(budgets, w),
        "objective": objective(budgets, w),
        "mean_system_time": mean_system_time(budgets, w),
    }


def _integer(tokens: np.ndarray, w: Workload, rounding: str) -> np.ndarray:
    """Integer budgets in [0, floor(max_tokens)]; unlimited (inf) tasks come back as the cap."""
    cap = math.floor(float(np.asarray(w.max_tokens)))
    finite = np.minimum(tokens, cap)
    if rounding == "integer":
        x = np.asarray(
            call("integer-budgets", integer_budgets, jnp.asarray(finite, dtype=w.dtype), w),
            dtype=np.float64,
        )
    elif rounding == "ceil":
        x = np.ceil(finite - 1e-6)
    else:
        x = np.round(finite)
    return np.clip(x, 0, cap).astype(np.int64)


def _effort(budget: int, bounds: Mapping[str, int]) -> str:
    for level, upper in bounds.items():
        if budget <= upper:
            return level
    return TOP_EFFORT


def _check_effort_bounds(bounds: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(bounds, Mapping) or not bounds:
        raise InputError("effort_bounds must be a non-empty mapping level -> upper token bound")
    out: dict[str, int] = {}
    last = -1
    for level, upper in bounds.items():
        if not isinstance(level, str) or not level:
            raise InputError(f"effort_bounds: level names must be non-empty strings, got {level!r}")
        upper = _int_option(upper, f"effort_bounds[{level}]")
        if upper <= last:
            raise InputError(f"effort_bounds must increase: {level} has bound {upper} <= {last}")
        out[level] = last = upper
    if TOP_EFFORT in out:
        raise InputError(
            f"effort_bounds: {TOP_EFFORT!r} is the level above the last bound; do not list it"
        )
    return out


def _request(
    fmt: str,
    budget: int | None,
    limit: int,
    zero_budget: str,
    bounds: Mapping[str, int],
    processor: str,
) -> dict[str, Any]:
    """The request body fields for one task; `budget` None means no thinking limit."""
    disabled = budget == 0 and zero_budget == "disable"
    if fmt == "openai":
        effort = (
            TOP_EFFORT
            if budget is None
            else ZERO_EFFORT[zero_budget]
            if budget == 0
            else _effort(budget, bounds)
        )
        return {"max_completion_tokens": limit, "reasoning_effort": effort}
    if fmt == "json":
        if disabled:
            return {"max_tokens": limit, "enable_thinking": False}
        return {"max_tokens": limit, "thinking_budget": budget}
    req: dict[str, Any] = {"max_completion_tokens": limit}
    value = -1 if budget is None else budget  # both engines read -1 as "no limit"
    if disabled:
        req.update(json.loads(json.dumps(_DISABLE)))  # fresh nested dicts per task
    elif fmt == "vllm":
        req["thinking_token_budget"] = value
    elif fmt == "dynamo":
        if budget is not None:  # an unsigned field: no limit is no field
            req["thinking_token_budget"] = budget
    elif fmt == "llamacpp":
        req["thinking_budget_tokens"] = value
        req["reasoning_budget_tokens"] = value
    else:  # sglang
        req["custom_params"] = {"thinking_budget": value}
        reference = SGLANG_PROCESSORS[processor]
        if reference is not None:
            req["custom_logit_processor"] = _sglang_processor_reference(*reference)
    return req


def _standard_errors(uncertainty: Any, workload: Workload) -> np.ndarray:
    """Per-task standard errors of the budgets (a sequence in task order or a mapping). One
    rule: each is a finite number >= 0 (null, NaN and inf are all refused with it)."""
    values = uncertainty.values() if isinstance(uncertainty, Mapping) else uncertainty
    names = list(uncertainty) if isinstance(uncertainty, Mapping) else workload.task_names
    for name, v in zip(names, values if isinstance(values, Iterable) else ()):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
        if not ok:
            raise InputError(f"uncertainty[{name}] must be a finite standard error >= 0, got {v!r}")
    try:
        se = tokens_from_data(uncertainty, workload)
    except InputError as e:
        raise InputError(str(e).replace("tokens", "uncertainty", 1)) from None
    return se


def _finite_or_none(x: Any) -> float | None:
    v = float(np.asarray(x))
    return v if math.isfinite(v) else None


def export_policy(
    workload: Workload,
    tokens: Any,
    *,
    engine: str = "vllm",
    answer_reserve: int = DEFAULT_ANSWER_RESERVE,
    min_budget: int = 0,
    rounding: str = "integer",
    zero_budget: str = "disable",
    effort_bounds: Mapping[str, int] | None = None,
    sglang_processor: str = "qwen3",
    uncertainty: Any = None,
    conservative: float | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Per-task request parameters enforcing the budgets `tokens` on a serving engine.

    Args:
        workload: an unbatched `Workload` (its task names key the policy).
        tokens: a `Solution`, a sequence of budgets in task order, or a mapping task -> budget
            (`None` or `inf`: no thinking limit for that task).
        engine: `"vllm"`, `"sglang"`, `"dynamo"`, `"llamacpp"`, `"openai"` or `"json"` (see
            the module docstring).
        answer_reserve: tokens kept for the visible answer; request limit = budget + reserve.
        min_budget: positive budgets below it are raised to it (0 stays 0).
        rounding: `"integer"` (`integer_budgets`, eq. (39)), `"ceil"` or `"round"`.
        zero_budget: `"disable"` (0 -> thinking switched off) or `"budget"` (send 0).
        effort_bounds: `"openai"` only; ordered level -> inclusive upper token bound,
            `"high"` above the last (default `DEFAULT_EFFORT_BOUNDS`).
        sglang_processor: `"sglang"` only; `"qwen3"`, `"deepseek-r1"` (the logit processor
            sent with each request) or `"strict"` (none: the server's strict thinking).
        uncertainty: standard errors of `tokens` per task (e.g. the second result of
            `budget_uncertainty`), recorded as `tokens_se`.
        conservative: a probability q in (0, 1); export the q-quantile
            `tokens + z_q * tokens_se` (needs `uncertainty`; q < 0.5 exports less thinking).
        source: where the workload came from, recorded in the metadata.

    Returns:
        a JSON-serialisable dict with `engine`, `generated_by`, `source` (workload
        metadata and the objective J at the exported budgets), `settings` and `tasks`
        (`{name: {"tokens", "budget", "clamped", "request"}}`, plus `"tokens_se"` with
        `uncertainty`).

    Raises `InputError` naming the offending field for bad options or budgets.
    """
    if engine not in EXPORT_FORMATS:
        raise InputError(f"engine: must be one of {', '.join(EXPORT_FORMATS)}; got {engine!r}")
    if rounding not in ROUNDINGS:
        raise InputError(f"rounding must be one of {', '.join(ROUNDINGS)}; got {rounding!r}")
    if zero_budget not in ZERO_BUDGET:
        raise InputError(
            f"zero_budget must be one of {', '.join(ZERO_BUDGET)}; got {zero_budget!r}"
        )
    if sglang_processor not in SGLANG_PROCESSORS:
        raise InputError(
            f"sglang_processor must be one of {', '.join(SGLANG_PROCESSORS)}; "
            f"got {sglang_processor!r}"
        )
    if not isinstance(workload, Workload):
        raise InputError(f"workload must be a Workload, got {type(workload).__name__}")
    if workload.batch_shape:
        raise InputError(
            f"workload must be unbatched to export a policy (batch shape {workload.batch_shape})"
        )
    reserve = _int_option(answer_reserve, "answer_reserve")
    min_b = _int_option(min_budget, "min_budget")
    bounds = _check_effort_bounds(DEFAULT_EFFORT_BOUNDS if effort_bounds is None else effort_bounds)
    if conservative is not None:
        if uncertainty is None:
            raise InputError("conservative needs uncertainty (the budgets' standard errors)")
        if isinstance(conservative, bool) or not isinstance(conservative, (int, float)):
            raise InputError(f"conservative must be a probability in (0, 1), got {conservative!r}")
        if not 0 < float(conservative) < 1:
            raise InputError(f"conservative must be a probability in (0, 1), got {conservative}")
    lmax = float(np.asarray(workload.max_tokens))
    cap_total = math.floor(lmax)
    cap = cap_total - reserve
    if cap < 0:
        raise InputError(
            f"answer_reserve={reserve} exceeds the workload's max_tokens={lmax:g}: no tokens "
            "are left for reasoning"
        )

    solution = tokens if isinstance(tokens, Solution) else None
    if solution is not None and int(np.asarray(solution.status)) != Status.CONVERGED:
        status = Status(int(np.asarray(solution.status)))
        raise InputError(
            f"tokens: the solution did not converge ({status.name.lower()}: {status.message})"
        )
    cont = tokens_from_data(tokens, workload)
    se = None if uncertainty is None else _standard_errors(uncertainty, workload)
    target = cont
    if conservative is not None and se is not None:
        z = NormalDist().inv_cdf(float(conservative))
        target = np.where(np.isfinite(cont), np.maximum(cont + z * se, 0.0), cont)
    ints = _integer(target, workload, rounding)

    tasks: dict[str, Any] = {}
    budgets = []
    for k, (name, x, b) in enumerate(zip(workload.task_names, target, ints)):
        b = int(b)
        clamped = []
        unlimited = not math.isfinite(x)
        if unlimited:
            budgets.append(cap_total)
            entry: dict[str, Any] = {"tokens": None, "budget": None, "clamped": []}
            entry["request"] = _request(
                engine, None, cap_total, zero_budget, bounds, sglang_processor
            )
        else:
            if x > cap_total:
                clamped.append("max_tokens")
            if 0 < b < min_b:
                b = min_b
                clamped.append("min_budget")
            if b > cap:
                b = cap
                clamped.append("answer_reserve")
            budgets.append(b)
            entry = {
                "tokens": float(cont[k]),
                "budget": b,
                "clamped": clamped,
                "request": _request(engine, b, b + reserve, zero_budget, bounds, sglang_processor),
            }
        if se is not None:
            entry["tokens_se"] = float(se[k])
            if conservative is not None and not unlimited:
                entry["tokens_exported"] = float(x)
        tasks[name] = entry

    bj = jnp.asarray(np.asarray(budgets, dtype=np.float64), dtype=workload.dtype)
    figures = call("policy-figures", _figures, bj, workload)
    rho = float(np.asarray(figures["utilization"]))
    if not rho < 1:
        warnings.warn(
            f"the exported budgets load the server to utilization {rho:.4g} >= 1 at arrival "
            f"rate {float(np.asarray(workload.arrival_rate)):g}/s: the queue would grow without "
            "bound (the command line refuses to export such a policy)",
            UnstableQueueWarning,
            stacklevel=2,
        )
    meta: dict[str, Any] = {
        "workload": source,
        "tasks": list(workload.task_names),
        "arrival_rate": float(np.asarray(workload.arrival_rate)),
        "alpha": float(np.asarray(workload.alpha)),
        "max_tokens": lmax,
        "utilization": rho,
        "objective": _finite_or_none(figures["objective"]),
        "mean_system_time": _finite_or_none(figures["mean_system_time"]),
    }
    if solution is not None:
        meta["objective_continuous"] = _finite_or_none(solution.objective)
        meta["status"] = Status(int(np.asarray(solution.status))).name.lower()
    settings: dict[str, Any] = {
        "answer_reserve": reserve,
        "min_budget": min_b,
        "rounding": rounding,
        "zero_budget": zero_budget,
        "conservative": None if conservative is None else float(conservative),
    }
    if engine == "openai":
        settings["effort_bounds"] = dict(bounds)
        settings["effort_above_bounds"] = TOP_EFFORT
        settings["effort_at_zero"] = ZERO_EFFORT[zero_budget]
    if engine == "sglang":
        settings["sglang_processor"] = sglang_processor
        settings["server_flags"] = (
            ["--enable-strict-thinking", "--reasoning-parser <parser>"]
            if SGLANG_PROCESSORS[sglang_processor] is None
            else ["--enable-custom-logit-processor"]
        )
    if engine == "vllm":
        settings["server_flags"] = ["--reasoning-parser <parser>"]
    if engine == "dynamo":
        settings["server_flags"] = [
            "a frontend with the root thinking_token_budget field",
            "the worker's reasoning parser",
        ]
    if engine == "llamacpp":
        settings["server_flags"] = ["--jinja", "--reasoning-budget -1 (the default)"]
    return {
        "engine": engine,
        "generated_by": f"jaxopt_tokens {__version__}",
        "source": meta,
        "settings": settings,
        "tasks": tasks,
    }


def write_policy(policy: Mapping[str, Any], path: str | Path | None = None) -> str:
    """The policy as indented JSON (strict: no NaN/Infinity); written to `path` if given.

    Args:
        policy: the policy (`export_policy`).
        path: where to write it (not written when None).

    Returns:
        The JSON text.
    """
    try:
        text = json.dumps(policy, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise InputError(f"policy is not JSON-serialisable: {e}") from None
    if path is not None:
        try:
            Path(path).write_text(text)
        except OSError as e:
            raise InputError(f"cannot write the policy to {path}: {e.strerror or e}") from None
    return text


def openai_client_kwargs(policy: Mapping[str, Any], task: str) -> dict[str, Any]:
    """Keyword arguments for `client.chat.completions.create(...)` of the `openai` client for
    one task type: standard fields as keywords, engine-specific ones under `extra_body`.

    Args:
        policy: the exported policy.
        task: the task type.

    Returns:
        The keyword arguments.
    """
    tasks = policy.get("tasks") if isinstance(policy, Mapping) else None
    if not isinstance(tasks, Mapping):
        raise InputError(
            "policy: expected the dict `export_policy` returns (a 'tasks' mapping), got "
            f"{type(policy).__name__}"
        )
    if task not in tasks:
        raise InputError(f"task {task!r} is not in the policy (tasks: {list(tasks)})")
    entry = tasks[task]
    request = entry.get("request") if isinstance(entry, Mapping) else None
    if not isinstance(request, Mapping):
        raise InputError(f"policy: task {task!r} has no request (a mapping of request fields)")
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for k, v in request.items():
        (kwargs if k in _OPENAI_CLIENT_FIELDS else extra)[k] = v
    if extra:
        kwargs["extra_body"] = extra
    return kwargs
