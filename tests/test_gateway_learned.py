"""The gateway serving a learned, queue-aware policy: the file checked against the workload,
each request given the row of the queue it finds (the gateway's own count, or the engine's
Prometheus gauges shared by two gateway replicas), the table on `/policy`, the state and the
budget sent in `/metrics`, and a request log that `read_trace` reads back for re-learning.
End to end on loopback with the real `openai` client; bounded in time and requests."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
import openai
import pytest
from conftest import scaled_table1
from fake_engine import FakeEngine, Loopback
from prometheus_client.parser import text_string_to_metric_families

import jaxopt_tokens as jt
from jaxopt_tokens import gateway
from jaxopt_tokens.gateway import engine_queue, load_learned

pytestmark = pytest.mark.timeout(120)
SCALE = 0.01
TASKS = ("AIME", "GSM8K", "GPQA", "CRUXEval", "BBH", "ARC-Challenge")
#: budgets by requests found in the system (rows 0, 1, 2 and more), non-increasing
ROWS = [
    [0, 900, 0, 0, 800, 300],
    [0, 600, 0, 0, 500, 200],
    [0, 300, 0, 0, 250, 100],
]


def learned_file(tmp_path, rows=ROWS, tasks=TASKS, **extra) -> str:
    path = tmp_path / "policy.json"
    report = {
        "tasks": list(tasks),
        "budgets_by_state": rows,
        "held_out": {"learned": {"objective": 7.5, "mean_system_time": 1.25}},
        **extra,
    }
    path.write_text(json.dumps(report))
    return str(path)


def start(upstream: Loopback, **settings) -> Loopback:
    config = gateway.GatewayConfig(
        upstream=upstream.url, **{"interval": 60.0, "learn_service": False, **settings}
    )
    return Loopback(gateway.create_app(config, workload=scaled_table1(SCALE))).start()


def metric(gw: Loopback, name: str, labels: dict | None = None) -> float:
    for family in text_string_to_metric_families(httpx.get(gw.url + "/metrics").text):
        for s in family.samples:
            if s.name == name and (labels is None or labels.items() <= s.labels.items()):
                return s.value
    raise AssertionError(f"{name} not exported")


def ask(gw: Loopback, task: str = "GSM8K") -> None:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    client.chat.completions.create(
        model="fake",
        messages=[{"role": "user", "content": "reason=5"}],
        extra_headers={"X-Task-Type": task},
    )


# --------------------------------------------------------------------------- the file


def test_a_learned_file_is_read_in_the_workloads_task_order(tmp_path):
    order = tuple(reversed(TASKS))
    rows = [list(reversed(r)) for r in ROWS]
    table = load_learned(learned_file(tmp_path, rows, order), TASKS, np.full(6, 32768.0))
    np.testing.assert_array_equal(table.table, np.asarray(ROWS, float))
    assert table.states == 2
    assert [table.row(x) for x in (0, 0.5, 1, 2, 7, -1, float("nan"))] == [0, 0, 1, 2, 2, 0, 0]
    assert table.replayed == {"objective": 7.5, "mean_system_time": 1.25}


@pytest.mark.parametrize(
    "change, words",
    [
        ({"tasks": list(TASKS[:5])}, "tasks: missing ['ARC-Challenge']"),
        ({"tasks": [*TASKS[:5], "MATH"]}, "not in the workload: ['MATH']"),
        ({"tasks": [*TASKS[:5], "AIME"]}, "named twice"),
        ({"budgets_by_state": []}, "budgets_by_state: a list of 1 to 257 rows"),
        ({"budgets_by_state": [[1, 2, 3]]}, "budgets_by_state[0]: a list of 6 budgets"),
        ({"budgets_by_state": [[0, -1, 0, 0, 0, 0]]}, "budgets_by_state[0], task GSM8K"),
        ({"budgets_by_state": [[0, "x", 0, 0, 0, 0]]}, "task GSM8K: 'x' is not a number"),
        ({"budgets_by_state": [[0, 1e6, 0, 0, 0, 0]]}, "above max_tokens"),
        ({"budgets_by_state": [[0, 1, 0, 0, 0, 0], [0, 2, 0, 0, 0, 0]]}, "never gets a larger"),
    ],
)
def test_a_bad_learned_file_is_refused_naming_the_field(tmp_path, change, words):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"tasks": list(TASKS), "budgets_by_state": ROWS, **change}))
    with pytest.raises(jt.InputError) as e:
        load_learned(path, TASKS, np.full(6, 32768.0))
    assert str(path) in str(e.value) and words in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_non_json_constants_and_non_objects_are_refused(tmp_path):
    for text in ('{"tasks": NaN}', "[1, 2]", "{", ""):
        path = tmp_path / "p.json"
        path.write_text(text)
        with pytest.raises(jt.InputError, match="p.json"):
            load_learned(path, TASKS, np.full(6, 32768.0))


def test_the_engines_queue_gauges_are_summed_over_label_sets():
    vllm = (
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{model_name="a"} 3.0\n'
        'vllm:num_requests_running{model_name="b"} 1.0\n'
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{model_name="a"} 4.0\n'
        "# TYPE vllm:gpu_cache_usage_perc gauge\n"
        "vllm:gpu_cache_usage_perc 0.5\n"
    )
    assert engine_queue(vllm, "vllm") == 8.0
    assert engine_queue(vllm, "sglang") is None  # the other engine's names are not read
    sglang = "sglang:num_running_reqs 2\nsglang:num_queue_reqs 5\n"
    assert engine_queue(sglang, "sglang") == 7.0
    for junk in ("", "not metrics {{{", "vllm:num_requests_running NaN\n", "<html>"):
        assert engine_queue(junk, "vllm") is None, junk


def test_learned_settings_that_cannot_work_are_refused_at_start(tmp_path):
    url = "http://127.0.0.1:9"
    with pytest.raises(jt.InputError, match="queue_source: engine 'openai' publishes no"):
        gateway.GatewayConfig(upstream=url, engine="openai", queue_source="engine")
    with pytest.raises(jt.InputError, match="queue_source: one of gateway, engine"):
        gateway.GatewayConfig(upstream=url, queue_source="router")
    with pytest.raises(jt.InputError, match="target_latency: a learned_policy"):
        gateway.GatewayConfig(upstream=url, learned_policy="p.json", target_latency=1.0)
    with pytest.raises(jt.InputError, match="engine_metrics_path: a path"):
        gateway.GatewayConfig(upstream=url, engine_metrics_path="metrics")
    bad = learned_file(tmp_path, rows=[[1, 2]])
    with pytest.raises(jt.InputError, match=r"^learned_policy: .*policy.json: budgets_by_state"):
        gateway.create_app(
            gateway.GatewayConfig(upstream=url, learned_policy=bad), workload=scaled_table1(SCALE)
        )
    with pytest.raises(jt.InputError, match="request_log: the folder"):
        gateway.create_app(
            gateway.GatewayConfig(upstream=url, request_log=str(tmp_path / "no" / "log.jsonl")),
            workload=scaled_table1(SCALE),
        )


# --------------------------------------------------------------------------- served


def test_each_request_gets_the_row_of_the_queue_it_finds_and_the_log_reads_back(tmp_path):
    """Gateway-counted state: a request alone finds 0 (row 0's budget); with two streams
    held open through the gateway, the next finds 2 (row 2's). /policy shows the table and
    /metrics the state and the budget sent; the request log is a trace with one arrival
    per request and its task."""
    # each held stream lasts (5 + 300 + 20 tokens) x 1.0 s x 0.01 = ~3 s
    fake = FakeEngine("vllm", step_time=(1.0, 0.0), scale=SCALE)
    log = tmp_path / "requests.jsonl"
    with Loopback(fake.app) as engine:
        with start(engine, learned_policy=learned_file(tmp_path), request_log=str(log)) as gw:
            shown = httpx.get(gw.url + "/policy").json()
            assert shown["queue"]["learned"]["budgets_by_state"]["GSM8K"] == [900, 600, 300]
            assert shown["queue"]["learned"]["replayed_held_out"]["objective"] == 7.5
            assert shown["tasks"]["GSM8K"]["budget"] == 900
            ask(gw)
            assert fake.received[-1]["thinking_token_budget"] == 900
            assert metric(gw, "jt_gateway_queue_state") == 0

            async def held_then_one():
                client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
                streams = [
                    await client.chat.completions.create(
                        model="fake",
                        messages=[{"role": "user", "content": "reason=300"}],
                        stream=True,
                        extra_headers={"X-Task-Type": "BBH"},
                    )
                    for _ in range(2)
                ]
                await asyncio.to_thread(ask, gw)
                for s in streams:
                    async for _ in s:
                        pass
                await client.close()

            asyncio.run(held_then_one())
            budgets = [b.get("thinking_token_budget") for b in fake.received]
            assert budgets[1:3] == [800, 500]  # the second stream found the first
            assert fake.received[3]["thinking_token_budget"] == 300  # found both: row 2
            assert metric(gw, "jt_gateway_sent_budget_tokens", {"task": "GSM8K"}) == 300
            assert metric(gw, "jt_gateway_policy_row_requests_total", {"row": "2"}) == 1
            assert httpx.get(gw.url + "/policy").json()["gateway"]["version"] == 0
    trace = jt.traffic.read_trace(log, "jsonl")
    assert trace.num_requests == 4
    assert sorted(trace.labels) == ["BBH", "BBH", "GSM8K", "GSM8K"]
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert sorted(x["budget"] for x in lines) == [300, 500, 800, 900]
    assert all(x["outcome"] == "ok" and x["output_tokens"] > 0 for x in lines)


def test_two_gateways_share_the_engines_view_of_its_queue(tmp_path):
    """With `queue_source = "engine"` both replicas read the engine's gauges: the queue the
    engine reports (its running requests from either gateway plus those waiting) sets the
    row, where each gateway's own count would see only its own requests."""
    fake = FakeEngine("sglang", step_time=(1.0, 0.0), scale=SCALE)
    settings = {
        "engine": "sglang",
        "learned_policy": learned_file(tmp_path),
        "queue_source": "engine",
        "engine_metrics_interval": 0.05,
    }
    with (
        Loopback(fake.app) as engine,
        start(engine, **settings) as a,
        start(engine, **settings) as b,
    ):

        def settled(gw, value, within=10.0):
            deadline = time.monotonic() + within
            while time.monotonic() < deadline:
                if httpx.get(gw.url + "/policy").json()["queue"]["in_system"] == value:
                    return True
                time.sleep(0.02)
            return False

        assert settled(a, 0) and settled(b, 0)
        ask(b)
        assert fake.received[-1]["custom_params"]["thinking_budget"] == 900  # sglang's field, row 0
        fake.waiting = 1  # the engine queues one request: both replicas see it
        assert settled(a, 1) and settled(b, 1)
        ask(a)
        assert fake.received[-1]["custom_params"]["thinking_budget"] == 600

        async def held_on_a_then_one_on_b():
            client = openai.AsyncOpenAI(base_url=a.url + "/v1", api_key="x", max_retries=0)
            stream = await client.chat.completions.create(
                model="fake",
                messages=[{"role": "user", "content": "reason=300"}],
                stream=True,
                extra_headers={"X-Task-Type": "BBH"},
            )
            seen = await asyncio.to_thread(settled, b, 2)  # a's request runs in the engine
            await asyncio.to_thread(ask, b)
            async for _ in stream:
                pass
            await client.close()
            return seen

        assert asyncio.run(held_on_a_then_one_on_b())
        # b's own count was 0; the engine's (a's running request and one waiting) is 2
        assert fake.received[-1]["custom_params"]["thinking_budget"] == 300
        assert metric(b, "jt_gateway_engine_queue") >= 1
        assert metric(b, "jt_gateway_engine_metrics_reads_total", {"result": "ok"}) > 0
        shown = httpx.get(b.url + "/policy").json()["queue"]
        assert shown["read_from"] == "engine" and shown["engine_read_age_s"] < 1.0


def test_an_unreadable_engine_falls_back_to_the_gateways_own_count(tmp_path):
    fake = FakeEngine("vllm", step_time=(0.0141, 0.0), scale=SCALE)
    fake.app.router.routes = [r for r in fake.app.router.routes if r.path != "/metrics"]
    settings = {
        "learned_policy": learned_file(tmp_path),
        "queue_source": "engine",
        "engine_metrics_interval": 0.05,
    }
    with Loopback(fake.app) as engine, start(engine, **settings) as gw:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if metric(gw, "jt_gateway_engine_metrics_reads_total", {"result": "failed"}) > 0:
                    break
            except AssertionError:
                time.sleep(0.02)
        ask(gw)
        assert fake.received[-1]["thinking_token_budget"] == 900
        assert httpx.get(gw.url + "/policy").json()["queue"]["read_from"] == "gateway"
