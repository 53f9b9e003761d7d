"""The gateway's control loop in simulated time (`gateway.dry_run`, `serve --dry-run`): the
simulated engines against independent hand computations (the FIFO server against a Lindley
recursion, the batching engine against a two-request schedule worked by hand), the live loop
reacting to a step in the load with each control step recorded, admission control, and the
command's strict JSON."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from conftest import assert_refused, run_cli, strict_loads

import jaxopt_tokens as jt
from jaxopt_tokens import gateway

pytestmark = pytest.mark.timeout(300)
URL = "http://127.0.0.1:9"
TASKS = ("AIME", "GSM8K", "GPQA", "CRUXEval", "BBH", "ARC-Challenge")


def flat_policy(tmp_path, budgets) -> str:
    path = tmp_path / "flat.json"
    path.write_text(json.dumps({"tasks": list(TASKS), "budgets_by_state": [list(budgets)]}))
    return str(path)


def test_the_single_server_is_the_lindley_recursion(tmp_path):
    """mg1: each request's service is t0 + c x min(reasoning, budget) of its task, FIFO: the
    latencies equal a Lindley recursion written here."""
    rng = np.random.default_rng(4)
    times = np.cumsum(rng.exponential(20.0, 400))
    trace = jt.traffic.Trace(times)
    budgets = [0, 300, 0, 0, 200, 50]
    config = gateway.GatewayConfig(
        upstream=URL, learned_policy=flat_policy(tmp_path, budgets), learn_service=False
    )
    with jax.enable_x64(True):
        w = jt.default_workload("float64")
    tasks = rng.integers(0, 6, times.size)
    r = gateway.dry_run(config, trace, w, tasks=tasks, reasoning=250)
    t0, c = np.asarray(w.t0), np.asarray(w.c)
    service = t0[tasks] + c[tasks] * np.minimum(250, np.asarray(budgets)[tasks])
    arrivals = times - times[0]
    departed, expected = -np.inf, []
    for a, s in zip(arrivals, service):
        departed = max(a, departed) + s
        expected.append(departed - a)
    np.testing.assert_allclose(r.requests["latency"], expected, rtol=1e-9)
    np.testing.assert_array_equal(r.requests["budget"], np.asarray(budgets, float)[tasks])
    assert r.summary["requests"] == 400 and r.summary["refused"] == 0


def test_the_batching_engine_runs_a_schedule_worked_by_hand(tmp_path):
    """Two requests at time 0 (100 and 200 tokens), a third at 10 s (50 tokens); step
    0.02 + 0.0005 n seconds. Together each makes a token per 0.021 s: the first ends at
    2.1 s, the second has 100 tokens left, alone at 0.0205 s each: 4.15 s. The third runs
    alone: 50 x 0.0205 = 1.025 s."""
    budgets = [0, 100, 0, 0, 200, 50]
    config = gateway.GatewayConfig(
        upstream=URL,
        server="batching",
        step_time=(0.02, 0.0005),
        learned_policy=flat_policy(tmp_path, budgets),
        learn_service=False,
    )
    trace = jt.traffic.Trace(np.array([0.0, 0.0, 10.0]))
    r = gateway.dry_run(
        config,
        trace,
        tasks=np.array([1, 4, 5]),
        reasoning=5000,
        answer_tokens=0,
        prefill_tokens=0,
    )
    np.testing.assert_allclose(r.requests["latency"], [2.1, 4.15, 1.025], rtol=1e-12)
    np.testing.assert_array_equal(r.requests["found"], [0, 1, 0])


def test_the_live_loop_follows_a_step_in_the_load_and_records_each_step():
    """0.05 requests/s for 40 minutes, then 0.4/s for 20: the policy in force after the
    step is the solver's at a higher rate (smaller budgets), each control step says what it
    did, and the per-step latencies cover every served request."""
    rng = np.random.default_rng(7)
    low = np.cumsum(rng.exponential(20.0, 120))
    high = low[-1] + np.cumsum(rng.exponential(2.5, 480))
    trace = jt.traffic.Trace(np.concatenate([low, high]))
    config = gateway.GatewayConfig(
        upstream=URL, interval=60.0, window=300.0, min_requests=10, learn_service=False
    )
    r = gateway.dry_run(config, trace, reasoning=4000)
    steps = r.steps
    assert {s["action"] for s in steps} <= {"update", "keep", "wait", "failed"}
    before = [s for s in steps if s["time"] < low[-1] - low[0]][-1]
    after = steps[-1]
    assert after["measured_rate"] > 4 * before["measured_rate"]
    assert sum(after["budgets"].values()) < sum(before["budgets"].values())
    assert r.summary["policy_updates"] >= 1
    assert sum(s["requests"] for s in steps) <= r.summary["requests"]
    assert all(s["mean_latency"] is None or s["mean_latency"] > 0 for s in steps)


def test_admission_refuses_above_max_in_flight(tmp_path):
    config = gateway.GatewayConfig(
        upstream=URL,
        learned_policy=flat_policy(tmp_path, [0, 300, 0, 0, 300, 300]),
        max_in_flight=2,
        learn_service=False,
    )
    trace = jt.traffic.Trace(np.zeros(5) + np.arange(5) * 1e-3)
    r = gateway.dry_run(config, trace, tasks=np.full(5, 1))
    assert r.summary["refused"] == 3
    assert np.isnan(r.requests["latency"][2:]).all()


def test_the_dry_run_command_prints_strict_json(tmp_path):
    from conftest import TRACE_EXCERPT

    argv = ["serve", "--dry-run", TRACE_EXCERPT, "--dry-run-minutes", "5", "--format", "json"]
    argv += ["--interval", "30", "--window", "120", "--min-requests", "5"]
    rc, text, err = run_cli(argv)
    assert rc == 0, err
    report = strict_loads(text)
    assert report["summary"]["requests"] > 0 and report["steps"]
    assert {"time", "action", "measured_rate", "budgets", "J"} <= set(report["steps"][0])
    assert_refused(["serve", "--dry-run", str(tmp_path / "none.csv")], "none.csv")
    assert_refused(["serve", "--dry-run", TRACE_EXCERPT, "--reasoning", "-1"], "--reasoning")


def test_every_first_come_first_served_server_runs_and_others_are_refused(tmp_path):
    """The dry run and the replay serve a trace first come, first served: `Kingman` (FIFO
    under renewal arrivals, a sibling of FIFO) is such a server and runs as FIFO does on the
    same draws; processor sharing is not and is refused by name."""
    rng = np.random.default_rng(5)
    trace = jt.traffic.Trace(np.cumsum(rng.exponential(20.0, 300)))
    config = gateway.GatewayConfig(
        upstream=URL, learned_policy=flat_policy(tmp_path, [0, 300, 0, 0, 200, 50])
    )
    with jax.enable_x64(True):
        w = jt.default_workload("float64")
        tasks = rng.integers(0, 6, len(trace))
        runs = [
            gateway.dry_run(config, trace, w, model=m, tasks=tasks, reasoning=250)
            for m in (jt.FIFO(), jt.Kingman(arrival_scv=2.0))
        ]
        np.testing.assert_array_equal(runs[0].requests["latency"], runs[1].requests["latency"])
        with pytest.raises(jt.InputError, match="first-come-first-served"):
            gateway.dry_run(config, trace, w, model=jt.ProcessorSharing(), tasks=tasks)
        tokens = np.asarray(jt.solve(w).tokens)
        replays = [
            jt.learn.replay_metrics(tokens, jt.learn.replay_draws(w, trace, rate=0.05, model=m))
            for m in (jt.FIFO(), jt.Kingman(arrival_scv=2.0))
        ]
        assert float(replays[0].objective) == float(replays[1].objective)
        with pytest.raises(jt.InputError, match="first-come-first-served"):
            jt.learn.replay_draws(w, trace, rate=0.05, model=jt.ProcessorSharing())
