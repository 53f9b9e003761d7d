"""Recorded traffic: reading traces, describing them, replaying them, modelling them, and
planning budgets over their windows."""

from __future__ import annotations

import datetime as dt
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRACE_EXCERPT, TRACES, assert_refused, run_cli, strict_loads

import jaxopt_tokens as jt

AZURE_CODE = TRACES / "AzureLLMInferenceTrace_code_excerpt.csv"
MOONCAKE = TRACES / "mooncake_conversation_excerpt.jsonl"


# ------------------------------------------------------------------------------ reading


def test_the_public_trace_excerpts_are_read_in_their_formats():
    conv = jt.read_trace(TRACE_EXCERPT)
    assert (conv.format, len(conv)) == ("azure", 300)
    # an independent parse of the first two rows (7 fractional digits, truncated to 6)
    rows = TRACE_EXCERPT.read_text().splitlines()[1:3]
    t = [dt.datetime.strptime(r.split(",")[0][:26], "%Y-%m-%d %H:%M:%S.%f") for r in rows]
    assert conv.arrival_times[1] == pytest.approx((t[1] - t[0]).total_seconds(), abs=1e-6)
    assert conv.input_tokens[0] == float(rows[0].split(",")[1])
    assert conv.output_tokens[0] == float(rows[0].split(",")[2])
    assert conv.start.startswith("2023-11-16T18:15:46")
    moon = jt.read_trace(MOONCAKE)
    first = [json.loads(line) for line in MOONCAKE.read_text().splitlines()[:3]]
    assert moon.format == "mooncake" and len(moon) == 300
    assert moon.output_tokens[:3].tolist() == [f["output_length"] for f in first]
    assert np.all(np.diff(moon.arrival_times) >= 0) and moon.arrival_times[0] == 0


@pytest.mark.parametrize(
    "name, text, first_gap",
    [
        ("s.csv", "arrival_time,task\n10,a\n12.5,b\n11,a\n", 1.0),  # unsorted: sorted
        ("ms.csv", "timestamp_ms,output_tokens\n1000,5\n1250,7\n", 0.25),
        ("iso.csv", "time\n2024-05-10T00:00:00Z\n2024-05-10T00:00:01.5+00:00\n", 1.5),
        ("g.jsonl", '{"timestamp": 3.0, "output_tokens": 4}\n{"timestamp": 5.0}\n', None),
        (
            "b.csv",
            "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
            "5,ChatGPT,472,18,490,Conversation log\n45,GPT-4,1087,230,1317,API log\n",
            40.0,
        ),
    ],
)
def test_generic_and_burstgpt_files(tmp_path, name, text, first_gap):
    path = tmp_path / name
    path.write_text(text)
    if first_gap is None:  # a JSON lines file missing a token field: the arrival is kept
        trace = jt.read_trace(path)
        assert len(trace) == 2 and trace.output_tokens is None
        assert "1 of 2 requests lack it" in trace.dropped[0][0]
        return
    trace = jt.read_trace(path)
    assert trace.arrival_times[1] == pytest.approx(first_gap)
    if name == "b.csv":
        assert trace.format == "burstgpt" and trace.output_tokens.tolist() == [18, 230]


@pytest.mark.parametrize(
    "text, needle",
    [
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,3,4\nyesterday,3,4\n",
            r"line 3, column 'timestamp': 'yesterday' is not a time",
        ),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,3,4\n"
            "2023-11-16 18:15:47,x,4\n",
            r"line 3, column 'contexttokens': 'x' is not a number",
        ),
        ("arrival_time,output_tokens\n0,1\n1,-3\n", r"line 3, column 'output_tokens'"),
        ("arrival_time\n0\n", "at least two requests"),
        ("speed\n1\n2\n", "no time column"),
        ('{"timestamp": 0, "input_length": 1, "output_length": 2}\n[1]\n', "line 2"),
    ],
)
def test_bad_trace_files_name_file_line_and_column(tmp_path, text, needle):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(jt.InputError, match=needle):
        jt.read_trace(path)
    assert_refused(["trace", path], needle.split(",")[0].replace("\\", ""))


def test_rows_without_a_time_are_dropped_and_counted_the_rest_kept(tmp_path):
    """A row without a time has no arrival; a row without its token count keeps its arrival
    (the incomplete column is left out, and said)."""
    path = tmp_path / "t.csv"
    path.write_text("arrival_time,output_tokens\n0,1\n,2\n1,\n2,3\n")
    trace = jt.read_trace(path)
    assert len(trace) == 3 and trace.output_tokens is None
    assert dict(trace.dropped) == {
        "empty 'arrival_time'": 1,
        "column 'output_tokens': 1 of 3 requests lack it (the column is left out; every "
        "arrival is kept)": 1,
    }


# ----------------------------------------------------------------------------- describing


def _poisson(rate, n, seed=0):
    gaps = np.random.default_rng(seed).exponential(1 / rate, n)
    return jt.Trace(np.cumsum(gaps), output_tokens=np.full(n, 100.0))


def test_arrival_stats_against_numpy_and_poisson():
    trace = _poisson(5.0, 30_000)
    s = jt.arrival_stats(trace, window=10.0)
    counts = np.histogram(
        trace.arrival_times, bins=np.arange(0, trace.duration // 10 * 10 + 1, 10)
    )[0]
    assert s.dispersion[10.0] == pytest.approx(counts.var(ddof=1) / counts.mean(), rel=1e-12)
    assert abs(s.dispersion[10.0] - 1) < 0.2 and abs(s.interarrival_cv - 1) < 0.03
    assert s.mean_rate == pytest.approx(5.0, rel=0.02) and not s.warnings
    # a rate that jumps 5x half-way: said
    slow, fast = _poisson(1.0, 3000, 1), _poisson(5.0, 15000, 2)
    times = np.concatenate([slow.arrival_times, slow.duration + 1 + fast.arrival_times])
    moving = jt.Trace(times)
    assert any("rate moves" in w for w in jt.arrival_stats(moving).warnings)
    gaps = np.diff(trace.arrival_times)  # the SCV against numpy, and ~1 for Poisson
    assert jt.arrival_scv(trace) == pytest.approx(gaps.var() / gaps.mean() ** 2, rel=1e-9)
    assert abs(jt.arrival_scv(trace) - 1) < 0.05


def test_the_real_excerpts_are_bursty_as_measured():
    code = jt.arrival_stats(jt.read_trace(AZURE_CODE), window=10.0)
    assert code.interarrival_cv > 5 and code.dispersion[10.0] > 20 and code.warnings
    moon = jt.arrival_stats(jt.read_trace(MOONCAKE))
    assert moon.simultaneous_fraction > 0.5 and moon.largest_batch > 5


def test_trace_command_prints_strict_json_and_writes_a_figure(tmp_path):
    fig = tmp_path / "rate.png"
    rc, out, err = run_cli(
        ["trace", AZURE_CODE, "--window", "10", "--plot", fig, "--format", "json"]
    )
    assert rc == 0, err
    report = strict_loads(out)
    assert report["num_requests"] == 300 and report["format"] == "azure"
    assert fig.stat().st_size > 0
    assert_refused(["trace", AZURE_CODE, "--plot", fig], "exists")  # never replaced


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
        trace = jt.read_trace(AZURE_CODE)
        names = w.task_names
        labels = tuple(names[i % len(names)] for i in range(len(trace)))
        trace = jt.Trace(trace.arrival_times, output_tokens=trace.output_tokens, labels=labels)
        sim = jt.simulate(
            w,
            tokens,
            None,
            2,
            arrivals=trace,
            rate=0.3,
            service=service,
            task_types="trace",
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
        stream = jt.sample_query_stream(jax.random.key(7), w, 40_000)
        trace = jt.Trace(np.asarray(stream.arrival_times))
        replay = jt.simulate(w, tokens, None, 4, arrivals=trace, rate=float(w.arrival_rate))
        mean, lo, hi = poisson.interval("system_time")
        rep = float(np.mean(np.asarray(replay.system_time)))
        half = max(hi - lo, 0.05 * mean)
        assert abs(rep - mean) < half, (rep, mean, lo, hi)


def test_replay_at_a_utilization_and_budgets_by_window():
    with jax.enable_x64(True):
        w = jt.default_workload()
        tokens = np.asarray(jt.solve(w).tokens)
        trace = jt.read_trace(TRACE_EXCERPT)
        sim = jt.simulate(w, tokens, None, 2, arrivals=trace, utilization=0.5)
        assert float(sim.predicted_utilization) == pytest.approx(0.5)
        k = int(trace.window_index(20.0).max()) + 1
        same = jt.simulate(
            w,
            np.broadcast_to(tokens, (k, 6)),
            None,
            2,
            arrivals=trace,
            utilization=0.5,
            window=20.0,
        )
        np.testing.assert_array_equal(np.asarray(same.system_time), np.asarray(sim.system_time))
        with pytest.raises(jt.InputError, match=f"shape \\(..., {k}, 6\\)"):
            jt.simulate(w, tokens, None, 2, arrivals=trace, window=20.0)
        with pytest.raises(jt.InputError, match="rate, utilization"):
            jt.simulate(w, tokens, None, 2, arrivals=trace, rate=1.0, utilization=0.5)
        with pytest.raises(jt.InputError, match="num_queries"):
            jt.simulate(w, tokens, 100, 2, arrivals=trace)
        with pytest.raises(jt.InputError, match="utilization: a setting of trace replay"):
            jt.simulate(w, tokens, 100, 2, utilization=0.5)
        with pytest.raises(jt.InputError, match="no task labels"):
            jt.simulate(w, tokens, None, 2, arrivals=trace, task_types="trace")


def test_replay_on_the_batching_server():
    with jax.enable_x64(True):
        w = jt.default_workload()
        model = jt.ContinuousBatching(step_time=(0.02, 0.0005), max_batch=16)
        tokens = jt.solve(w, model=model).tokens
        trace = jt.read_trace(TRACE_EXCERPT)
        sim = jt.simulate(w, tokens, None, 2, model=model, arrivals=trace, utilization=0.5)
        assert float(sim.predicted_load) == pytest.approx(0.5, rel=1e-6)
        assert np.all(np.isfinite(np.asarray(sim.system_time)))
        with pytest.raises(jt.InputError, match="random routing"):
            jt.simulate(
                w, tokens, None, 2, model=model.replace(replicas=2), arrivals=trace, rate=1.0
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


# ------------------------------------------------------------------------------ models


def test_kingman_is_pk_for_poisson_and_grows_with_burstiness():
    with jax.enable_x64(True):
        w = jt.default_workload()
        l = jnp.asarray(jt.solve(w).tokens)
        pk = float(jt.FIFO(service_cv=0.3).mean_system_time(l, w))
        assert float(jt.Kingman(service_cv=0.3).mean_system_time(l, w)) == pytest.approx(pk)
        bursty = jt.solve(w, model=jt.Kingman(arrival_scv=9.0))
        assert int(bursty.status) == jt.Status.CONVERGED
        assert float(jnp.sum(w.share * bursty.tokens)) < float(jnp.sum(w.share * l))
        with pytest.raises(jt.InputError, match="arrival_scv"):
            jt.solve(w, model=jt.Kingman(arrival_scv=-1.0))


def test_time_varying_is_the_arrival_weighted_mean_of_windows():
    with jax.enable_x64(True):
        w = jt.default_workload()
        l = jnp.asarray(jt.solve(w).tokens)
        model = jt.TimeVarying(rate_factors=[0.5, 2.0], weights=[0.2, 0.8])
        by_hand = 0.2 * jt.FIFO().mean_system_time(
            l, w.replace(arrival_rate=0.05)
        ) + 0.8 * jt.FIFO().mean_system_time(l, w.replace(arrival_rate=0.2))
        assert float(model.mean_system_time(l, w)) == pytest.approx(float(by_hand), rel=1e-12)
        overloaded = jt.TimeVarying(rate_factors=[0.1, 50.0], weights=[0.5, 0.5])
        assert float(overloaded.mean_system_time(l, w)) == math.inf
        with pytest.raises(jt.InputError, match="one value per window"):
            jt.TimeVarying(rate_factors=[1.0, 2.0], weights=[1.0])


def test_time_varying_simulates_its_base_servers_queue():
    """The simulator runs the base's discipline (and priority order), not always FIFO."""
    order = (5, 4, 3, 2, 1, 0)
    for base, discipline in ((jt.FIFO(), "fifo"), (jt.Priority(order), "priority")):
        model = jt.TimeVarying(rate_factors=[0.5, 1.5], weights=[0.5, 0.5], base=base)
        assert model.discipline == discipline
        assert getattr(model, "order", None) == getattr(base, "order", None)
    with jax.enable_x64(True):
        w = jt.default_workload()
        l = jnp.asarray(jt.solve(w).tokens)
        trace = jt.Trace(np.cumsum(np.random.default_rng(0).exponential(10.0, 2000)))
        sim = jt.simulate(w, l, model=model, num_replications=2, arrivals=trace)
        assert sim.discipline == "priority"


def test_plan_windows_solves_each_window_and_a_robust_static_policy():
    with jax.enable_x64(True):
        w = jt.default_workload()
        es = float(jt.service_moments(jt.solve(w).tokens, w)[0])
        trace = jt.read_trace(AZURE_CODE)
        trace = trace.rescaled(0.3 / es)
        plan = jt.plan_windows(w, trace, window=trace.duration / 4)
        assert plan.tokens.shape == (len(plan.rates), 6)
        k = int(np.argmax(plan.rates))
        one = jt.solve(w.replace(arrival_rate=plan.rates[k])).tokens
        np.testing.assert_allclose(plan.tokens[k], one, rtol=1e-9, atol=1e-9)
        assert plan.static_status == jt.Status.CONVERGED
        static = plan.predicted(plan.static_tokens)["objective"]
        # the static policy maximises the weighted objective: no other static policy beats it
        for other in (plan.mean_rate_tokens, plan.tokens[k], 0.9 * plan.static_tokens):
            assert static >= plan.predicted(other)["objective"] - 1e-9
        assert plan.predicted(plan.tokens)["objective"] >= static - 1e-9


# ------------------------------------------------------------------------------ loaders


def test_request_logs_take_iso_times_bands_and_warn_on_moving_rates(tmp_path):
    log = tmp_path / "log.csv"
    times = [0, 1, 2, 3, 200, 200.1, 200.2, 200.3, 200.4, 200.5, 400, 401]
    stamps = [
        (dt.datetime(2024, 5, 10, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=s)).isoformat()
        for s in times
    ]
    log.write_text(
        "timestamp,output_tokens\n"
        + "".join(f"{s},{10 if i % 3 else 900}\n" for i, s in enumerate(stamps))
    )
    with pytest.warns(jt.TrafficWarning, match="misrepresents"):
        shares, rate = jt.read_request_log(
            log, ("short", "long"), bands={"short": 512, "long": math.inf}, window=50.0
        )
    np.testing.assert_allclose(shares, [8 / 12, 4 / 12])
    assert rate == pytest.approx(11 / 401)
    single, single_rate = jt.read_request_log(log, ("only",), window=1000.0)
    np.testing.assert_allclose(single, [1.0])
    assert single_rate == pytest.approx(11 / 401)  # the same requests, one task's
    with pytest.raises(jt.InputError, match="missing column 'task'"):
        jt.read_request_log(log, ("a", "b"))


def test_a_batching_only_workload_is_said_to_be_one():
    kw = dict(
        A=[0.5],
        b=[1e-3],
        D=[0.3],
        t0=[20.0],
        c=[0.01],
        arrival_rate=0.1,
        alpha=30.0,
        max_tokens=4096,
    )
    with pytest.raises(jt.WorkloadError, match="server='batching'"):
        jt.make_workload(**kw)
    w = jt.make_workload(**kw, server="batching")
    assert int(jt.solve(w, model=jt.ContinuousBatching()).status) == jt.Status.CONVERGED
    with pytest.raises(jt.WorkloadError, match="server: one of"):
        jt.make_workload(**kw, server="gpu")
