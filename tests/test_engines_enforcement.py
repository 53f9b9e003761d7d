"""NVIDIA Dynamo's frontend and llama.cpp's server as targets, and budgets verified from usage.

- `export_policy(engine="dynamo" | "llamacpp")` writes fields the engines' own request
  handling accepts and acts on (pinned in `engine_schemas.py` with the commits read);
- the gateway forwards them to a fake engine of each kind with the real `openai` client, and
  a client can neither raise the budget under either llama.cpp name nor send the fields that
  would escape it (`n_predict`, the budget's tags, Dynamo's `nvext`);
- a fake engine that accepts the budget and ignores it is caught by the gateway (a counter
  per task, one warning, `/policy`), from usage or, for llama.cpp, from the reasoning text;
- `jaxopt-tokens verify` reports per task whether the engine kept the budget.
"""

from __future__ import annotations

import logging

import httpx
import openai
import pytest
from conftest import assert_refused, run_cli, scaled_table1, strict_loads
from engine_schemas import RequestError, validate_request
from fake_engine import FakeEngine, Loopback
from prometheus_client.parser import text_string_to_metric_families

import jaxopt_tokens as jt
from jaxopt_tokens import gateway
from jaxopt_tokens.gateway import judge

pytestmark = pytest.mark.timeout(120)
SCALE = 0.01


@pytest.mark.parametrize("engine", ["dynamo", "llamacpp"])
def test_exported_fields_are_what_the_engine_reads_and_enforces(engine):
    w = jt.default_workload()
    policy = jt.deploy.export_policy(w, jt.solve(w), engine=engine)
    for name, entry in policy["tasks"].items():
        acts = validate_request(engine, {"model": "m", "messages": [], **entry["request"]})
        if entry["budget"] == 0:
            assert acts["enable_thinking"] is False, name
        else:
            assert acts["thinking_budget"] == entry["budget"], name
        assert acts["max_new_tokens"] == entry["budget"] + 256
    with pytest.warns(jt.UnstableQueueWarning):
        unlimited = jt.deploy.export_policy(w, [None] * 6, engine=engine)["tasks"]["GSM8K"][
            "request"
        ]
    acts = validate_request(engine, {"model": "m", "messages": [], **unlimited})
    assert acts["thinking_budget"] is None
    if engine == "dynamo":  # an unsigned field: never -1
        assert "thinking_token_budget" not in unlimited
        with pytest.raises(RequestError):
            validate_request("dynamo", {"model": "m", "messages": [], "thinking_token_budget": -1})
        with pytest.raises(RequestError, match="does not read"):  # Dynamo refuses unknowns
            validate_request("dynamo", {"model": "m", "messages": [], "custom_params": {}})


def _start(engine_server: Loopback, kind: str, **settings) -> Loopback:
    config = gateway.GatewayConfig(
        upstream=engine_server.url,
        engine=kind,
        **{"interval": 60.0, "learn_service": False, **settings},
    )
    return Loopback(gateway.create_app(config, workload=scaled_table1(SCALE))).start()


def _ask(gw: Loopback, task: str, content: str = "reason=2000", **extra):
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    return client.chat.completions.create(
        model="fake",
        messages=[{"role": "user", "content": content}],
        extra_headers={"X-Task-Type": task},
        **extra,
    )


def _metric(gw: Loopback, name: str, task: str) -> float:
    for family in text_string_to_metric_families(httpx.get(gw.url + "/metrics").text):
        for s in family.samples:
            if s.name == name and s.labels.get("task") == task:
                return s.value
    return 0.0


@pytest.mark.parametrize("kind", ["dynamo", "llamacpp"])
def test_the_gateway_speaks_each_engine_and_keeps_the_policy_an_upper_bound(kind):
    fake = FakeEngine(kind, step_time=(0.0141, 0.0), scale=SCALE)
    with Loopback(fake.app) as engine, _start(engine, kind) as gw:
        fields = httpx.get(gw.url + "/policy").json()["tasks"]["GSM8K"]["request"]
        budget = httpx.get(gw.url + "/policy").json()["tasks"]["GSM8K"]["budget"]
        _ask(gw, "GSM8K")
        sent = fake.received[-1]
        assert {k: sent[k] for k in fields} == fields
        # a client lowers the budget under any name the engine reads; it never raises it
        names = (
            ("thinking_token_budget",)
            if kind == "dynamo"
            else (
                "thinking_budget_tokens",
                "reasoning_budget_tokens",
            )
        )
        for name in names:
            _ask(gw, "GSM8K", extra_body={name: 7})
            assert all(fake.received[-1][n] == 7 for n in names)
            _ask(gw, "GSM8K", extra_body={name: 10**6})
            assert all(fake.received[-1][n] == budget for n in names)
        refused = ("nvext", "n_predict", "reasoning_budget_end_tag", "id_slot")
        for field in refused:
            with pytest.raises(openai.BadRequestError, match=field):
                _ask(gw, "GSM8K", extra_body={field: 1})
        assert len(fake.received) == 1 + 2 * len(names)


@pytest.mark.parametrize("kind", ["vllm", "llamacpp"])
def test_an_engine_that_ignores_the_budget_is_caught(kind, caplog):
    """vLLM counts reasoning in usage; llama.cpp does not, and the gateway estimates it from
    the reasoning text. An honest engine raises nothing; one that ignores the budget gets a
    violation per response, one warning per task, and /policy shows it."""
    for ignore in (False, True):
        fake = FakeEngine(kind, step_time=(0.0141, 0.0), scale=SCALE, ignore_budget=ignore)
        caplog.clear()
        with (
            caplog.at_level(logging.WARNING, "jaxopt_tokens.gateway"),
            Loopback(fake.app) as engine,
            _start(engine, kind) as gw,
        ):
            for _ in range(2):
                _ask(gw, "GSM8K")
            for _ in _ask(gw, "GSM8K", stream=True):  # streamed: usage or reasoning deltas
                pass
            report = httpx.get(gw.url + "/policy").json()["enforcement"]["GSM8K"]
            violations = _metric(gw, "jt_gateway_budget_violations_total", "GSM8K")
        assert report["checked"] == 3 and report["estimated"] == (3 if kind == "llamacpp" else 0)
        warned = [r for r in caplog.records if "budget_not_enforced" in r.getMessage()]
        if ignore:
            assert violations == 3 and report["violations"] == 3
            # the output limit still cuts it: budget + the answer reserve
            assert report["max_reasoning"] == report["budget"] + 256
            assert len([r for r in warned if '"GSM8K"' in r.getMessage()]) == 1
        else:
            assert violations == 0 and report["violations"] == 0 and not warned
            assert report["max_reasoning"] <= report["budget"]


def test_the_judge_of_one_response():
    assert judge(100, 105, 0, 8) == (105, False, "kept")
    assert judge(100, 109, 0, 8) == (109, False, "violation")
    assert judge(0, 3, 0, 8)[2] == "kept"  # thinking off: a few tokens of tags
    assert judge(100, None, 4 * 120, 8) == (120, True, "kept")  # an estimate gets a margin
    assert judge(100, None, 4 * 200, 8) == (200, True, "violation")
    assert judge(100, None, 0, 8) == (None, False, "unmeasured")


@pytest.mark.parametrize("kind", ["vllm", "dynamo", "llamacpp"])
def test_verify_reports_whether_the_engine_kept_each_budget(kind):
    argv = ["verify", "--engine", kind, "--prompt", "reason=3000", "--format", "json"]
    argv += ["--probes", "1"]
    for ignore in (False, True):
        fake = FakeEngine(kind, step_time=(0.0141, 0.0), scale=1e-4, ignore_budget=ignore)
        with Loopback(fake.app) as engine:
            rc, text, err = run_cli([*argv, "--upstream", engine.url])
        report = strict_loads(text)["tasks"]
        budgeted = {t: r for t, r in report.items() if r["budget"]}
        off = {t: r for t, r in report.items() if r["budget"] == 0}
        assert budgeted and off
        # thinking off: no reasoning; llama.cpp counts none, and no reasoning text cannot be
        # told from a server without a reasoning parser, so that is "unmeasured" there
        expected_off = {"unmeasured"} if kind == "llamacpp" else {"kept"}
        assert {r["verdict"] for r in off.values()} == expected_off
        if ignore:
            assert rc == 1, err
            assert {r["verdict"] for r in budgeted.values()} == {"exceeded"}
        else:
            assert rc == 0, err
            assert {r["verdict"] for r in budgeted.values()} == {"kept"}
        assert all(r["estimated"] == (kind == "llamacpp") for r in budgeted.values())


def test_verify_refuses_what_it_cannot_check(tmp_path):
    url = "http://127.0.0.1:9"
    assert_refused(["verify", "--upstream", url, "--engine", "openai"], "--engine")
    bad = tmp_path / "p.json"
    bad.write_text('{"engine": "openai", "tasks": {"A": {"budget": 1, "request": {}}}}')
    assert_refused(["verify", "--upstream", url, "--policy", bad], "--policy", "engine")
    bad.write_text("[]")
    assert_refused(["verify", "--upstream", url, "--policy", bad], "--policy")
    rc, _, err = run_cli(["verify", "--upstream", "http://127.0.0.1:9"])
    assert rc == 2 and "--upstream" in err and "\n" not in err.strip()
