"""The budget gateway, end to end on loopback: a real gateway (Starlette on uvicorn) in front of
a fake engine that is a real HTTP server (`fake_engine.py`), driven by the real `openai`
client (sync and async, streaming and not). Every test is bounded in time and in requests."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import jax
import numpy as np
import openai
import pytest
from conftest import assert_refused, scaled_table1
from fake_engine import FakeEngine, Loopback
from prometheus_client.parser import text_string_to_metric_families

import jaxopt_tokens as jt
from jaxopt_tokens import gateway

pytestmark = pytest.mark.timeout(120)
SCALE = 0.01  # the workload's times, and its rates' inverse: the fake engine's clock


def fast_workload() -> jt.Workload:
    return scaled_table1(SCALE)


def start_gateway(upstream: Loopback, **settings) -> Loopback:
    config = gateway.GatewayConfig(
        upstream=upstream.url, **{"interval": 60.0, "learn_service": False, **settings}
    )
    app = gateway.create_app(config, workload=fast_workload())
    return Loopback(app).start()


@pytest.fixture
def vllm_engine():
    with Loopback(FakeEngine("vllm", step_time=(0.0141, 0.0), scale=SCALE).app) as server:
        yield server


def policy(gw: Loopback) -> dict:
    return httpx.get(gw.url + "/policy", timeout=10).json()


def budgets(gw: Loopback) -> dict[str, int]:
    return {k: v["budget"] for k, v in policy(gw)["tasks"].items()}


def engine_server(kind: str, **kw) -> tuple[FakeEngine, Loopback]:
    fake = FakeEngine(kind, step_time=(0.0141, 0.0), scale=SCALE, **kw)
    return fake, Loopback(fake.app).start()


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_each_task_gets_its_engine_fields_sync_and_async_streaming_and_not(kind):
    fake, server = engine_server(kind)
    try:
        with start_gateway(
            server,
            engine=kind,
            models={"math-model": "BBH"},
            rules=(gateway.TaskRule("AIME", pattern=r"(?i)olympiad"),),
        ) as gw:
            fields = {t: e["request"] for t, e in policy(gw)["tasks"].items()}
            client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
            msg = [{"role": "user", "content": "2+2?"}]
            r = client.chat.completions.create(
                model="fake", messages=msg, extra_headers={"X-Task-Type": "GSM8K"}
            )
            assert r.usage.completion_tokens > 0
            sent = fake.received[-1]
            for key, value in fields["GSM8K"].items():
                assert sent[key] == value, (key, sent.get(key), value)
            # metadata, the model name and a prompt rule classify too
            client.chat.completions.create(
                model="fake", messages=msg, extra_body={"metadata": {"task_type": "BBH"}}
            )
            assert {k: fake.received[-1][k] for k in fields["BBH"]} == fields["BBH"]
            client.chat.completions.create(model="math-model", messages=msg)
            assert {k: fake.received[-1][k] for k in fields["BBH"]} == fields["BBH"]
            client.chat.completions.create(
                model="fake", messages=[{"role": "user", "content": "An Olympiad problem"}]
            )
            assert {k: fake.received[-1][k] for k in fields["AIME"]} == fields["AIME"]

            async def stream():
                aclient = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
                chunks, usage = 0, None
                s = await aclient.chat.completions.create(
                    model="fake",
                    messages=msg,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_headers={"X-Task-Type": "AIME"},
                )
                async for c in s:
                    chunks += 1
                    usage = c.usage or usage
                await aclient.close()
                return chunks, usage

            chunks, usage = asyncio.run(stream())
            assert {k: fake.received[-1][k] for k in fields["AIME"]} == fields["AIME"]
            # the engine's streamed usage reaches the client: the reasoning it planned under
            # the fields the gateway sent (0 where AIME's budget turns thinking off)
            planned = fake._plan(fake.received[-1])[0]
            assert chunks >= 3
            assert usage.completion_tokens_details.reasoning_tokens == planned
            # an unknown task name is counted and served with the default task's budget
            client.chat.completions.create(
                model="fake", messages=msg, extra_headers={"X-Task-Type": "nope"}
            )
            text = httpx.get(gw.url + "/metrics").text
            assert "jt_gateway_unknown_task_total 1.0" in text
    finally:
        server.stop()


def test_the_clients_tighter_limit_and_own_budget_are_kept():
    fake, server = engine_server("vllm")
    try:
        with start_gateway(server) as gw:
            client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
            msg = [{"role": "user", "content": "hi"}]
            policy_limit = policy(gw)["tasks"]["BBH"]["request"]["max_completion_tokens"]
            client.chat.completions.create(
                model="fake",
                messages=msg,
                max_completion_tokens=7,
                extra_headers={"X-Task-Type": "BBH"},
            )
            assert fake.received[-1]["max_completion_tokens"] == 7
            client.chat.completions.create(
                model="fake",
                messages=msg,
                max_completion_tokens=10**6,
                extra_headers={"X-Task-Type": "BBH"},
            )
            assert fake.received[-1]["max_completion_tokens"] == policy_limit
            client.chat.completions.create(
                model="fake",
                messages=msg,
                extra_body={"thinking_token_budget": 5},
                extra_headers={"X-Task-Type": "BBH"},
            )
            assert fake.received[-1]["thinking_token_budget"] == 5
    finally:
        server.stop()


def test_a_step_in_the_arrival_rate_moves_the_budgets_and_back(vllm_engine):
    """Table I's budgets at 0.05 and 0.5 requests/s (scaled: 5 and 50/s) differ; the gateway
    follows a step up and back down, each within a bounded time (here 15 s: 75 intervals, a
    loaded CI machine included; it takes 1-2 s on a quiet one). A policy is re-solved only
    when the load moves beyond counting noise, so each phase ends when the rate it was solved
    at is within that noise of the true rate; its budget is then the solver's at that rate."""
    with jax.enable_x64(True):  # the solver's own budgets at the two loads, BBH alone
        w = fast_workload()
        k = w.task_names.index("BBH")
        one = np.full(6, 1e-6)
        one[k] = 1
        w = w.replace(share=one / one.sum())

        def optimum(rate: float) -> float:
            return float(jt.solve(w.replace(arrival_rate=rate)).tokens[k])

        at = {r: optimum(r) for r in (5.0, 50.0)}
    assert at[50.0] < 0.5 * at[5.0]
    window, evidence = 4.0, 3.0

    def near(rate: float):
        noise = (evidence + 1) * np.sqrt(rate * window) / window  # in requests/s
        return lambda p: (
            p["gateway"]["version"] > 0 and abs(p["gateway"]["solved_at_rate"] - rate) < noise
        )

    with start_gateway(
        vllm_engine, interval=0.2, window=window, min_requests=4, min_evidence=evidence
    ) as gw:
        msg = [{"role": "user", "content": "q"}]

        async def drive(client, rate: float, done, deadline: float = 15.0):
            """Send BBH requests at `rate` until `done(policy)` holds; the policy, the time."""
            t0, pending, sent = time.monotonic(), [], 0
            async with httpx.AsyncClient(timeout=30) as http:
                while time.monotonic() - t0 < deadline:
                    due = int(rate * (time.monotonic() - t0)) + 1
                    for _ in range(due - sent):  # paced: `rate` requests a second
                        sent += 1
                        pending.append(
                            asyncio.create_task(
                                client.chat.completions.create(
                                    model="fake", messages=msg, extra_headers={"X-Task-Type": "BBH"}
                                )
                            )
                        )
                    await asyncio.sleep(0.1)
                    p = (await http.get(gw.url + "/policy")).json()
                    if done(p) and time.monotonic() - t0 > 0.5:
                        break
                await asyncio.gather(*pending)
            return p, time.monotonic() - t0

        async def scenario():
            client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
            low = await drive(client, 5.0, near(5.0))
            high = await drive(client, 50.0, near(50.0))
            back = await drive(client, 5.0, near(5.0))
            await client.close()
            return low, high, back

        phases = asyncio.run(scenario())
        for (p, took), rate in zip(phases, (5.0, 50.0, 5.0)):
            assert near(rate)(p) and took < 15, (p["gateway"], took)
            g = p["gateway"]
            with jax.enable_x64(True):  # the budget is the solver's at the load it measured
                w_at = w.replace(
                    arrival_rate=g["solved_at_rate"],
                    share=np.asarray([g["solved_at_shares"][n] for n in w.task_names]),
                )
                expected = float(jt.solve(w_at).tokens[k])
            assert p["tasks"]["BBH"]["tokens"] == pytest.approx(expected, rel=1e-3, abs=0.5)
        assert phases[1][0]["tasks"]["BBH"]["budget"] < 0.5 * phases[0][0]["tasks"]["BBH"]["budget"]
        text = httpx.get(gw.url + "/metrics").text
        updates = [
            s
            for f in text_string_to_metric_families(text)
            if f.name == "jt_gateway_policy_updates"
            for s in f.samples
            if s.labels.get("action") == "update" and s.name.endswith("_total")
        ]
        assert updates and updates[0].value >= 3


def test_overload_gives_429_and_nothing_else_breaks():
    fake, server = engine_server("vllm")
    fake.scale = 1.0  # slow: every request holds its slot
    try:
        with start_gateway(server, max_in_flight=4, retry_after=2) as gw:

            async def burst():
                async with httpx.AsyncClient(timeout=60) as c:
                    body = {"model": "fake", "messages": [{"role": "user", "content": "reason=10"}]}
                    rs = await asyncio.gather(
                        *(c.post(gw.url + "/v1/chat/completions", json=body) for _ in range(12))
                    )
                return rs

            rs = asyncio.run(burst())
            codes = sorted(r.status_code for r in rs)
            assert codes.count(200) >= 4 and codes.count(429) >= 1 and set(codes) <= {200, 429}
            refused = next(r for r in rs if r.status_code == 429)
            assert refused.headers["retry-after"] == "2" and len(refused.text.splitlines()) == 1
            fake.scale = SCALE
            ok = httpx.post(
                gw.url + "/v1/chat/completions", json={"model": "fake", "messages": []}, timeout=30
            )
            assert ok.status_code == 200
            text = httpx.get(gw.url + "/metrics").text
            assert 'jt_gateway_rejected_total{reason="overload"}' in text
    finally:
        server.stop()


def test_upstream_down_slow_broken_and_restarted():
    fake, server = engine_server("vllm")
    try:
        with start_gateway(server, upstream_timeout=1.0) as gw:
            body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
            assert (
                httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=30).status_code
                == 200
            )
            server.stop()
            down = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=30)
            assert down.status_code == 502 and "unreachable" in down.json()["error"]["message"]
            assert len(down.text.splitlines()) == 1
            server.start()
            assert (
                httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=30).status_code
                == 200
            )
            # slow: past the upstream timeout
            fake.scale = 50.0
            slow = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=30)
            assert slow.status_code == 504
            fake.scale = SCALE
            # broken mid-stream: the client sees the chunks so far, then an error event
            fake.break_after = 2
            client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
            got = 0
            with pytest.raises(openai.APIError, match="broke the stream"):
                for _ in client.chat.completions.create(
                    model="fake", messages=body["messages"], stream=True
                ):
                    got += 1
            assert got == 2
            fake.break_after = None
            assert (
                httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=30).status_code
                == 200
            )
            # the pass-through routes follow the upstream too
            assert httpx.get(gw.url + "/v1/models").json()["data"][0]["id"] == "fake"
            text = httpx.get(gw.url + "/metrics").text
            assert 'jt_gateway_upstream_errors_total{kind="connect"}' in text
    finally:
        server.stop()


@pytest.mark.parametrize(
    "content, status, words",
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"messages": "' + b"x" * 70_000 + b'"}', 413, "larger than"),
        (b'{"model": "fake", "messages": [], "max_completion_tokens": -3}', 400, "max tokens"),
    ],
)
def test_malformed_and_oversized_bodies_get_one_line(vllm_engine, content, status, words):
    with start_gateway(vllm_engine, max_body_bytes=65_536) as gw:
        r = httpx.post(
            gw.url + "/v1/chat/completions",
            content=content,
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert r.status_code == status and words in r.text and len(r.text.splitlines()) == 1
        ok = httpx.post(
            gw.url + "/v1/chat/completions", json={"model": "fake", "messages": []}, timeout=30
        )
        assert ok.status_code == 200


def test_three_hundred_concurrent_streams(vllm_engine):
    with start_gateway(vllm_engine, max_in_flight=512) as gw:

        async def one(client):
            n = 0
            s = await client.chat.completions.create(
                model="fake", messages=[{"role": "user", "content": "reason=40"}], stream=True
            )
            async for _ in s:
                n += 1
            return n

        async def many():
            client = openai.AsyncOpenAI(
                base_url=gw.url + "/v1", api_key="x", max_retries=0, http_client=None
            )
            out = await asyncio.gather(*(one(client) for _ in range(300)))
            await client.close()
            return out

        t = time.monotonic()
        counts = asyncio.run(many())
        assert len(counts) == 300 and min(counts) >= 2
        assert time.monotonic() - t < 60
        families = {
            f.name: f for f in text_string_to_metric_families(httpx.get(gw.url + "/metrics").text)
        }
        ok = sum(
            s.value
            for s in families["jt_gateway_requests"].samples
            if s.name.endswith("_total") and s.labels["outcome"] == "ok"
        )
        assert ok == 300
        assert {s.labels["task"] for s in families["jt_gateway_budget_tokens"].samples} == set(
            fast_workload().task_names
        )
        assert families["jt_gateway_in_flight"].samples[0].value == 0


def test_bad_configuration_is_refused_naming_the_key(tmp_path):
    cfg = tmp_path / "serve.toml"
    cfg.write_text('upstream = "http://127.0.0.1:1"\nintervall = 5\n')
    assert_refused(["serve", "--config", cfg], "unknown key(s) ['intervall']")
    cfg.write_text('upstream = "http://127.0.0.1:1"\ninterval = -5\n')
    assert_refused(["serve", "--config", cfg], "interval")
    assert_refused(["serve", "--upstream", "ftp://x"], "upstream")
    assert_refused(
        ["serve", "--upstream", "http://127.0.0.1:1", "--server", "batching"], "step_time"
    )
    cfg.write_text('upstream = "http://127.0.0.1:1"\n[[rules]]\ntask = "AIME"\npattern = "("\n')
    assert_refused(["serve", "--config", cfg], "rules[0].pattern")
    cfg.write_text('upstream = "http://127.0.0.1:1"\ndefault_task = "nope"\n')
    assert_refused(["serve", "--config", cfg], "'nope'")


def test_shutdown_lets_in_flight_streams_finish():
    fake, server = engine_server("vllm")
    fake.scale = 0.3  # a stream of ~1 s
    try:
        gw = start_gateway(server)
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
        stream = client.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "reason=100"}], stream=True
        )
        first = next(iter(stream))
        stopper = threading.Thread(target=gw.stop)
        stopper.start()  # SIGTERM-like: stop accepting, finish what is in flight
        rest = list(stream)
        stopper.join(30)
        assert first.choices and rest and rest[-1].choices[0].finish_reason == "stop"
        with pytest.raises(httpx.ConnectError):
            httpx.get(gw.url + "/healthz", timeout=5)
    finally:
        server.stop()


def test_a_latency_target_sets_the_most_accurate_policy_that_meets_it():
    """With `target_latency`, each control step re-tunes alpha at the measured load so the
    predicted mean latency meets the target; a target below the zero-token latency gives
    zero budgets and says so."""
    from jaxopt_tokens.gateway._control import Controller  # the control step alone

    w = fast_workload()

    def controlled(target: float):
        config = gateway.GatewayConfig(
            upstream="http://127.0.0.1:9", target_latency=target, min_requests=10, window=1.0
        )
        c = Controller(config, w, jt.FIFO())
        now = time.monotonic()
        c.load.started = now - 5
        for i in range(40):  # 40 requests/s, shares as the workload's
            c.load.arrival(i % 6, now - 1 + i / 40)
        return c, c.update(now)

    with jax.enable_x64(True):
        zero = float(jt.mean_system_time(np.zeros(6), w.replace(arrival_rate=40.0)))
    c, d = controlled(2 * zero)
    assert d.action == "update" and not d.state.overloaded
    assert d.state.arrival_rate == pytest.approx(40.0, rel=0.05)
    with jax.enable_x64(True):  # the target is met by the continuous optimum (integers ~)
        ws = w.replace(arrival_rate=d.state.arrival_rate, share=np.asarray(d.state.shares))
        tuned = jt.tune_alpha(ws, 2 * zero)
        assert float(tuned.mean_system_time) == pytest.approx(2 * zero, rel=1e-6)
    assert d.state.predicted_latency == pytest.approx(2 * zero, rel=0.02)
    c, d = controlled(0.5 * zero)
    assert d.state.overloaded and not d.state.tokens.any()
    assert "cannot be met" in d.reason
    with pytest.raises(jt.InputError, match="target_latency"):
        gateway.GatewayConfig(upstream="http://a:1", target_latency=-1.0)
