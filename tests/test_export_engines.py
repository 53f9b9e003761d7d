"""Exported request bodies against the engines' own request models, and over the wire.

Every body `export_policy` writes is validated against the chat-completions request fields
of vLLM and SGLang (`engine_schemas.py`: pinned copies of the engines' request models, with
their source files and commits; the engines' own pydantic models when the engines are
installed), and sent with the real `openai` client to a loopback HTTP server, which must
receive exactly the fields of the policy.
"""

import json
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from engine_schemas import RequestError, sglang_request_model, validate_request

import jaxopt_tokens as jt

openai = pytest.importorskip("openai")

# budgets that exercise every branch: zero, small, mid, above the effort bands, no limit
TOKENS = {
    "AIME": 0.0,
    "GSM8K": 340.89,
    "GPQA": 5000.0,
    "CRUXEval": 12000.0,
    "BBH": None,
    "ARC-Challenge": 30.14,
}
SETTINGS = [
    dict(engine="vllm"),
    dict(engine="vllm", zero_budget="budget"),
    dict(engine="sglang"),
    dict(engine="sglang", sglang_processor="deepseek-r1", zero_budget="budget"),
    dict(engine="sglang", sglang_processor="strict"),
    dict(engine="openai"),
    dict(engine="openai", zero_budget="budget"),
]


def _policies():
    w = jt.default_workload()
    for kw in SETTINGS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jt.UnstableQueueWarning)
            yield kw, jt.deploy.export_policy(w, TOKENS, **kw)


@pytest.mark.parametrize(
    "kw,policy", list(_policies()), ids=["-".join(map(str, kw.values())) for kw in SETTINGS]
)
def test_every_body_is_a_valid_request_for_its_engine(kw, policy):
    engines = {"vllm": ["vllm"], "sglang": ["sglang"], "openai": ["vllm", "sglang"]}
    for name, task in policy["tasks"].items():
        body = {"model": "Qwen/Qwen3-8B", "messages": [{"role": "user", "content": "hi"}]}
        body |= task["request"]
        for engine in engines[kw["engine"]]:
            parsed = validate_request(engine, body)
            # the engine reads the limit and the budget we meant
            assert parsed["max_new_tokens"] == task["request"].get(
                "max_completion_tokens", task["request"].get("max_tokens")
            ), (engine, name)
            budget = task["budget"]
            if kw["engine"] == "openai":
                thinking = parsed["enable_thinking"]
                assert thinking is (budget != 0 or kw.get("zero_budget") == "budget"), name
                continue
            if budget == 0 and kw.get("zero_budget", "disable") == "disable":
                assert parsed["enable_thinking"] is False and parsed["thinking_budget"] is None
            elif budget is None:
                assert parsed["thinking_budget"] is None and parsed["enable_thinking"] is not False
            else:
                assert parsed["thinking_budget"] == budget, (engine, name)
            if engine == "sglang" and parsed["thinking_budget"] is not None:
                route = kw.get("sglang_processor", "qwen3")
                assert parsed["enforced_by"] == ("strict" if route == "strict" else "processor")


class _Recorder(BaseHTTPRequestHandler):
    bodies: list = []

    def do_POST(self):  # noqa: N802 - the http.server API
        n = int(self.headers["Content-Length"])
        type(self).bodies.append(json.loads(self.rfile.read(n)))
        reply = json.dumps(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "ok"},
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(scope="module")
def loopback():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_the_openai_client_sends_exactly_the_policys_fields(loopback):
    client = openai.OpenAI(base_url=loopback, api_key="EMPTY", max_retries=0)
    for kw, policy in _policies():
        for name, task in policy["tasks"].items():
            _Recorder.bodies.clear()
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # the client must not warn about any field
                reply = client.chat.completions.create(
                    model="Qwen/Qwen3-8B",
                    messages=[{"role": "user", "content": "hi"}],
                    **jt.deploy.openai_client_kwargs(policy, name),
                )
            assert reply.choices[0].message.content == "ok"
            (sent,) = _Recorder.bodies
            assert sent.pop("model") == "Qwen/Qwen3-8B" and sent.pop("messages")
            assert sent == task["request"], (kw, name)


@pytest.mark.parametrize(
    "engine,body,needle",
    [
        ("vllm", {"thinking_token_budget": 1.5}, "thinking_token_budget"),
        ("vllm", {"thinking_token_budget": True}, "thinking_token_budget"),
        ("vllm", {"thinking_token_budget": -2}, "thinking_token_budget"),
        ("vllm", {"max_tokens": 10, "thinking_budget": 5}, "does not read"),
        ("sglang", {"thinking_budget": 5}, "does not read"),
        ("sglang", {"reasoning_effort": "extreme"}, "reasoning_effort"),
        (
            "sglang",
            {"custom_params": {"thinking_budget": 5}, "custom_logit_processor": "x"},
            "to_str",
        ),
    ],
)
def test_the_schema_check_refuses_what_the_engines_refuse_or_ignore(engine, body, needle):
    """The check is not vacuous: bodies the engines reject, or whose budget they would
    silently ignore, fail it."""
    body = {"model": "m", "messages": [], **body}
    with pytest.raises(RequestError, match=needle):
        validate_request(engine, body)


def test_sglangs_own_request_model_reads_every_body_as_we_meant():
    """Where sglang is installed (CI installs it without its GPU dependencies), its own
    pydantic `ChatCompletionRequest` parses every exported body: nothing is dropped, the
    output limit and the custom params reach the sampling parameters, and a zero effort or
    a disabled zero budget turns thinking off."""
    model = sglang_request_model()
    if model is None:
        pytest.skip("sglang is not installed (CI installs it; see .ci/run)")
    for kw, policy in _policies():
        if kw["engine"] not in ("sglang", "openai"):
            continue
        for name, task in policy["tasks"].items():
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            body |= task["request"]
            r = model.model_validate(body)
            for field, value in task["request"].items():
                got = getattr(r, field)
                if field == "chat_template_kwargs":
                    assert got["enable_thinking"] is value["enable_thinking"], name
                else:
                    assert got == value, (kw, name, field)
            params = r.to_sampling_params([], {}, None)
            assert params["max_new_tokens"] == task["request"]["max_completion_tokens"]
            if "custom_params" in task["request"]:
                assert params["custom_params"] == task["request"]["custom_params"]
            thinking = (r.chat_template_kwargs or {}).get("enable_thinking")
            if task["budget"] == 0 and kw.get("zero_budget", "disable") == "disable":
                assert thinking is False, (kw, name)
            elif kw["engine"] == "openai":
                assert thinking is True, (kw, name)
