"""Export per-task reasoning-token budgets as request parameters for serving engines.

`export_policy(workload, tokens, engine=...)` turns budgets (a `Solution`, a sequence in
task order, or a mapping task name -> tokens) into a JSON-ready policy: for each task type,
the fields to put in a chat-completions request so that the engine enforces the budget.

Budget pipeline (in this order, per task):

1. **Integer budget.** `rounding="integer"` (default) uses `integer_budgets` (the best
   floor/ceil combination of eq. (39) for up to 16 tasks, rounding + local search above);
   `"ceil"` rounds up (with a 1e-6 tolerance, so 340.0000001 -> 340); `"round"` rounds to
   nearest. All keep budgets in [0, floor(max_tokens)].
2. **Minimum budget.** A positive budget below `min_budget` is raised to `min_budget`
   (a budget of a few tokens only truncates the thinking block). Zero stays zero.
3. **Answer reserve.** Reasoning tokens count against the request's output limit, so the
   request's limit is `budget + answer_reserve` and the budget is capped at
   `floor(workload.max_tokens) - answer_reserve`; the request limit therefore never exceeds
   the workload's `max_tokens`. The reserve cap wins over `min_budget`.
4. **Zero.** A budget of 0 means "do not think". With `zero_budget="disable"` (default) it
   maps to the chat-template switch `chat_template_kwargs: {"enable_thinking": false}`
   (Qwen3-style hybrid models, on vLLM and SGLang) and no budget field is sent; with
   `zero_budget="budget"` the engine's budget field is sent as 0 (what engines do with 0
   is not documented; see the sources below). For `engine="openai"` 0 maps to the lowest
   effort level (`"minimal"` by default).

Each task entry records the continuous tokens, the exported `budget` and which clamps
(`"min_budget"`, `"answer_reserve"`, `"max_tokens"`) changed it.

Formats and the request fields they emit (body fields of an OpenAI-compatible
`/v1/chat/completions` request; with the `openai` Python client, fields the client does not
know go in `extra_body`, see `openai_client_kwargs`):

- `"vllm"`: `max_tokens`, `thinking_token_budget` (budget 0, disabled:
  `chat_template_kwargs.enable_thinking = false`).
- `"sglang"`: `max_tokens`, `custom_params: {"thinking_budget": B}` (disabled as for vLLM).
- `"openai"`: `max_completion_tokens`, `reasoning_effort` chosen by token thresholds
  (`effort_bounds`, default `{"minimal": 0, "low": 1024, "medium": 8192}`: the first level
  whose upper bound is >= the budget, else `"high"`).
- `"json"`: engine-neutral `max_tokens` and `thinking_budget`.

Sources checked for the field names (stored copies of public docs, code and issues):

- vLLM: the per-request field is `thinking_token_budget`, a sampling parameter accepted in
  the chat-completions body, added by vllm-project/vllm PR #20859 "[Feature] limit thinking
  tokens (hard limit)" (https://github.com/vllm-project/vllm/pull/20859), which also added a
  "Thinking Budget Control" section to docs/features/reasoning_outputs.md: counting starts at
  the reasoning start string, and when the count reaches the budget vLLM forces the end
  string; without the field only `max_tokens` limits reasoning. The server needs
  `--reasoning-parser` and `--reasoning-config` (start/end strings; see
  https://docs.vllm.ai/en/stable/api/vllm/config/reasoning/). A user report
  (https://discuss.vllm.ai/t/thinking-token-budget-silently-ignored-when-passed-via-extra-args-in-vllm-0-18-0/2533)
  says vLLM 0.18.0's `SamplingParams` had no such field, so it needs a newer vLLM.
  What 0 and -1 do is NOT confirmed by the docs. A downstream copy of vLLM's
  thinking-budget logits processor (the upstream file was not available to check) forces the end
  string as soon as a thinking block opens when the budget is 0. A review comment on PR
  #20859 proposed -1 for "unlimited", but no documentation says that was adopted.
  So this module never sends -1 (it leaves the field out instead) and by default does not
  send 0 either (it uses the chat-template switch; `zero_budget="budget"` sends 0).
  Turning Qwen3 thinking off with `chat_template_kwargs: {"enable_thinking": false}` appears in
  vLLM's reasoning-outputs
  example (seen in a copy, myPar/OpenAI_proxy open_ai_proxy_r1/infer_r1_32b.py; the
  vllm-project/vllm docs/source/features/reasoning_outputs.md excerpt lists Qwen3
  under the `qwen3` parser) and in SGLang's thinking-budget page (below).
- SGLang: https://docs.sglang.io/docs/advanced_features/thinking_budget describes three
  mechanisms: chat-template hints (`enable_thinking`, and a `thinking_budget` template
  variable only honoured if the template defines it), strict thinking
  (`--enable-strict-thinking`, a grammar-level exact cap) and a custom logit processor
  (`--enable-custom-logit-processor`). The per-request field read by both enforcing
  mechanisms is `custom_params["thinking_budget"]`: sglang
  python/sglang/srt/sampling/custom_logit_processor.py (`ThinkingBudgetLogitProcessor`
  skips the request when the value is missing, not an int, or negative) and, per an issue
  citing python/sglang/srt/constrained/grammar_manager.py, strict thinking maps the same
  custom param to its per-request limit; sgl-project/sglang issue #25536 shows it set as
  `{"custom_params": {"thinking_budget": 200}}`. With the logit-processor route the request
  must also carry `custom_logit_processor` (a serialised processor class, e.g. the Qwen3
  one's `to_str()`); that string needs sglang installed, so this module does not emit it.
  NOT confirmed from docs: the behaviour of a budget of exactly 0 (the code only shows that
  negative values disable the limit), hence the default chat-template switch for 0.
- OpenAI: the official API reference was not among the stored sources searched, so
  these come from SDK and gateway docs that mirror it. `reasoning_effort` takes "minimal",
  "low", "medium", "high" (newer models also "none" and "xhigh"; e.g. https://learn.microsoft.com/en-us/javascript/api/@azure/ai-projects/reasoningeffort),
  and `max_completion_tokens` bounds reasoning plus visible output (reasoning counts against
  it; e.g. https://you.com/docs/guides/inference-router/reasoning). OpenAI does not
  document a token count per effort level; the default bounds here are our choice (close
  to the 1K/8K budgets Google states for "low"/"medium" on its OpenAI-compatible API).
  Configure them with `effort_bounds`.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from .._errors import InputError
from .._files import read_text
from .._integer import integer_budgets
from .._objective import mean_system_time, objective, utilization
from .._queue.simulate import UnstableQueueWarning
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
]

EXPORT_FORMATS = ("vllm", "sglang", "openai", "json")
ROUNDINGS = ("integer", "ceil", "round")
ZERO_BUDGET = ("disable", "budget")
DEFAULT_ANSWER_RESERVE = 256
DEFAULT_EFFORT_BOUNDS: dict[str, int] = {"minimal": 0, "low": 1024, "medium": 8192}
TOP_EFFORT = "high"
_DISABLE = {"chat_template_kwargs": {"enable_thinking": False}}
# Fields the `openai` client takes as keyword arguments; the rest go in `extra_body`.
_OPENAI_CLIENT_FIELDS = frozenset({"max_tokens", "max_completion_tokens", "reasoning_effort"})


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

    Raises `InputError` naming the field (`tokens`, `tokens[<task>]`) for a wrong length,
    unknown or missing task names, non-numbers, non-finite or negative values.
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
        if not math.isfinite(v):
            raise InputError(f"tokens[{name}] must be finite, got {v}")
        if v < 0:
            raise InputError(f"tokens[{name}] must be >= 0, got {v:g}")
        out[k] = v
    return out


def load_tokens(path: str | Path, workload: Workload) -> np.ndarray:
    """Budgets from a JSON file: a list in task order, a mapping task -> tokens, or an object
    with a `tokens` entry holding either (e.g. the output of `jaxopt-tokens solve --format
    json`)."""
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


def _integer(tokens: np.ndarray, w: Workload, rounding: str) -> np.ndarray:
    cap = math.floor(float(np.asarray(w.max_tokens)))
    if rounding == "integer":
        x = np.asarray(integer_budgets(jnp.asarray(tokens, dtype=w.dtype), w), dtype=np.float64)
    elif rounding == "ceil":
        x = np.ceil(tokens - 1e-6)
    else:
        x = np.round(tokens)
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
    fmt: str, budget: int, reserve: int, zero_budget: str, bounds: Mapping[str, int]
) -> dict[str, Any]:
    limit = budget + reserve
    disabled = budget == 0 and zero_budget == "disable"
    if fmt == "openai":
        return {"max_completion_tokens": limit, "reasoning_effort": _effort(budget, bounds)}
    if fmt == "vllm":
        req: dict[str, Any] = {"max_tokens": limit}
        req.update(_DISABLE if disabled else {"thinking_token_budget": budget})
        return json.loads(json.dumps(req))  # fresh nested dicts per task
    if fmt == "sglang":
        req = {"max_tokens": limit}
        req.update(_DISABLE if disabled else {"custom_params": {"thinking_budget": budget}})
        return json.loads(json.dumps(req))
    return {"max_tokens": limit, "thinking_budget": budget}  # json


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
    source: str | None = None,
) -> dict[str, Any]:
    """Per-task request parameters enforcing the budgets `tokens` on a serving engine.

    **Arguments:**

    - `workload`: an unbatched `Workload` (its task names key the policy).
    - `tokens`: a `Solution`, a sequence of budgets in task order, or a mapping task -> budget.
    - `engine`: `"vllm"`, `"sglang"`, `"openai"` or `"json"` (see the module docstring).
    - `answer_reserve`: tokens kept for the visible answer; request limit = budget + reserve.
    - `min_budget`: positive budgets below it are raised to it (0 stays 0).
    - `rounding`: `"integer"` (`integer_budgets`, eq. (39)), `"ceil"` or `"round"`.
    - `zero_budget`: `"disable"` (0 -> `chat_template_kwargs.enable_thinking=false`) or
      `"budget"` (send the budget field as 0). Ignored by `"openai"`.
    - `effort_bounds`: `"openai"` only; ordered level -> inclusive upper token bound,
      `"high"` above the last (default `DEFAULT_EFFORT_BOUNDS`).
    - `source`: where the workload came from, recorded in the metadata.

    **Returns:** a JSON-serialisable dict with `format`, `generated_by`, `source` (workload
    metadata and the objective J at the exported budgets), `settings` and `tasks`
    (`{name: {"tokens", "budget", "clamped", "request"}}`).

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
    if not isinstance(workload, Workload):
        raise InputError(f"workload must be a Workload, got {type(workload).__name__}")
    if workload.batch_shape:
        raise InputError(
            f"workload must be unbatched to export a policy (batch shape {workload.batch_shape})"
        )
    reserve = _int_option(answer_reserve, "answer_reserve")
    min_b = _int_option(min_budget, "min_budget")
    bounds = _check_effort_bounds(DEFAULT_EFFORT_BOUNDS if effort_bounds is None else effort_bounds)
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
    ints = _integer(cont, workload, rounding)

    tasks: dict[str, Any] = {}
    budgets = []
    for name, x, b in zip(workload.task_names, cont, ints):
        b = int(b)
        clamped = []
        if x > cap_total:
            clamped.append("max_tokens")
        if 0 < b < min_b:
            b = min_b
            clamped.append("min_budget")
        if b > cap:
            b = cap
            clamped.append("answer_reserve")
        budgets.append(b)
        tasks[name] = {
            "tokens": float(x),
            "budget": b,
            "clamped": clamped,
            "request": _request(engine, b, reserve, zero_budget, bounds),
        }

    bj = jnp.asarray(np.asarray(budgets, dtype=np.float64), dtype=workload.dtype)
    rho = float(np.asarray(utilization(bj, workload)))
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
        "objective": _finite_or_none(objective(bj, workload)),
        "mean_system_time": _finite_or_none(mean_system_time(bj, workload)),
    }
    if solution is not None:
        meta["objective_continuous"] = _finite_or_none(solution.objective)
        meta["status"] = Status(int(np.asarray(solution.status))).name.lower()
    settings: dict[str, Any] = {
        "answer_reserve": reserve,
        "min_budget": min_b,
        "rounding": rounding,
        "zero_budget": zero_budget if engine != "openai" else None,
    }
    if engine == "openai":
        settings["effort_bounds"] = dict(bounds)
        settings["effort_above_bounds"] = TOP_EFFORT
    return {
        "engine": engine,
        "generated_by": f"jaxopt_tokens {__version__}",
        "source": meta,
        "settings": settings,
        "tasks": tasks,
    }


def write_policy(policy: Mapping[str, Any], path: str | Path | None = None) -> str:
    """The policy as indented JSON (strict: no NaN/Infinity); written to `path` if given."""
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
    one task type: standard fields as keywords, engine-specific ones under `extra_body`."""
    try:
        request = policy["tasks"][task]["request"]
    except KeyError:
        known = list(policy.get("tasks", {})) if isinstance(policy, Mapping) else []
        raise InputError(f"task {task!r} is not in the policy (tasks: {known})") from None
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for k, v in request.items():
        (kwargs if k in _OPENAI_CLIENT_FIELDS else extra)[k] = v
    if extra:
        kwargs["extra_body"] = extra
    return kwargs
