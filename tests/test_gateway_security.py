"""The gateway as an attacker meets it: a hostile-client suite on loopback (a real gateway in
front of a recording engine that accepts anything and logs what reaches it), and the
meta-tests that list every field the gateway forwards and every route it serves.

Each test names the defect class it guards (the gateway trial, round three): bodies that
locked the gateway, clients raising their own budget or forwarding a pickled processor,
routes that passed through, upstream secrets in answers, a controller blind to refused load,
SSE and compression edge cases, readiness and shutdown."""

from __future__ import annotations

import asyncio
import gzip
import json
import string
import sys
import threading
import time

import httpx
import openai
import pytest
from conftest import FUZZ_SCALE, scaled_table1
from fake_engine import Loopback
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import jaxopt_tokens as jt
from jaxopt_tokens import gateway
from jaxopt_tokens.gateway._request import (
    OWNED_FIELDS,
    REFUSED_FIELDS,
    GatewayError,
    apply_policy,
    check_body,
    client_fields,
)

pytestmark = pytest.mark.timeout(120)
SCALE = 0.01
MSG = [{"role": "user", "content": "hi"}]


def fast_workload() -> jt.Workload:
    return scaled_table1(SCALE)


class Recorder:
    """An engine that accepts any body, records it with its headers, and misbehaves on
    demand: `mode` is "ok", "secret500", "redirect", "gzip" (a gzip-encoded stream), "cut"
    (a stream cut mid-line), "slow" (each answer takes `delay` s) or "long" (a stream of
    `delay` s)."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.paths: list[str] = []
        self.mode = "ok"
        self.delay = 0.0
        self.app = Starlette(
            routes=[
                Route("/{path:path}", self.any, methods=["GET", "POST", "PUT", "DELETE"]),
            ]
        )

    async def any(self, request: Request):
        self.paths.append(f"{request.method} {request.url.path}")
        self.headers.append(dict(request.headers))
        if request.method == "GET":
            return JSONResponse({"object": "list", "data": [{"id": "m", "object": "model"}]})
        body = json.loads(await request.body())
        self.bodies.append(body)
        if self.mode == "secret500":
            return Response("engine exploded at /opt/secret/model.py token=sk-SECRET", 500)
        if self.mode == "redirect":
            return Response(status_code=307, headers={"location": "http://10.1.2.3:8000/x"})
        if self.mode == "slow":
            await asyncio.sleep(self.delay)
        usage = {
            "prompt_tokens": 3,
            "completion_tokens": 30,
            "completion_tokens_details": {"reasoning_tokens": 10},
        }
        chunk = {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}],
        }
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": "c",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "m",
                    "usage": usage,
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "x"},
                        }
                    ],
                }
            )
        last = {**chunk, "choices": [], "usage": usage}
        lines = [f"data: {json.dumps(chunk)}\n\n" for _ in range(3)]
        if (body.get("stream_options") or {}).get("include_usage"):
            lines.append(f"data: {json.dumps(last)}\n\n")
        lines.append("data: [DONE]\n\n")
        if self.mode == "gzip":
            data = gzip.compress("".join(lines).encode())
            return Response(
                data, headers={"content-type": "text/event-stream", "content-encoding": "gzip"}
            )

        async def events():
            yield lines[0].encode()
            if self.mode == "cut":
                yield lines[1].encode()[:25]
                raise ConnectionAbortedError("the engine dies mid-line")
            if self.mode == "long":
                end = time.monotonic() + self.delay
                while time.monotonic() < end:
                    await asyncio.sleep(0.05)
                    yield lines[1].encode()
            for line in lines[1:]:
                yield line.encode()

        return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def recorder():
    rec = Recorder()
    with Loopback(rec.app) as server:
        rec.url = server.url
        yield rec


def start(upstream_url: str, **settings) -> Loopback:
    config = gateway.GatewayConfig(
        upstream=upstream_url, **{"interval": 60.0, "learn_service": False, **settings}
    )
    app = gateway.create_app(config, workload=fast_workload())
    return Loopback(app, server_class=gateway.Server, grace=10).start()


@pytest.fixture(scope="module")
def vllm_gw(recorder):
    with start(recorder.url, max_in_flight=4) as gw:
        gw.policy = httpx.get(gw.url + "/policy", timeout=10).json()
        yield gw


@pytest.fixture(autouse=True)
def _reset(recorder):
    recorder.mode, recorder.delay = "ok", 0.0
    recorder.bodies.clear()
    recorder.paths.clear()
    recorder.headers.clear()


def post(gw, body, path="/v1/chat/completions", raw=None, headers=None, task="GSM8K"):
    h = {
        "content-type": "application/json",
        **({"X-Task-Type": task} if task else {}),
        **(headers or {}),
    }
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(gw.url + path, content=content, headers=h, timeout=30)


def one_line_error(r, status, *words):
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert "\n" not in r.text.strip() and "Traceback" not in r.text
    for w in words:
        assert w in err["message"], (w, err["message"])
    return err["message"]


def in_flight(gw) -> float:
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    line = next(x for x in text.splitlines() if x.startswith("jt_gateway_in_flight "))
    return float(line.split()[1])


# --------------------------------------------------------------------------- bodies (D1, G1, G2)

BAD_BODIES = [
    (b'{"model":"m","messages":[],"temperature":NaN}', "not finite"),
    (b'{"model":"m","messages":[],"temperature":Infinity}', "not finite"),
    (b'{"model":"m","messages":[],"temperature":-Infinity}', "not finite"),
    (b'{"model":"m","messages":[],"temperature":1e999}', "overflows"),
    (b'{"model":"m","messages":[{"role":"user","content":"\\ud800"}]}', "surrogate"),
    (b'{"model":"m","messages":[],"seed":1' + b"0" * 5000 + b"}", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    (b'{"model":"m","messages":"hi"}', "messages: expected a list"),
    (b'{"model":"m","messages":[],"stream":"yes"}', "stream: expected a bool"),
    (b'{"model":"m","messages":[],"max_tokens":1.5}', "max_tokens"),
    (b'{"model":"m","messages":[],"thinking_token_budget":true}', "thinking_token_budget"),
    (b'\xff\xfe{"model":"m"}', "not valid JSON"),
]


@pytest.mark.parametrize("raw,words", BAD_BODIES, ids=range(len(BAD_BODIES)))
def test_a_bad_body_gets_400_in_one_line_and_never_holds_a_slot(vllm_gw, recorder, raw, words):
    for _ in range(6):  # more than max_in_flight (4): a leaked slot would lock the gateway
        one_line_error(post(vllm_gw, None, raw=raw), 400, words)
    assert post(vllm_gw, {"model": "m", "messages": MSG}).status_code == 200
    assert in_flight(vllm_gw) == 0
    assert len(recorder.bodies) == 1


def test_non_text_content_parts_are_skipped_by_the_prompt_rules(recorder):
    with start(recorder.url, rules=(gateway.TaskRule("AIME", pattern="olympiad"),)) as gw:
        for text in (5, None, ["x"], {"a": 1}):
            body = {
                "model": "m",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": text},
                            {"type": "text", "text": "an olympiad"},
                        ],
                    }
                ],
            }
            r = post(gw, body, task=None)
            assert r.status_code == 200, r.text
        assert recorder.bodies[-1]["chat_template_kwargs"] == {"enable_thinking": False}


# --------------------------------------------------------------------------- budgets (D2, D3)


def test_a_client_can_lower_the_policy_but_never_raise_it(vllm_gw, recorder):
    fields = vllm_gw.policy["tasks"]["GSM8K"]["request"]
    limit, budget = fields["max_completion_tokens"], fields["thinking_token_budget"]
    attacks = [
        {"max_completion_tokens": 10**6, "max_tokens": 1, "thinking_token_budget": 100000},
        {"thinking_token_budget": 100000},
        {"thinking_token_budget": -1},
        {"reasoning_effort": "high"},
        {"chat_template_kwargs": {"foo": 1}},
        {"max_tokens": 10**6},
    ]
    for extra in attacks:
        r = post(vllm_gw, {"model": "m", "messages": MSG, **extra})
        assert r.status_code == 200, r.text
        sent = recorder.bodies[-1]
        assert sent["max_completion_tokens"] <= limit, (extra, sent)
        assert sent.get("max_tokens", 0) <= limit, (extra, sent)
        assert 0 <= sent["thinking_token_budget"] <= budget, (extra, sent)
        assert "reasoning_effort" not in sent
    assert recorder.bodies[-2]["chat_template_kwargs"] == {"foo": 1}  # kept, budget too
    post(
        vllm_gw,
        {"model": "m", "messages": MSG, "max_completion_tokens": 7, "thinking_token_budget": 3},
    )
    assert recorder.bodies[-1]["max_completion_tokens"] == 7
    assert recorder.bodies[-1]["thinking_token_budget"] == 3


def test_a_client_cannot_turn_thinking_back_on_for_a_zero_budget_task(vllm_gw, recorder):
    assert vllm_gw.policy["tasks"]["AIME"]["budget"] == 0
    for kwargs in ({"enable_thinking": True}, {"thinking": True, "x": 2}, {}):
        post(
            vllm_gw,
            {
                "model": "m",
                "messages": MSG,
                "chat_template_kwargs": kwargs,
                "thinking_token_budget": 500,
            },
            task="AIME",
        )
        sent = recorder.bodies[-1]
        assert sent["chat_template_kwargs"]["enable_thinking"] is False
        assert "thinking" not in sent["chat_template_kwargs"]
        assert "thinking_token_budget" not in sent


def test_sglang_a_clients_processor_is_refused_and_its_budget_only_lowered(recorder):
    from engine_schemas import SGLANG_BUDGET_PROCESSORS

    from jaxopt_tokens._deploy.export import _sglang_processor_reference  # noqa: PLC2701

    evil = json.dumps(
        {"callable": "80049515000000000000008c05706f736978948c0673797374656d9493942e"}
    )
    with start(recorder.url, engine="sglang") as gw:
        budget = httpx.get(gw.url + "/policy").json()["tasks"]["GSM8K"]["budget"]
        for extra in (
            {"custom_logit_processor": evil},
            {"custom_logit_processor": evil, "custom_params": {"thinking_budget": 9}},
        ):
            one_line_error(
                post(gw, {"model": "m", "messages": MSG, **extra}), 400, "custom_logit_processor"
            )
        for extra in ({}, {"custom_params": {"thinking_budget": 10**6, "evil": 1}}):
            post(gw, {"model": "m", "messages": MSG, **extra})
            sent = recorder.bodies[-1]
            assert sent["custom_params"] == {"thinking_budget": budget}
            module_class = [
                r
                for r in SGLANG_BUDGET_PROCESSORS
                if _sglang_processor_reference(*r) == sent["custom_logit_processor"]
            ]
            assert module_class, sent["custom_logit_processor"]
        post(gw, {"model": "m", "messages": MSG, "custom_params": {"thinking_budget": 4}})
        assert recorder.bodies[-1]["custom_params"] == {"thinking_budget": 4}
        # a zero-budget task: no processor at all, thinking off
        post(
            gw,
            {"model": "m", "messages": MSG, "custom_params": {"thinking_budget": 99}},
            task="AIME",
        )
        sent = recorder.bodies[-1]
        assert "custom_logit_processor" not in sent and "custom_params" not in sent
        assert sent["chat_template_kwargs"] == {"enable_thinking": False}


@pytest.mark.parametrize("field", sorted(REFUSED_FIELDS))
def test_every_refused_field_is_refused_by_name(vllm_gw, recorder, field):
    one_line_error(post(vllm_gw, {"model": "m", "messages": MSG, field: "x"}), 400, field)
    assert recorder.bodies == []


def test_an_unknown_field_is_refused_unless_the_operator_allows_it(vllm_gw, recorder):
    one_line_error(
        post(vllm_gw, {"model": "m", "messages": MSG, "frobnicate": 1}),
        400,
        "frobnicate",
        "allow_fields",
    )
    with start(recorder.url, allow_fields=("frobnicate",)) as gw:
        assert post(gw, {"model": "m", "messages": MSG, "frobnicate": 1}).status_code == 200
        assert recorder.bodies[-1]["frobnicate"] == 1


def test_more_choices_than_allowed_are_refused(vllm_gw):
    one_line_error(post(vllm_gw, {"model": "m", "messages": MSG, "n": 50}), 400, "n:")


POLICIES = {
    "vllm": {"max_completion_tokens": 597, "thinking_token_budget": 341},
    "vllm-off": {"max_completion_tokens": 256, "chat_template_kwargs": {"enable_thinking": False}},
    "sglang": {
        "max_completion_tokens": 597,
        "custom_params": {"thinking_budget": 341},
        "custom_logit_processor": "{}",
    },
    "openai": {"max_completion_tokens": 597, "reasoning_effort": "low"},
}
_ints = st.one_of(st.none(), st.integers(-2, 10**7))


@settings(max_examples=300 * FUZZ_SCALE, deadline=None)
@given(
    which=st.sampled_from(sorted(POLICIES)),
    mct=_ints,
    mt=_ints,
    ttb=_ints,
    cp=_ints,
    effort=st.one_of(
        st.none(), st.sampled_from(["none", "minimal", "low", "medium", "high", "xhigh", "max"])
    ),
    kwargs=st.dictionaries(
        st.sampled_from(["enable_thinking", "thinking", "foo"]),
        st.one_of(st.booleans(), st.integers()),
    ),
    override=st.booleans(),
)
def test_the_forwarded_body_never_exceeds_the_policy(
    which, mct, mt, ttb, cp, effort, kwargs, override
):
    """Whatever a client sends in the owned fields, every limit, budget and reasoning switch
    forwarded is at most the policy's (the pure function the gateway runs)."""
    engine = which.split("-")[0]
    body = {
        "model": "m",
        "messages": MSG,
        "max_completion_tokens": mct,
        "max_tokens": mt,
        "thinking_token_budget": ttb,
        "custom_params": {"thinking_budget": cp},
        "reasoning_effort": effort,
        "chat_template_kwargs": kwargs,
    }
    body = {k: v for k, v in body.items() if v is not None}
    allowed = client_fields("chat", engine)
    body = {k: v for k, v in body.items() if k in allowed}
    try:
        check_body(body, allowed, 1)
    except GatewayError:  # refused: nothing is forwarded
        return
    policy = POLICIES[which]
    out = apply_policy(body, policy, "chat", override)
    assert out["max_completion_tokens"] <= policy["max_completion_tokens"]
    assert out.get("max_tokens", 0) <= policy["max_completion_tokens"]
    if "thinking_token_budget" in policy:
        assert 0 <= out["thinking_token_budget"] <= policy["thinking_token_budget"]
    else:
        assert "thinking_token_budget" not in out
    if "custom_params" in policy:
        assert out["custom_params"].keys() == {"thinking_budget"}
        assert 0 <= out["custom_params"]["thinking_budget"] <= 341
        assert out["custom_logit_processor"] == policy["custom_logit_processor"]
    order = ["none", "minimal", "low", "medium", "high", "xhigh", "max"]
    if "reasoning_effort" in policy:
        assert order.index(out["reasoning_effort"]) <= order.index(policy["reasoning_effort"])
    else:
        assert "reasoning_effort" not in out
    switches = out.get("chat_template_kwargs", {})
    assert switches.get("enable_thinking") in (None, False)
    assert switches.get("thinking") in (None, False)
    if which == "vllm-off":
        assert switches["enable_thinking"] is False


# --------------------------------------------------------------------------- routes (D4)


@pytest.mark.parametrize(
    "method,path",
    [
        ("POST", "/_fault"),
        ("POST", "/v1/responses"),
        ("POST", "/generate"),
        ("POST", "/invocations"),
        ("POST", "/reset_prefix_cache"),
        ("GET", "/server_info"),
        ("POST", "/v1/models"),
        ("DELETE", "/v1/chat/completions"),
        ("GET", "/../etc/passwd"),
    ],
)
def test_routes_that_are_not_budgeted_never_reach_the_engine(vllm_gw, recorder, method, path):
    r = httpx.request(method, vllm_gw.url + path, json={"model": "m", "messages": MSG}, timeout=10)
    assert r.status_code in (404, 405), r.text
    assert r.json()["error"]["message"]
    assert recorder.paths == []


def test_a_trailing_slash_is_the_budgeted_route_not_a_redirect(vllm_gw, recorder):
    r = post(vllm_gw, {"model": "m", "messages": MSG}, path="/v1/chat/completions/")
    assert r.status_code == 200 and "location" not in r.headers
    assert recorder.paths == ["POST /v1/chat/completions"]
    assert "thinking_token_budget" in recorder.bodies[-1]


def test_models_passes_through_and_the_operator_may_opt_routes_in(vllm_gw, recorder):
    assert httpx.get(vllm_gw.url + "/v1/models", timeout=10).json()["data"][0]["id"] == "m"
    assert recorder.paths == ["GET /v1/models"]
    with pytest.raises(jt.InputError, match="passthrough"):
        gateway.GatewayConfig(upstream=recorder.url, passthrough=("/v1/responses",))
    with start(recorder.url, passthrough=("/v1/models", "/version")) as gw:
        assert httpx.get(gw.url + "/version", timeout=10).status_code == 200


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/v1/models/%2e%2e/%2e%2e/metrics",
        b"/v1/models/../../server_info",
        b"/v1/models/..%2F..%2Fflush_cache",
        b"/v1/models/.hidden",
        b"/v1/models/a%20b",
    ],
)
def test_a_pass_through_route_cannot_climb_to_other_engine_routes(vllm_gw, recorder, raw_path):
    """A reviewer's finding: `..` below /v1/models reached any GET route of the engine,
    with the gateway's own engine key (httpx normalised the dot segments)."""
    import socket

    with socket.create_connection(("127.0.0.1", vllm_gw.port), timeout=10) as sock:
        sock.sendall(b"GET " + raw_path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 404"), reply[:200]
    assert recorder.paths == []
    ok = httpx.get(vllm_gw.url + "/v1/models/meta-llama/Llama-3.2-3B", timeout=10)
    assert ok.status_code == 200 and recorder.paths == ["GET /v1/models/meta-llama/Llama-3.2-3B"]


def test_template_rendering_and_reasoning_keys_in_template_kwargs(vllm_gw, recorder):
    """A reviewer's finding: a client's `chat_template` inside `chat_template_kwargs`, or a
    template's own budget key, passed through."""
    for key in ("chat_template", "add_generation_prompt", "tools"):
        body = {"model": "m", "messages": MSG, "chat_template_kwargs": {key: "x"}}
        one_line_error(post(vllm_gw, body), 400, f"chat_template_kwargs.{key}")
    body = {
        "model": "m",
        "messages": MSG,
        "chat_template_kwargs": {
            "thinking_budget": 99999,
            "thinking_mode": "on",
            "enable_reasoning": True,
            "custom_var": 3,
        },
    }
    post(vllm_gw, body)
    assert recorder.bodies[-1]["chat_template_kwargs"] == {"custom_var": 3}
    for field in ("continue_final_message", "add_generation_prompt"):
        one_line_error(post(vllm_gw, {"model": "m", "messages": MSG, field: True}), 400, field)


def test_a_batch_of_prompts_is_one_budget_at_most_max_choices(vllm_gw, recorder):
    body = {"model": "m", "prompt": ["a"] * 50, "max_tokens": 99999}
    one_line_error(post(vllm_gw, body, path="/v1/completions"), 400, "prompt")
    body = {"model": "m", "prompt": [[1, 2, 3]]}
    one_line_error(post(vllm_gw, body, path="/v1/completions"), 400, "token ids")
    assert post(vllm_gw, {"model": "m", "prompt": ["a"]}, path="/v1/completions").status_code == 200
    assert (
        recorder.bodies[-1]["max_tokens"]
        == vllm_gw.policy["tasks"]["GSM8K"]["request"]["max_completion_tokens"]
    )


def test_only_allowed_headers_reach_the_engine(vllm_gw, recorder):
    """A reviewer's finding: engines route by `X-Data-Parallel-Rank`, take `X-Request-Id`
    as the request id and trust `X-Forwarded-For`; a non-ASCII header looked like an outage."""
    headers = {
        "X-Data-Parallel-Rank": "3",
        "X-Request-Id": "dup",
        "X-Forwarded-For": "1.2.3.4",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    assert post(vllm_gw, {"model": "m", "messages": MSG}, headers=headers).status_code == 200
    sent = {k.lower() for k in recorder.headers[-1]}
    assert not sent & {"x-data-parallel-rank", "x-request-id", "x-forwarded-for", "x-task-type"}
    assert "traceparent" in sent
    r = httpx.post(
        vllm_gw.url + "/v1/chat/completions",
        json={"model": "m", "messages": MSG},
        headers={"User-Agent": "caf\u00e9".encode("latin-1")},
        timeout=10,
    )
    one_line_error(r, 400, "not ASCII")
    assert len(recorder.bodies) == 1


def test_an_untrusted_client_cannot_name_its_task(recorder):
    with start(recorder.url, trust_client_task=False, models={"m": "ARC-Challenge"}) as gw:
        post(gw, {"model": "m", "messages": MSG, "metadata": {"task_type": "BBH"}}, task="BBH")
        fields = httpx.get(gw.url + "/policy").json()["tasks"]["ARC-Challenge"]["request"]
        assert recorder.bodies[-1]["thinking_token_budget"] == fields["thinking_token_budget"]


# --------------------------------------------------------------------------- secrets (D5)


def test_no_upstream_url_credential_or_engine_text_reaches_a_client(recorder, caplog):
    with Loopback(Starlette()) as closed:
        port = closed.port
    with start(f"http://admin:s3cr3t-pw@127.0.0.1:{port}") as gw:
        with caplog.at_level("INFO", logger="jaxopt_tokens.gateway"):
            r = post(gw, {"model": "m", "messages": MSG})
        text = one_line_error(r, 502, "upstream unreachable")
        assert str(port) not in text and "s3cr3t" not in text
        assert "s3cr3t" not in caplog.text
    with start(recorder.url) as gw:
        recorder.mode = "secret500"
        text = one_line_error(post(gw, {"model": "m", "messages": MSG}), 502, "500")
        assert "SECRET" not in text and "/opt" not in text
        recorder.mode = "redirect"
        r = post(gw, {"model": "m", "messages": MSG})
        one_line_error(r, 502, "redirect")
        assert "location" not in r.headers and "10.1.2.3" not in r.text


def test_api_keys_for_clients_and_for_policy_and_metrics(recorder, monkeypatch):
    monkeypatch.setenv("JT_TEST_ADMIN", "admin-key-1234")
    with start(
        recorder.url,
        api_key="client-key-123",
        admin_key="env:JT_TEST_ADMIN",
        upstream_key="engine-key-123",
    ) as gw:
        one_line_error(post(gw, {"model": "m", "messages": MSG}), 401, "API key")
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="client-key-123", max_retries=0)
        client.chat.completions.create(model="m", messages=MSG)
        assert recorder.headers[-1]["authorization"] == "Bearer engine-key-123"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(
                base_url=gw.url + "/v1", api_key="wrong-key-123", max_retries=0
            ).chat.completions.create(model="m", messages=MSG)
        for route in ("/policy", "/metrics"):
            assert httpx.get(gw.url + route).status_code == 401
            assert (
                httpx.get(
                    gw.url + route, headers={"authorization": "Bearer client-key-123"}
                ).status_code
                == 401
            )
            assert (
                httpx.get(
                    gw.url + route, headers={"authorization": "Bearer admin-key-1234"}
                ).status_code
                == 200
            )
        assert httpx.get(gw.url + "/healthz").status_code == 200


# --------------------------------------------------------------------------- load (D6)


def test_refused_requests_count_as_offered_load(recorder):
    """max_in_flight 2 in front of a slow engine: 12 concurrent requests, most refused with
    429; the measured arrivals are all 12 (before, only the admitted ones counted)."""
    with start(recorder.url, max_in_flight=2) as gw:
        recorder.mode, recorder.delay = "slow", 1.0

        async def burst():
            async with httpx.AsyncClient(timeout=30) as c:
                return await asyncio.gather(
                    *[
                        c.post(
                            gw.url + "/v1/chat/completions", json={"model": "m", "messages": MSG}
                        )
                        for _ in range(12)
                    ]
                )

        codes = sorted(r.status_code for r in asyncio.run(burst()))
        assert codes.count(429) >= 8 and codes.count(200) >= 2, codes
        assert httpx.get(gw.url + "/policy").json()["gateway"]["requests_in_window"] == 12


# --------------------------------------------------------------------------- protocol (D10-D15)


def _stream(gw, **kw):
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    return list(client.chat.completions.create(model="m", messages=MSG, stream=True, **kw))


def test_a_stream_cut_mid_line_ends_with_an_api_error(vllm_gw, recorder):
    recorder.mode = "cut"
    with pytest.raises(openai.APIError, match="broke the stream"):
        _stream(vllm_gw)
    assert in_flight(vllm_gw) == 0


def test_a_gzip_encoded_upstream_stream_reaches_the_client_decoded(vllm_gw, recorder):
    recorder.mode = "gzip"
    chunks = _stream(vllm_gw, stream_options={"include_usage": True})
    assert [c.choices[0].delta.content for c in chunks if c.choices] == ["x", "x", "x"]
    assert chunks[-1].usage.completion_tokens == 30
    assert recorder.headers[-1]["accept-encoding"] == "identity"


def test_usage_is_asked_for_but_shown_only_to_clients_that_asked(vllm_gw, recorder):
    chunks = _stream(vllm_gw)
    assert recorder.bodies[-1]["stream_options"] == {"include_usage": True}
    assert all(c.usage is None for c in chunks) and len(chunks) == 3


def test_readyz_follows_the_upstream():
    rec = Recorder()
    server = Loopback(rec.app)
    with start(server.url) as gw:
        assert httpx.get(gw.url + "/readyz").status_code == 503
        server.start()
        try:
            time.sleep(1.1)  # the probe's cache
            assert httpx.get(gw.url + "/readyz").json() == {"ready": True}
        finally:
            server.stop()


def test_a_stream_longer_than_the_grace_ends_with_an_error_event(recorder):
    """Shutdown with a 20-s stream in flight and a 1-s grace: the client gets an SSE error
    event (an `APIError`), not a cut connection, and the server stops cleanly."""
    recorder.mode, recorder.delay = "long", 20.0
    gw = start(recorder.url, shutdown_grace=1.0)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    stream = client.chat.completions.create(model="m", messages=MSG, stream=True)
    next(iter(stream))
    stopper = threading.Thread(target=gw.stop)
    began = time.monotonic()
    stopper.start()
    with pytest.raises(openai.APIError, match="shutting down"):
        list(stream)
    stopper.join(20)
    assert not stopper.is_alive() and time.monotonic() - began < 10


# --------------------------------------------------------------------------- meta-tests


def _vllm_fields() -> set[str]:
    from engine_schemas import VLLM_CHAT_FIELDS

    return set(VLLM_CHAT_FIELDS)


def _sglang_fields() -> set[str]:
    from engine_schemas import SGLANG_CHAT_FIELDS, sglang_request_model

    model = sglang_request_model()
    return set(model.model_fields) if model is not None else set(SGLANG_CHAT_FIELDS)


def _openai_fields() -> set[str]:
    from openai.types.chat import completion_create_params

    base = completion_create_params.CompletionCreateParamsBase.__annotations__
    return set(base) | set(completion_create_params.CompletionCreateParamsStreaming.__annotations__)


#: fields the gateway itself reads that an engine may not define (vLLM accepts extra
#: fields, SGLang drops them): the task's metadata
def _dynamo_fields() -> set[str]:
    from engine_schemas import DYNAMO_CHAT_FIELDS

    return set(DYNAMO_CHAT_FIELDS)


def _llamacpp_fields() -> set[str]:
    from engine_schemas import LLAMACPP_CHAT_FIELDS

    return set(LLAMACPP_CHAT_FIELDS)


_READ_BY_GATEWAY = {"metadata"}


@pytest.mark.parametrize("engine", ["vllm", "sglang", "dynamo", "llamacpp", "openai"])
def test_every_forwarded_chat_field_is_a_field_of_the_engines_request_model(engine):
    fields = {
        "vllm": _vllm_fields,
        "sglang": _sglang_fields,
        "dynamo": _dynamo_fields,
        "llamacpp": _llamacpp_fields,
        "openai": _openai_fields,
    }[engine]()
    forwarded = client_fields("chat", engine)
    # OpenAI's `user` is a standard field llama.cpp does not read (it ignores unknown ones)
    ignored = {"user"} if engine == "llamacpp" else set()
    assert forwarded - fields - _READ_BY_GATEWAY - ignored == set()
    assert OWNED_FIELDS[("chat", engine)] <= forwarded
    assert not forwarded & set(REFUSED_FIELDS)
    # the engine's fields that load code or steer its internals are refused, not forwarded
    dangerous = {
        "chat_template",
        "custom_logit_processor",
        "vllm_xargs",
        "kv_transfer_params",
        "priority",
        "lora_path",
        "session_params",
        "bootstrap_host",
        "rid",
        "nvext",
        "n_predict",
        "id_slot",
        "lora",
        "reasoning_budget_start_tag",
        "reasoning_budget_end_tag",
        "reasoning_budget_message",
        "reasoning_budget_arm_immediately",
    }
    assert not (fields & dangerous) & forwarded
    assert dangerous <= set(REFUSED_FIELDS)


def test_the_routes_are_exactly_the_budgeted_the_opted_in_and_the_gateways_own():
    config = gateway.GatewayConfig(upstream="http://127.0.0.1:9")
    app = gateway.create_app(config, workload=fast_workload())
    served = sorted((r.path, tuple(sorted(r.methods - {"HEAD"}))) for r in app.routes)
    assert served == sorted(
        [
            ("/v1/chat/completions", ("POST",)),
            ("/v1/chat/completions/", ("POST",)),
            ("/v1/completions", ("POST",)),
            ("/v1/completions/", ("POST",)),
            ("/v1/models", ("GET",)),
            ("/v1/models/{rest:path}", ("GET",)),
            ("/metrics", ("GET",)),
            ("/policy", ("GET",)),
            ("/healthz", ("GET",)),
            ("/readyz", ("GET",)),
        ]
    )


_text = st.text(alphabet=string.printable + "\u00e9\ud7ff", max_size=30)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(_text, c, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200 * FUZZ_SCALE, deadline=None)
@given(
    body=st.dictionaries(
        st.sampled_from(sorted(client_fields("chat", "vllm") | set(REFUSED_FIELDS) | {"x"})),
        _json,
        max_size=6,
    )
)
def test_arbitrary_bodies_are_forwarded_or_refused_in_one_line(body):
    """Any JSON object: either refused with a `GatewayError` naming a field, or turned into a
    forwarded body within the policy (never another exception)."""
    allowed = client_fields("chat", "vllm")
    try:
        check_body(body, allowed, 1)
    except GatewayError as e:
        assert e.status == 400 and ":" in e.message
        return
    out = apply_policy(body, POLICIES["vllm"], "chat")
    assert out["max_completion_tokens"] <= 597 and out["thinking_token_budget"] <= 341
    json.dumps(out, allow_nan=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
