"""The gateway's request contract: a strict body parser, the fields a client may send to each
engine, and the policy written over the fields the gateway owns.

The policy is an upper bound. The output limits (`max_completion_tokens`, `max_tokens`), the
budget fields (`thinking_token_budget`, `custom_params`, llama.cpp's `thinking_budget_tokens`
and `reasoning_budget_tokens`), the reasoning switches
(`reasoning_effort`, `chat_template_kwargs.enable_thinking` / `thinking`) and SGLang's
`custom_logit_processor` belong to the gateway: a client's value may lower the policy's, never
raise or replace it. Fields that load code or steer the engine's internals (a chat template,
logits processors, disaggregation and routing parameters, priorities) are refused, and so is
any field not on the engine's allow-list (plus the operator's `allow_fields`). Every refusal
is a `GatewayError` naming the field. Docs: *Budget gateway*, section *Security model*.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "GatewayError",
    "ENDPOINTS",
    "OWNED_FIELDS",
    "REFUSED_FIELDS",
    "client_fields",
    "BUDGET_FIELDS",
    "parse_body",
    "check_body",
    "apply_policy",
    "encode_body",
    "prompt_text",
]

#: the budgeted routes and their kind
ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}


class GatewayError(Exception):
    """A request the gateway answers itself: HTTP `status`, one line of `message`, the OpenAI
    error `kind`, and the `reason` label it is counted under in the metrics."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        reason: str = "malformed",
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = " ".join(str(message).split())
        self.kind = kind
        self.reason = reason
        self.headers = headers


# --------------------------------------------------------------------------- the allow-lists

#: OpenAI chat-completions fields that carry no budget (every engine reads them)
_OPENAI_CHAT = frozenset(
    {
        "model",
        "messages",
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "n",
        "response_format",
        "seed",
        "stop",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "user",
        "metadata",
    }
)
#: OpenAI (legacy) completions fields that carry no budget
_OPENAI_COMPLETIONS = frozenset(
    {
        "model",
        "prompt",
        "best_of",
        "echo",
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "logprobs",
        "n",
        "seed",
        "stop",
        "stream",
        "stream_options",
        "suffix",
        "temperature",
        "top_p",
        "user",
        "metadata",
    }
)
#: vLLM's sampling and rendering extras (its `ChatCompletionRequest`) that carry no budget
_VLLM_EXTRA = frozenset(
    {
        "top_k",
        "min_p",
        "repetition_penalty",
        "length_penalty",
        "stop_token_ids",
        "include_stop_str_in_output",
        "ignore_eos",
        "min_tokens",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "truncate_prompt_tokens",
        "truncation_side",
        "prompt_logprobs",
        "allowed_token_ids",
        "bad_words",
        "include_reasoning",
        "add_special_tokens",
        "documents",
        "mm_processor_kwargs",
        "structured_outputs",
        "return_tokens_as_token_ids",
        "return_token_ids",
        "cache_salt",
        "session_id",
    }
)
_VLLM_CHAT_ONLY = frozenset({"echo"})
#: SGLang's extras (its `ChatCompletionRequest`) that carry no budget
_SGLANG_EXTRA = frozenset(
    {
        "top_k",
        "min_p",
        "min_tokens",
        "repetition_penalty",
        "regex",
        "ebnf",
        "stop_token_ids",
        "stop_regex",
        "no_stop_trim",
        "ignore_eos",
        "skip_special_tokens",
        "separate_reasoning",
        "stream_reasoning",
        "mm_processor_kwargs",
        "cache_salt",
        "return_token_ids",
        "session_id",
    }
)

#: Dynamo's root extras (its `CommonExt` and validator pass-through) that carry no budget
_DYNAMO_EXTRA = frozenset(
    {
        "top_k",
        "min_tokens",
        "repetition_penalty",
        "ignore_eos",
        "include_stop_str_in_output",
        "guided_json",
        "guided_regex",
        "guided_grammar",
        "guided_choice",
        "stop_token_ids",
        "allowed_token_ids",
        "cache_salt",
    }
)
#: llama.cpp's sampling extras that carry no budget
_LLAMACPP_EXTRA = frozenset({"top_k", "min_p", "typical_p", "repeat_penalty"})
_EXTRAS = {
    "vllm": _VLLM_EXTRA,
    "sglang": _SGLANG_EXTRA,
    "dynamo": _DYNAMO_EXTRA,
    "llamacpp": _LLAMACPP_EXTRA,
    "openai": frozenset(),
}
#: the request fields that carry a thinking budget, by engine (an integer; -1: no limit)
BUDGET_FIELDS = ("thinking_token_budget", "thinking_budget_tokens", "reasoning_budget_tokens")

#: the fields the gateway owns, by endpoint kind and engine: a client's value may only lower
#: the policy's
OWNED_FIELDS: dict[tuple[str, str], frozenset[str]] = {
    ("chat", "vllm"): frozenset(
        {
            "max_completion_tokens",
            "max_tokens",
            "thinking_token_budget",
            "reasoning_effort",
            "chat_template_kwargs",
        }
    ),
    ("chat", "sglang"): frozenset(
        {
            "max_completion_tokens",
            "max_tokens",
            "custom_params",
            "reasoning_effort",
            "chat_template_kwargs",
            "thinking",
        }
    ),
    ("chat", "dynamo"): frozenset(
        {
            "max_completion_tokens",
            "max_tokens",
            "thinking_token_budget",
            "reasoning_effort",
            "chat_template_kwargs",
            "thinking",
        }
    ),
    ("chat", "llamacpp"): frozenset(
        {
            "max_completion_tokens",
            "max_tokens",
            "thinking_budget_tokens",
            "reasoning_budget_tokens",
            "reasoning_effort",
            "chat_template_kwargs",
        }
    ),
    ("chat", "openai"): frozenset({"max_completion_tokens", "max_tokens", "reasoning_effort"}),
    **{("completions", engine): frozenset({"max_tokens"}) for engine in _EXTRAS},
}

#: fields refused whatever the configuration, and why (they load code, or steer the engine's
#: scheduling, routing or internals on behalf of one client)
REFUSED_FIELDS: dict[str, str] = {
    "custom_logit_processor": "the gateway sets SGLang's logit processor; a client's would be "
    "unpickled by the engine",
    "chat_template": "a client's chat template is rendered by the engine",
    "logits_processors": "logits processors are loaded by name on the engine",
    "vllm_xargs": "engine extension arguments",
    "kv_transfer_params": "disaggregated-serving internals",
    "ec_transfer_params": "disaggregated-serving internals",
    "bootstrap_host": "disaggregated-serving internals",
    "bootstrap_port": "disaggregated-serving internals",
    "bootstrap_room": "disaggregated-serving internals",
    "data_parallel_rank": "routing internals",
    "routed_dp_rank": "routing internals",
    "disagg_prefill_dp_rank": "routing internals",
    "priority": "the scheduling priority is the operator's",
    "request_id": "request ids are the engine's",
    "rid": "request ids are the engine's",
    "lora_path": "adapters are chosen by the operator",
    "session_params": "engine session internals",
    "return_hidden_states": "engine internals",
    "input_ids": "pre-tokenised input bypasses the gateway's classification",
    "stream_interval": "the gateway counts streamed tokens",
    "add_generation_prompt": "a conversation rendered without the generation prompt can skip "
    "the thinking switch",
    "continue_final_message": "continuing an assistant message can reopen thinking the policy "
    "turned off",
    "nvext": "Dynamo's extension: routing, annotations and a second thinking budget",
    "n_predict": "llama.cpp reads it before max_completion_tokens: the gateway's limit governs",
    "id_slot": "the engine's slot is the operator's",
    "lora": "adapters are chosen by the operator",
    "reasoning_budget_start_tag": "it redefines where the thinking budget counts",
    "reasoning_budget_end_tag": "it redefines where the thinking budget ends",
    "reasoning_budget_message": "it changes what the engine injects at the budget",
    "reasoning_budget_arm_immediately": "it changes when the thinking budget counts",
}

#: `chat_template_kwargs` keys that change how the conversation is rendered (refused)
TEMPLATE_RENDERING = frozenset(
    {
        "chat_template",
        "tokenize",
        "add_generation_prompt",
        "continue_final_message",
        "tools",
        "documents",
        "conversation",
        "messages",
    }
)
#: `chat_template_kwargs` keys that read as a reasoning switch or budget: the gateway's
_REASONING_KEY = re.compile(r"(?i)think|reason|budget|effort")

_OWNED_ANY = frozenset().union(*OWNED_FIELDS.values())
_EFFORT_ORDER = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
_THINKING_SWITCHES = ("enable_thinking", "thinking")


def client_fields(endpoint: str, engine: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """Every body field a client may send on `endpoint` ("chat" or "completions") to
    `engine`: the engine's fields that carry no budget, the owned fields (lowered only),
    and the operator's `extra` (never a refused field)."""
    base = (_OPENAI_CHAT if endpoint == "chat" else _OPENAI_COMPLETIONS) | _EXTRAS[engine]
    if endpoint == "chat" and engine == "vllm":
        base = base | _VLLM_CHAT_ONLY
    return base | OWNED_FIELDS[(endpoint, engine)] | (frozenset(extra) - set(REFUSED_FIELDS))


# --------------------------------------------------------------------------- parsing


def _constant(name: str) -> Any:
    raise GatewayError(400, f"request body is not valid JSON (the number {name} is not finite)")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise GatewayError(
            400, f"request body is not valid JSON (the number {text[:40]} overflows a double)"
        )
    return value


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object in `raw`, strictly: UTF-8 only, finite numbers only, no lone
    surrogates, integers of at most 4300 digits, bounded nesting. Raises `GatewayError(400)`."""
    try:
        text = raw.decode("utf-8")
        body = json.loads(text, parse_constant=_constant, parse_float=_float)
        # a lone surrogate (`"\\ud800"`) parses but cannot be encoded again
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except GatewayError:
        raise
    except UnicodeError:
        raise GatewayError(
            400, "request body is not valid JSON (invalid UTF-8 or a lone surrogate in a string)"
        ) from None
    except json.JSONDecodeError as e:
        raise GatewayError(
            400, f"request body is not valid JSON ({e.msg}, line {e.lineno} column {e.colno})"
        ) from None
    except (ValueError, RecursionError) as e:
        what = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]
        raise GatewayError(400, f"request body is not valid JSON ({what})") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "request body must be a JSON object")
    return body


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


#: the types of the fields the gateway reads (None is accepted for each)
_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "messages": (list,),
    "prompt": (str, list),
    "stream": (bool,),
    "stream_options": (dict,),
    "metadata": (dict,),
    "chat_template_kwargs": (dict,),
    "custom_params": (dict,),
    "reasoning_effort": (str,),
}


def check_body(body: Mapping[str, Any], allowed: frozenset[str], max_choices: int) -> None:
    """Refuse (`GatewayError(400)`, the field named) a refused or unknown field, a wrong type
    of a field the gateway reads, a limit or budget that is not a whole number, or more
    choices than `max_choices`."""
    for key in body:
        if key in REFUSED_FIELDS:
            raise GatewayError(400, f"{key}: not accepted by the gateway ({REFUSED_FIELDS[key]})")
        if key not in allowed:
            raise GatewayError(
                400,
                f"{key}: not a field the gateway forwards (the operator may allow it with "
                "allow_fields)",
            )
    for key, types in _TYPES.items():
        v = body.get(key)
        if v is not None and not isinstance(v, types):
            names = " or ".join("a list" if t is list else f"a {t.__name__}" for t in types)
            names = names.replace("a dict", "an object").replace("a str", "a string")
            raise GatewayError(400, f"{key}: expected {names}, got {type(v).__name__}")
    for key in ("max_completion_tokens", "max_tokens"):
        v = body.get(key)
        if v is not None and not (_is_int(v) and v >= 1):
            raise GatewayError(400, f"{key}: max tokens must be an integer >= 1, got {v!r}")
    for key in TEMPLATE_RENDERING & set(body.get("chat_template_kwargs") or {}):
        raise GatewayError(
            400,
            f"chat_template_kwargs.{key}: not accepted by the gateway (it changes how the "
            "conversation is rendered)",
        )
    prompt = body.get("prompt")
    if isinstance(prompt, list) and not (
        1 <= len(prompt) <= max_choices and all(isinstance(p, str) for p in prompt)
    ):
        raise GatewayError(
            400,
            f"prompt: a string, or a list of at most {max_choices} string(s) (each prompt "
            "is another budget; token ids bypass the gateway's classification)",
        )
    for key in BUDGET_FIELDS:
        budget = body.get(key)
        if budget is not None and not (_is_int(budget) and budget >= -1):
            raise GatewayError(400, f"{key}: an integer >= 0 (or -1), got {budget!r}")
    params = body.get("custom_params") or {}
    if "thinking_budget" in params and not _is_int(params["thinking_budget"]):
        raise GatewayError(
            400, f"custom_params.thinking_budget: an integer, got {params['thinking_budget']!r}"
        )
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in _EFFORT_ORDER:
        raise GatewayError(
            400, f"reasoning_effort: one of {', '.join(_EFFORT_ORDER)}; got {effort!r}"
        )
    for key in ("n", "best_of"):
        v = body.get(key)
        if v is not None and not (_is_int(v) and 1 <= v <= max_choices):
            raise GatewayError(
                400,
                f"{key}: at most {max_choices} choice(s) a request through this gateway, got {v!r}",
            )


# --------------------------------------------------------------------------- the policy


def _lowest(policy: int | None, client: Any) -> int | None:
    """The smaller budget; None and negative values mean "no limit"."""
    limits = [int(v) for v in (policy, client) if isinstance(v, int) and _is_int(v) and v >= 0]
    return min(limits) if limits else policy


def apply_policy(
    body: Mapping[str, Any],
    fields: Mapping[str, Any],
    endpoint: str,
    override: bool = False,
) -> dict[str, Any]:
    """The body forwarded upstream: `body` (already checked) with the policy's `fields`
    (`export_policy`'s request fields of the request's task) written over the owned ones.

    Each output limit sent is min(policy, client's); a budget is min(policy, client's) (the
    policy's alone with `override`); thinking switched off by the policy stays off and a
    client may only switch it off; `reasoning_effort` is the lower of the two (openai) or
    dropped (vllm, sglang: the budget field governs)."""
    # an owned field sent as null is a field not sent
    body = {k: v for k, v in body.items() if v is not None or k not in _OWNED_ANY}
    out = dict(body)
    policy_limit = fields.get("max_completion_tokens", fields.get("max_tokens"))
    client_limits = [body[k] for k in ("max_completion_tokens", "max_tokens") if k in body]
    limit = min([policy_limit, *client_limits]) if policy_limit is not None else None
    if endpoint == "completions":
        out.pop("max_completion_tokens", None)
        if limit is not None:
            out["max_tokens"] = limit
        return out
    if limit is not None:
        out["max_completion_tokens"] = limit
        if "max_tokens" in body:
            out["max_tokens"] = limit
    off = fields.get("chat_template_kwargs", {}).get("enable_thinking") is False
    kwargs = {
        k: v
        for k, v in (body.get("chat_template_kwargs") or {}).items()
        if not _REASONING_KEY.search(k)  # every reasoning switch and budget is the gateway's
    }
    client_kwargs = body.get("chat_template_kwargs") or {}
    for switch in _THINKING_SWITCHES:
        if client_kwargs.get(switch) is False:
            kwargs[switch] = False  # a client may turn thinking off
    if off:
        kwargs["enable_thinking"] = False
    if kwargs:
        out["chat_template_kwargs"] = kwargs
    else:
        out.pop("chat_template_kwargs", None)
    out.pop("thinking", None)
    # the client's budget: the lowest it sent under any name (-1 or none: no limit)
    sent = [body[k] for k in BUDGET_FIELDS if _is_int(body.get(k)) and body[k] >= 0]
    client_budget = None if override or not sent else min(sent)
    for key in BUDGET_FIELDS:  # vllm, dynamo: one name; llamacpp: two
        if key in fields:
            out[key] = _lowest(fields[key], client_budget)
        elif off or not (_is_int(out.get(key)) and out[key] >= 0):
            out.pop(key, None)  # thinking off, or "no limit" (Dynamo's is unsigned)
    if "custom_params" in fields:  # sglang
        client = None if override else (body.get("custom_params") or {}).get("thinking_budget")
        out["custom_params"] = {
            "thinking_budget": _lowest(fields["custom_params"]["thinking_budget"], client)
        }
    else:
        out.pop("custom_params", None)
    if "custom_logit_processor" in fields:
        out["custom_logit_processor"] = fields["custom_logit_processor"]
    if "reasoning_effort" in fields:  # openai
        policy_effort = fields["reasoning_effort"]
        client = body.get("reasoning_effort")
        lower = (
            client is not None
            and not override
            and _EFFORT_ORDER.index(client) < _EFFORT_ORDER.index(policy_effort)
        )
        out["reasoning_effort"] = client if lower else policy_effort
    else:
        out.pop("reasoning_effort", None)
    return out


def encode_body(body: Mapping[str, Any]) -> bytes:
    """The forwarded body as strict JSON bytes (never NaN; UTF-8)."""
    return json.dumps(body, allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode()


def prompt_text(body: Mapping[str, Any]) -> str:
    """The text that prompt rules search: the last user message's text (string content, or
    the string `text` parts of a list), else a string `prompt`; non-text parts are skipped."""
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in reversed(messages):
            if isinstance(m, dict) and m.get("role") == "user":
                c = m.get("content")
                if isinstance(c, str):
                    return c
                if isinstance(c, list):
                    return " ".join(
                        p["text"]
                        for p in c
                        if isinstance(p, dict) and isinstance(p.get("text"), str)
                    )
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else ""
