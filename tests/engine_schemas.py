"""Pinned copies of the serving engines' chat-completions request models (the fields we use).

Each entry names the engine's source file and the commit it was read at. `validate_request`
checks a request body the way the engine's pydantic model and request handling do, and
returns what the engine would act on: the output limit, the thinking budget that is
enforced, whether thinking is on, and (SGLang) which mechanism enforces the budget.

Read at:

- vLLM 0.33.0 (PyPI wheel, commit 4ba787ec9): `vllm/entrypoints/openai/chat_completion/
  protocol.py` `ChatCompletionRequest` (fields, `build_tok_params`, `build_chat_params`),
  `vllm/sampling_params.py` `validate_thinking_token_budget`,
  `vllm/entrypoints/serve/engine/protocol.py` `OpenAIBaseModel` (`extra="allow"`: unknown
  fields are accepted and ignored).
- SGLang, sgl-project/sglang: `python/sglang/srt/entrypoints/openai/protocol.py` @ 004c82e0
  (`ChatCompletionRequest`, `normalize_reasoning_inputs`; no `extra` setting: unknown fields
  are silently dropped), `python/sglang/srt/sampling/custom_logit_processor.py` @ 065927d1
  (`CustomLogitProcessor.to_str`, `ThinkingBudgetLogitProcessor.__call__`).
- NVIDIA Dynamo, ai-dynamo/dynamo: `lib/llm/src/protocols/openai/chat_completions.rs` @
  a226db21 (`NvCreateChatCompletionRequest`: `thinking_token_budget: Option<u32>` at the
  root, `chat_template_args` alias `chat_template_kwargs`, `thinking`, `nvext`, a flattened
  `unsupported_fields` catch-all refused at validation: unknown fields get HTTP 400),
  `lib/llm/src/protocols/openai/common_ext.rs` @ 0d98a95c (`CommonExt`),
  `lib/llm/src/protocols/openai.rs` @ a226db21 (the root budget wins over the legacy
  `nvext.max_thinking_tokens`; `max_completion_tokens` over `max_tokens`).
- llama.cpp, ggml-org/llama.cpp: `tools/server/server-task.cpp` and
  `tools/server/server-common.cpp` @ 00efb3e1 (`n_predict`, then `max_completion_tokens`,
  then `max_tokens`; `chat_template_kwargs.enable_thinking` must be a boolean; unknown
  fields are ignored), the budget read as `reasoning_budget_tokens` falling back to
  `thinking_budget_tokens` (-1: the server's `--reasoning-budget`), `common/
  reasoning-budget.cpp` @ 007d7135 (the sampler forces the end of thinking at the budget).
  Usage reports no reasoning tokens: the reasoning is `message.reasoning_content`.
"""

from __future__ import annotations

import json
import pickletools

EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")

ENGINE_MODELS = {
    "vllm": {
        "source": "vllm/entrypoints/openai/chat_completion/protocol.py ChatCompletionRequest",
        "commit": "vllm 0.33.0 (4ba787ec9)",
        "extra": "allow",  # unknown fields accepted, logged at debug level, ignored
        "fields": {
            "model": "str",
            "messages": "list",
            "max_tokens": "int|None",  # deprecated in favour of max_completion_tokens
            "max_completion_tokens": "int|None",
            "thinking_token_budget": "budget",  # int >= 0 or -1 (unlimited -> None)
            "chat_template_kwargs": "dict|None",
            "reasoning_effort": "effort|None",
        },
    },
    "sglang": {
        "source": "python/sglang/srt/entrypoints/openai/protocol.py ChatCompletionRequest",
        "commit": "004c82e07d876f6e4a0ad6e15325706b0f478f1a",
        "extra": "ignore",  # unknown fields silently dropped
        "fields": {
            "model": "str",
            "messages": "list",
            "max_tokens": "int|None",
            "max_completion_tokens": "int|None",
            "custom_params": "dict|None",
            "custom_logit_processor": "str|None",
            "chat_template_kwargs": "dict|None",
            "reasoning_effort": "effort|None",
        },
    },
    "dynamo": {
        "source": "lib/llm/src/protocols/openai/chat_completions.rs NvCreateChatCompletionRequest",
        "commit": "a226db213493c3ba728f0e8cca425563f9013d08",
        "extra": "forbid",  # unsupported_fields: HTTP 400 "Unsupported parameter(s)"
        "fields": {
            "model": "str",
            "messages": "list",
            "max_tokens": "int|None",
            "max_completion_tokens": "int|None",
            "thinking_token_budget": "u32|None",
            "chat_template_kwargs": "dict|None",
            "reasoning_effort": "effort|None",
        },
    },
    "llamacpp": {
        "source": "tools/server/server-task.cpp, server-common.cpp",
        "commit": "00efb3e184262872916bf136b3df63c1822a19bd",
        "extra": "ignore",  # unknown fields ignored
        "fields": {
            "model": "str|None",
            "messages": "list",
            "max_tokens": "int|None",
            "max_completion_tokens": "int|None",
            "n_predict": "int|None",
            "thinking_budget_tokens": "budget",
            "reasoning_budget_tokens": "budget",
            "chat_template_kwargs": "dict|None",
            "reasoning_effort": "effort|None",
        },
    },
}

#: NVIDIA Dynamo's chat-completions root fields: the OpenAI request it embeds, `CommonExt`
#: (common_ext.rs @ 0d98a95c), its own (chat_completions.rs @ a226db21) and the extras its
#: validator lets through (`PASSTHROUGH_EXTRA_FIELDS`, validate.rs @ 0285dda8)
DYNAMO_CHAT_FIELDS = frozenset(
    """messages model store reasoning_effort metadata frequency_penalty logit_bias logprobs
    top_logprobs max_tokens max_completion_tokens n modalities prediction audio
    presence_penalty response_format seed service_tier stop stream stream_options
    temperature top_p tools tool_choice parallel_tool_calls user web_search_options
    function_call functions ignore_eos min_tokens top_k repetition_penalty
    include_stop_str_in_output guided_json guided_regex guided_grammar guided_choice
    guided_decoding_backend add_generation_prompt continue_final_message nvext
    chat_template_args chat_template_kwargs thinking thinking_token_budget media_io_kwargs
    return_tokens_as_token_ids cache_salt stop_token_ids detokenize allowed_token_ids
    bad_words_token_ids logprob_token_ids""".split()
)

#: the chat fields llama.cpp's server reads (server-task.cpp / server-common.cpp @ 00efb3e1;
#: it ignores any other)
LLAMACPP_CHAT_FIELDS = frozenset(
    """messages model stream stream_options temperature top_p top_k min_p typical_p
    repeat_penalty presence_penalty frequency_penalty seed stop n n_predict max_tokens
    max_completion_tokens logit_bias logprobs top_logprobs response_format json_schema
    grammar tools tool_choice parallel_tool_calls chat_template_kwargs reasoning_format
    reasoning_effort thinking_budget_tokens reasoning_budget_tokens
    reasoning_budget_start_tag reasoning_budget_end_tag reasoning_budget_message
    reasoning_budget_arm_immediately id_slot cache_prompt lora samplers""".split()
)

#: every field name of vLLM's `ChatCompletionRequest` (vllm-project/vllm @ 002032ee,
#: `vllm/entrypoints/openai/chat_completion/protocol.py`): the gateway's forwarded fields
#: are checked against it
VLLM_CHAT_FIELDS = frozenset(
    """messages model frequency_penalty logit_bias logprobs top_logprobs max_tokens
    max_completion_tokens n presence_penalty response_format seed stop stream stream_options
    temperature top_p tools tool_choice reasoning_effort thinking_token_budget
    include_reasoning parallel_tool_calls user use_beam_search top_k min_p repetition_penalty
    watermarking length_penalty stop_token_ids include_stop_str_in_output ignore_eos
    min_tokens skip_special_tokens spaces_between_special_tokens truncate_prompt_tokens
    truncation_side prompt_logprobs logprob_token_ids allowed_token_ids bad_words echo
    add_generation_prompt continue_final_message add_special_tokens documents chat_template
    chat_template_kwargs media_io_kwargs mm_processor_kwargs structured_outputs priority
    request_id session_id return_tokens_as_token_ids return_token_ids
    routed_experts_prompt_start return_token_offsets return_prompt_text return_mm_kwargs
    cache_salt kv_transfer_params ec_transfer_params vllm_xargs repetition_detection
    stream_interval""".split()
)

#: SGLang's `ChatCompletionRequest` field names (sglang 0.5.23, the version CI installs;
#: used when sglang is not installed)
SGLANG_CHAT_FIELDS = frozenset(
    """bootstrap_host bootstrap_port bootstrap_room cache_salt chat_template_kwargs
    continue_final_message custom_logit_processor custom_params data_parallel_rank
    disagg_prefill_dp_rank ebnf extra_key frequency_penalty ignore_eos images_config
    input_ids logit_bias logprobs lora_path max_completion_tokens max_dynamic_patch max_tokens
    messages min_dynamic_patch min_p min_tokens mm_processor_kwargs model n no_stop_trim
    parallel_tool_calls presence_penalty priority reasoning_effort regex repetition_penalty
    response_format return_cached_tokens_details return_flat_raw_output_top_logprobs
    return_flat_raw_top_logprobs_b64 return_hidden_states return_input_ids_in_sglext
    return_meta_info return_output_ids_in_sglext return_prompt_token_ids return_routed_experts
    return_sampling_mask return_spec_tokens_details return_token_ids rid routed_dp_rank
    routed_experts_start_len sampling_logprobs_mode seed separate_reasoning session_id
    session_params skip_special_tokens stop stop_regex stop_token_ids stream stream_options
    stream_reasoning task temperature thinking tool_choice tools top_k top_logprobs top_p
    use_audio_in_video user video_config watermark""".split()
)

# SGLang's built-in thinking-budget processors (custom_logit_processor.py @ 065927d1)
SGLANG_BUDGET_PROCESSORS = {
    ("sglang.srt.sampling.custom_logit_processor", "Qwen3ThinkingBudgetLogitProcessor"),
    ("sglang.srt.sampling.custom_logit_processor", "DeepSeekR1ThinkingBudgetLogitProcessor"),
}


class RequestError(ValueError):
    """The engine would answer HTTP 400 (or silently ignore the field: see the message)."""


def _check(kind: str, value, field: str):
    optional = kind.endswith("|None")
    base = kind.removesuffix("|None")
    if value is None:
        if optional or base == "budget":
            return
        raise RequestError(f"{field}: required")
    ok = {
        "str": isinstance(value, str),
        "list": isinstance(value, list),
        "dict": isinstance(value, dict),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "effort": value in EFFORTS,
        # Dynamo's Option<u32>: a non-negative integer (no -1)
        "u32": isinstance(value, int) and not isinstance(value, bool) and value >= 0,
        # vLLM validate_thinking_token_budget: bools and floats refused; -1 or >= 0
        "budget": isinstance(value, int) and not isinstance(value, bool) and value >= -1,
    }[base]
    if not ok:
        raise RequestError(f"{field}: {value!r} is not a valid {base}")


def _processor_reference(text: str) -> tuple[str, str]:
    """(module, class) that an SGLang `custom_logit_processor` string loads, without loading
    it: the pickle is disassembled and must be a single global reference."""
    try:
        payload = bytes.fromhex(json.loads(text)["callable"])
    except (ValueError, KeyError, TypeError) as e:
        raise RequestError(f"custom_logit_processor: not a to_str() string ({e})") from None
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(payload)]
    names = [arg for name, arg in ops if name == "SHORT_BINUNICODE"]
    if [n for n, _ in ops if n not in ("MEMOIZE", "FRAME", "PROTO")] != [
        "SHORT_BINUNICODE",
        "SHORT_BINUNICODE",
        "STACK_GLOBAL",
        "STOP",
    ]:
        raise RequestError("custom_logit_processor: not a reference to an importable class")
    return names[0], names[1]


def validate_request(engine: str, body: dict) -> dict:
    """Validate `body` as `engine` would; return what it acts on.

    Keys: `max_new_tokens`, `thinking_budget` (the enforced limit, None for none),
    `enable_thinking` (None when the request leaves it to the template), `enforced_by`
    (SGLang: "processor", "strict" or None).
    """
    model = ENGINE_MODELS[engine]
    unknown = set(body) - set(model["fields"])
    if unknown:  # vLLM ignores them, SGLang drops them: either way they do nothing
        raise RequestError(f"{engine}: fields the engine does not read: {sorted(unknown)}")
    for field, kind in model["fields"].items():
        _check(kind, body.get(field), field)
    limit = body.get("max_completion_tokens")
    if limit is None or (engine == "sglang" and limit == 0):
        limit = body.get("max_tokens")
    if limit is not None and limit < 1:
        raise RequestError(f"max tokens must be >= 1, got {limit}")
    kwargs = dict(body.get("chat_template_kwargs") or {})
    effort = body.get("reasoning_effort")
    if effort is not None and "enable_thinking" not in kwargs:
        kwargs["enable_thinking"] = effort != "none"  # both engines
    out = {
        "max_new_tokens": limit,
        "enable_thinking": kwargs.get("enable_thinking"),
        "thinking_budget": None,
        "enforced_by": None,
    }
    if engine == "vllm" or engine == "dynamo":
        budget = body.get("thinking_token_budget")
        out["thinking_budget"] = None if budget in (None, -1) else budget
        return out
    if engine == "llamacpp":
        n_predict = body.get("n_predict")
        if n_predict is not None:  # read before max_completion_tokens
            out["max_new_tokens"] = n_predict
        kwargs_ = body.get("chat_template_kwargs") or {}
        if "enable_thinking" in kwargs_ and not isinstance(kwargs_["enable_thinking"], bool):
            raise RequestError("chat_template_kwargs.enable_thinking: invalid type")
        budget = body.get("reasoning_budget_tokens", -1)
        if budget == -1:
            budget = body.get("thinking_budget_tokens", -1)
        out["thinking_budget"] = None if budget == -1 else budget
        return out
    params = body.get("custom_params") or {}
    budget = params.get("thinking_budget")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 0:
        return out  # ThinkingBudgetLogitProcessor skips the request: no limit
    processor = body.get("custom_logit_processor")
    if processor is None:
        out["enforced_by"] = "strict"  # only on a server with --enable-strict-thinking
    elif _processor_reference(processor) in SGLANG_BUDGET_PROCESSORS:
        out["enforced_by"] = "processor"  # only with --enable-custom-logit-processor
    else:
        raise RequestError(
            f"custom_logit_processor: {_processor_reference(processor)} is not a "
            "thinking-budget processor"
        )
    out["thinking_budget"] = budget
    return out


def sglang_request_model():
    """SGLang's own `ChatCompletionRequest` if sglang is installed, else None.

    Only its protocol module is imported: the package's `__init__` loads torch, which the
    request model does not need, so the package is entered through a bare namespace (and
    IPython, imported by a utility module for notebooks, is stubbed when absent). CI installs
    `sglang --no-deps` for this (`.ci/run`).
    """
    import importlib.util
    import sys
    import types

    try:
        spec = importlib.util.find_spec("sglang")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    saved = {k: v for k, v in sys.modules.items() if k == "sglang" or k.startswith("sglang.")}
    if "sglang" not in sys.modules:
        package = types.ModuleType("sglang")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["sglang"] = package
    if importlib.util.find_spec("IPython") is None:
        ipython, display = types.ModuleType("IPython"), types.ModuleType("IPython.display")
        display.HTML = display.display = lambda *a, **k: None
        ipython.display = display
        sys.modules.setdefault("IPython", ipython)
        sys.modules.setdefault("IPython.display", display)
    try:
        from sglang.srt.entrypoints.openai.protocol import ChatCompletionRequest
    except Exception:  # noqa: BLE001 - another sglang layout: fall back to the pinned copy
        for k in [k for k in sys.modules if k == "sglang" or k.startswith("sglang.")]:
            sys.modules.pop(k, None)
        sys.modules.update(saved)
        return None
    return ChatCompletionRequest
