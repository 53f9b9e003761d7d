"""Replaying a trace through the servers: against a plain-Python queue, the Poisson simulator,
utilization and budgets by window, the batching server, and the `simulate` command."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import (
    AZURE_CODE,
    TRACE_EXCERPT,
    assert_refused,
    run_cli,
    strict_loads,
)

import jaxopt_tokens as jt

# ------------------------------------------------------------------------------ replaying


def _lindley_mean(gaps, service, warmup):
    """The FIFO recursion, one query at a time (the independent reference)."""
    wait, total, waits = 0.0, [], []
    for i in range(len(gaps)):
        if i:
            wait = max(0.0, wait + service[i - 1] - gaps[i])
        waits.append(wait)
        total.append(wait + service[i])
    return float(np.mean(waits[warmup:])), float(np.mean(total[warmup:]))


@pytest.mark.parametrize("service", ["tasks", "trace"])
def test_replay_equals_a_plain_python_queue_on_the_same_trace(service):
    with jax.enable_x64(True):
        w = jt.default_workload()
        tokens = np.asarray(jt.solve(w).tokens)
        trace = jt.traffic.read_trace(AZURE_CODE)
        names = w.task_names
        labels = tuple(names[i % len(names)] for i in range(len(trace)))
        trace = jt.traffic.Trace(
            trace.arrival_times, output_tokens=trace.output_tokens, labels=labels
        )
        sim = jt.simulate(
            w,
            tokens,
            None,
            2,
            arrivals=jt.traffic.Replay(trace, rate=0.3, service=service, task_types="trace"),
            warmup=10,
        )
        task = np.arange(len(trace)) % len(names)
        t = np.asarray(w.t0 + w.c * tokens)[task]
        if service == "trace":
            t = t * trace.output_tokens / trace.output_tokens.mean()
        gaps = trace.gaps * trace.mean_rate / 0.3
        wait, total = _lindley_mean(gaps, t, 10)
        np.testing.assert_allclose(np.asarray(sim.wait), wait, rtol=1e-9)
        np.testing.assert_allclose(np.asarray(sim.system_time), total, rtol=1e-9)
        assert sim.arrival_rate == pytest.approx(0.3)


def test_a_poisson_trace_replays_as_the_poisson_simulator():
    with jax.enable_x64(True):
        w = jt.default_workload()
        tokens = jt.solve(w).tokens
        poisson = jt.simulate(w, tokens, 20_000, 8)
        stream = jt.theory.sample_query_stream(jax.random.key(7), w, 40_000)
        trace = jt.traffic.Trace(np.asarray(stream.arrival_times))
        replay = jt.simulate(
            w, tokens, None, 4, arrivals=jt.traffic.Replay(trace, rate=float(w.arrival_rate))
        )
        mean, lo, hi = poisson.interval("system_time")
        rep = float(np.mean(np.asarray(replay.system_time)))
        half = max(hi - lo, 0.05 * mean)
        assert abs(rep - mean) < half, (rep, mean, lo, hi)


def test_replay_at_a_utilization_and_budgets_by_window():
    with jax.enable_x64(True):
        w = jt.default_workload()
        tokens = np.asarray(jt.solve(w).tokens)
        trace = jt.traffic.read_trace(TRACE_EXCERPT)
        sim = jt.simulate(w, tokens, None, 2, arrivals=jt.traffic.Replay(trace, utilization=0.5))
        assert float(sim.predicted_utilization) == pytest.approx(0.5)
        k = int(trace.window_index(20.0).max()) + 1
        same = jt.simulate(
            w,
            np.broadcast_to(tokens, (k, 6)),
            None,
            2,
            arrivals=jt.traffic.Replay(trace, utilization=0.5, window=20.0),
        )
        np.testing.assert_array_equal(np.asarray(same.system_time), np.asarray(sim.system_time))
        with pytest.raises(jt.InputError, match=f"shape \\(..., {k}, 6\\)"):
            jt.simulate(w, tokens, None, 2, arrivals=jt.traffic.Replay(trace, window=20.0))
        with pytest.raises(jt.InputError, match="rate, utilization"):
            jt.simulate(
                w, tokens, None, 2, arrivals=jt.traffic.Replay(trace, rate=1.0, utilization=0.5)
            )
        with pytest.raises(jt.InputError, match="num_queries"):
            jt.simulate(w, tokens, 100, 2, arrivals=trace)
        with pytest.raises(TypeError, match="utilization"):  # a setting of a Replay only
            jt.simulate(w, tokens, 100, 2, utilization=0.5)  # pyright: ignore[reportCallIssue]
        with pytest.raises(jt.InputError, match="no task labels"):
            jt.simulate(w, tokens, None, 2, arrivals=jt.traffic.Replay(trace, task_types="trace"))


def test_replay_on_the_batching_server():
    with jax.enable_x64(True):
        w = jt.default_workload()
        model = jt.ContinuousBatching(step_time=(0.02, 0.0005), max_batch=16)
        tokens = jt.solve(w, model=model).tokens
        trace = jt.traffic.read_trace(TRACE_EXCERPT)
        sim = jt.simulate(
            w, tokens, None, 2, arrivals=jt.traffic.Replay(trace, utilization=0.5), model=model
        )
        assert float(sim.predicted_load) == pytest.approx(0.5, rel=1e-6)
        assert np.all(np.isfinite(np.asarray(sim.system_time)))
        with pytest.raises(jt.InputError, match="random routing"):
            jt.simulate(
                w,
                tokens,
                None,
                2,
                arrivals=jt.traffic.Replay(trace, rate=1.0),
                model=model.replace(replicas=2),
            )


def test_simulate_command_replays_a_trace():
    rc, out, err = run_cli(
        [
            "simulate",
            "--arrivals",
            TRACE_EXCERPT,
            "--utilization",
            "0.5",
            "--num-replications",
            "2",
            "--format",
            "json",
        ]
    )
    assert rc == 0, err
    report = strict_loads(out)
    assert report["num_queries"] == 300 and report["arrival_rate"] > 0
    assert_refused(["simulate", "--utilization", "0.5"], "--arrivals")


def test_budgets_by_window_on_the_batching_server():
    """The batching server replays budgets by window as the single server does: the same
    budgets in every window simulate as the replay without windows (same draws, same
    numbers); other
    budgets act on the requests arriving in their window only; the predictions are the
    arrival-weighted mean of each window's at its own replayed rate."""
    with jax.enable_x64(True):
        w = jt.default_workload()
        model = jt.ContinuousBatching(step_time=(0.02, 0.0005), max_batch=16)
        tokens = np.asarray(jt.solve(w, model=model).tokens)
        trace = jt.traffic.read_trace(TRACE_EXCERPT)
        k = trace.num_windows(20.0)
        plain = jt.traffic.Replay(trace, rate=0.3)
        by_window = jt.traffic.Replay(trace, rate=0.3, window=20.0)
        base = jt.simulate(w, tokens, None, 2, model=model, arrivals=plain)
        same = jt.simulate(
            w, np.broadcast_to(tokens, (k, 6)), None, 2, model=model, arrivals=by_window
        )
        for name in ("system_time", "queue_wait", "accuracy", "system_time_p95"):
            np.testing.assert_array_equal(getattr(same, name), getattr(base, name))

        low = np.zeros((k, 6))
        high = low.copy()
        high[-1] = tokens  # budgets only for the requests of the last window
        a, b = (jt.simulate(w, x, None, 2, model=model, arrivals=by_window) for x in (low, high))
        last = trace.window_index(20.0) == k - 1
        measured = last[a.warmup :].mean()  # the share of measured requests it holds
        gain = np.asarray(b.accuracy) - np.asarray(a.accuracy)
        assert np.all(gain > 0) and np.all(gain <= measured + 1e-12)

        scale = trace.mean_rate / 0.3
        rates, weights = trace.window_rates(20.0)
        want = sum(
            weights[j]
            * float(model.stats(high[j], w.replace(arrival_rate=rates[j] / scale))["system_time"])
            for j in range(k)
        )
        assert float(b.predicted_system_time) == pytest.approx(want, rel=1e-9)
