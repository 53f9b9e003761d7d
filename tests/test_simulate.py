"""The JAX queue simulator against the recursion, simpy, ciw and the Pollaczek-Khinchine formula."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    FAST,
    assert_refused,
    run_cli,
    strict_loads,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxopt_tokens as jt
from jaxopt_tokens._queue.results import sample_quantiles
from jaxopt_tokens._queue.server_sim import lindley_waits
from jaxopt_tokens._queue.stream import sample_query_stream
from jaxopt_tokens._stats import student_t_quantile
from jaxopt_tokens.cli import main


def recursion_waits(gaps, service):
    """The textbook Lindley recursion, one query at a time."""
    waits = np.zeros(len(gaps))
    for i in range(1, len(gaps)):
        waits[i] = max(0.0, waits[i - 1] + service[i - 1] - gaps[i])
    return waits


@pytest.mark.slow  # the recursion in a Python loop over long streams
@settings(max_examples=40, deadline=None)
@given(st.integers(2, 300), st.floats(0.05, 3.0), st.integers(0, 2**31 - 1))
def test_parallel_lindley_equals_recursion(n, load, seed):
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0, n)
    service = rng.gamma(2.0, load / 2, n)
    got = np.asarray(lindley_waits(jnp.asarray(gaps), jnp.asarray(service)))
    np.testing.assert_allclose(got, recursion_waits(gaps, service), rtol=0, atol=1e-9)


def _stream(table1, num=2000, key=3, cv=0.5):
    """A stream at Table I's optimum, with service noise and a load high enough to queue."""
    w = table1.replace(arrival_rate=0.5)
    tokens = np.asarray(jt.solve(table1).tokens)
    s = sample_query_stream(jax.random.PRNGKey(key), w, num, service_cv=cv, noise="gamma")
    service = np.asarray((w.t0 + w.c * tokens)[s.task] * s.noise)
    return np.asarray(s.gaps), service


def test_waits_equal_simpy_on_the_same_stream(table1):
    simpy = pytest.importorskip("simpy")
    gaps, service = _stream(table1)
    arrivals = np.cumsum(gaps)
    env = simpy.Environment()
    server = simpy.Resource(env, capacity=1)
    started = np.full(len(gaps), np.nan)

    def query(i):
        yield env.timeout(arrivals[i] - env.now)
        with server.request() as req:
            yield req
            started[i] = env.now
            yield env.timeout(service[i])

    def source():
        for i in range(len(gaps)):
            yield env.timeout(arrivals[i] - env.now)
            env.process(query(i))

    env.process(source())
    env.run()
    np.testing.assert_allclose(lindley_waits(gaps, service), started - arrivals, rtol=0, atol=1e-9)
    assert np.mean(started - arrivals > 0) > 0.2  # the check is not vacuous: queries did wait


def test_waits_equal_ciw_on_the_same_stream(table1):
    ciw = pytest.importorskip("ciw")
    gaps, service = _stream(table1, num=1500, key=5)
    network = ciw.create_network(
        arrival_distributions=[ciw.dists.Sequential(list(gaps) + [1e12])],
        service_distributions=[ciw.dists.Sequential(list(service) + [1.0])],
        number_of_servers=[1],
    )
    ciw.seed(0)
    sim = ciw.Simulation(network)
    sim.simulate_until_max_customers(len(gaps), method="Finish")
    records = sorted(sim.get_all_records(), key=lambda r: r.arrival_date)
    ciw_waits = np.array([r.waiting_time for r in records])
    assert len(ciw_waits) == len(gaps)
    np.testing.assert_allclose(lindley_waits(gaps, service), ciw_waits, rtol=0, atol=1e-9)


@pytest.mark.parametrize("rho", [0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95])
def test_mean_system_time_within_99pct_interval_of_pk(table1, rho):
    tokens = np.array([200.0, 300.0, 0.0, 50.0, 400.0, 30.0])
    m1 = float(jnp.sum(table1.share * (table1.t0 + table1.c * tokens)))
    w = table1.replace(arrival_rate=rho / m1)
    long_run = rho >= 0.8  # the wait's autocorrelation grows like 1/(1-rho)^2
    r = jt.simulate(
        w,
        tokens,
        num_queries=200_000 if long_run else 20_000,
        num_replications=30,
        key=jax.random.PRNGKey(int(rho * 100)),
        model=jt.FIFO(service_cv=0.3),
    )
    mean, lo, hi = r.interval("system_time", level=0.99)
    assert lo <= float(r.predicted_system_time) <= hi, (rho, mean, lo, hi, r.predicted_system_time)
    assert float(r.predicted_utilization) == pytest.approx(rho, rel=1e-9)
    mean_rho, lo_rho, hi_rho = r.interval("utilization", level=0.99)
    assert lo_rho <= rho <= hi_rho


def test_littles_law_on_one_long_trajectory(table1):
    w = table1.replace(arrival_rate=0.4)
    tokens = np.asarray(jt.solve(table1).tokens)
    s = sample_query_stream(jax.random.PRNGKey(11), w, 100_000, service_cv=1.0)
    service = np.asarray((w.t0 + w.c * tokens)[s.task] * s.noise)
    arrivals = np.cumsum(np.asarray(s.gaps))
    departures = arrivals + np.asarray(lindley_waits(s.gaps, service)) + service
    # time-average number in system L, from N(t) = arrivals - departures on a fine grid
    grid = np.linspace(arrivals[1000], arrivals[-1000], 400_000)
    in_system = np.searchsorted(arrivals, grid, "right") - np.searchsorted(
        np.sort(departures), grid, "right"
    )
    L = in_system.mean()
    window = (arrivals >= grid[0]) & (arrivals <= grid[-1])
    lam_hat = window.sum() / (grid[-1] - grid[0])
    assert L == pytest.approx(lam_hat * np.mean((departures - arrivals)[window]), rel=0.02)


def test_section_iv_optimal_beats_uniform_in_realised_objective(table1):
    opt = np.asarray(jt.solve(table1).tokens)
    policies = np.stack([opt, np.zeros(6), np.full(6, 100.0), np.full(6, 500.0)])
    r = jt.simulate(table1, policies, num_queries=10_000, num_replications=20)
    summary = r.summary(level=0.99)
    for name in ("system_time", "accuracy", "objective"):
        lo, hi = summary[name]["lower"], summary[name]["upper"]
        assert np.all((lo <= summary[name]["predicted"]) & (summary[name]["predicted"] <= hi)), name
    # common random numbers: the paired difference is far tighter than either interval
    diff = np.asarray(r.objective[0] - r.objective[1:])
    assert np.all(diff.mean(axis=-1) > 3 * diff.std(axis=-1, ddof=1) / np.sqrt(20))
    assert np.all(summary["system_time_p95"]["mean"] >= summary["system_time_p50"]["mean"])


def test_common_random_numbers_and_reproducibility(table1):
    tokens = np.array([[100.0] * 6, [100.0] * 6, [300.0] * 6])
    a = jt.simulate(table1, tokens, 3000, 3, key=jax.random.PRNGKey(7))
    b = jt.simulate(table1, tokens[2], 3000, 3, key=jax.random.PRNGKey(7))
    np.testing.assert_array_equal(a.wait[0], a.wait[1])
    np.testing.assert_array_equal(a.wait[2], b.wait)
    c = jt.simulate(table1, tokens[2], 3000, 3, key=jax.random.PRNGKey(8))
    assert not np.array_equal(b.wait, c.wait)
    # more tokens for everyone: every query's service is longer on the same stream
    assert np.all(a.system_time[2] > a.system_time[0])


def test_float32_waits_track_float64_on_the_same_stream(table1):
    gaps, service = _stream(table1, num=10_000)
    w64 = np.asarray(lindley_waits(gaps, service))
    w32 = np.asarray(lindley_waits(gaps.astype(np.float32), service.astype(np.float32)))
    # the running sum carries roundoff ~ eps32 * (total simulated time)
    assert np.max(np.abs(w32 - w64)) < 50 * np.finfo(np.float32).eps * np.sum(gaps)


def test_float32_simulation_agrees_with_pk(table1):
    tokens = np.asarray(jt.solve(table1).tokens)
    r32 = jt.simulate(table1.astype(jnp.float32), tokens, 10_000, 20)
    assert r32.wait.dtype == jnp.float32
    mean, lo, hi = r32.interval("system_time", level=0.99)
    assert lo <= float(r32.predicted_system_time) <= hi


@pytest.mark.parametrize("noise", ["lognormal", "gamma"])
def test_noise_has_mean_one_and_requested_cv(table1, noise):
    s = sample_query_stream(jax.random.PRNGKey(0), table1, 400_000, service_cv=0.7, noise=noise)
    x = np.asarray(s.noise)
    assert x.mean() == pytest.approx(1.0, abs=0.01)
    assert x.std() == pytest.approx(0.7, rel=0.02)


def test_quantiles_match_numpy():
    x = np.random.default_rng(1).exponential(size=9_001)
    for dtype in (np.float32, np.float64):
        np.testing.assert_allclose(
            sample_quantiles(jnp.asarray(x, dtype)),
            np.quantile(x.astype(dtype), [0.5, 0.95, 0.99]),
            rtol=1e-6,
        )


def test_student_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 4, 19, 200):
        for p in (0.9, 0.975, 0.995):
            assert float(student_t_quantile(p, df)) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"tokens": np.zeros(5)}, "tokens"),
        ({"tokens": np.full(6, -1.0)}, "tokens"),
        ({"tokens": np.full(6, np.nan)}, "tokens"),
        ({"tokens": np.zeros(6), "num_queries": 1}, "num_queries"),
        ({"tokens": np.zeros(6), "num_replications": 0}, "num_replications"),
        ({"tokens": np.zeros(6), "warmup": 5000, "num_queries": 5000}, "warmup"),
        ({"tokens": np.zeros(6), "model": jt.FIFO(service_cv=-0.1)}, "service_cv"),
        ({"tokens": np.zeros(6), "model": jt.FIFO(service_cv=[0.1, 0.2])}, "service_cv"),
        ({"tokens": np.zeros(6), "model": "fifo"}, "model"),
        ({"tokens": np.zeros(6), "model": jt.ContinuousBatching(), "noise": "gamma"}, "noise"),
        ({"tokens": np.zeros(6), "noise": "pareto"}, "noise"),
    ],
)
def test_bad_input_names_the_field(table1, kwargs, field):
    with pytest.raises(jt.InputError, match=field):
        jt.simulate(table1, **kwargs)


def test_cli_simulate_json_compares_policies(tmp_path, capsys):

    from jaxopt_tokens.cli import main

    budgets = tmp_path / "budgets.json"
    budgets.write_text(
        json.dumps(
            {"AIME": 0, "GSM8K": 341, "GPQA": 0, "CRUXEval": 0, "BBH": 346, "ARC-Challenge": 30}
        )
    )
    code = main(
        [
            "simulate",
            "--tokens",
            "optimal",
            "--tokens",
            "uniform:500",
            "--tokens",
            str(budgets),
            "--num-queries",
            "4000",
            "--num-replications",
            "5",
            "--format",
            "json",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["policies"] == ["optimal", "uniform:500", str(budgets)]
    st = report["statistics"]["system_time"]
    assert len(st["mean"]) == 3 and all(
        lo <= m <= hi for lo, m, hi in zip(st["lower"], st["mean"], st["upper"])
    )
    np.testing.assert_allclose(report["tokens"][0], report["tokens"][2], atol=1.0)
    assert st["predicted"][1] > st["predicted"][0]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--tokens", "uniform:-5"], "tokens"),
        (["--tokens", "uniform:abc"], "uniform:TOKENS"),
        (["--tokens", "no_such_file.json"], "no_such_file.json"),
        (["--level", "1.5"], "--level"),
        (["--service-cv", "-1"], "service_cv"),
    ],
)
def test_cli_simulate_bad_input_is_one_line(capsys, argv, needle):

    assert main(["simulate", "--num-queries", "100", "--num-replications", "2", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


@pytest.mark.slow  # a priority solve and simulation through the CLI
def test_cli_simulate_priority_uses_the_priority_optimum(capsys, table1):

    from jaxopt_tokens.cli import main

    order = "CRUXEval,AIME,ARC-Challenge,GPQA,GSM8K,BBH"
    assert (
        main(
            [
                "simulate",
                "--discipline",
                "priority",
                "--priority",
                order,
                "--arrival-rate",
                "0.15",
                "--num-queries",
                "3000",
                "--num-replications",
                "3",
                "--format",
                "json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["discipline"] == "priority"
    w = table1.replace(arrival_rate=0.15)
    expected = jt.solve_latency(
        w, jt.Priority(order=tuple(w.task_names.index(n) for n in order.split(",")))
    )
    np.testing.assert_allclose(
        report["tokens"][0], np.asarray(expected.tokens), rtol=1e-6, atol=1e-6
    )
    assert main(["simulate", "--discipline", "priority", "--priority", "AIME,GSM8K"]) == 2
    assert "every task exactly once" in capsys.readouterr().err


def test_policies_in_memory_bounded_batches_give_the_same_result(table1, monkeypatch):
    import jaxopt_tokens._queue.server_sim as sim

    policies = np.random.default_rng(2).uniform(0, 400, (7, 6))
    whole = jt.simulate(table1, policies, 3000, 2)
    monkeypatch.setattr(sim, "MAX_BATCH_ELEMENTS", 2 * 3000)  # two policies per batch
    batched = jt.simulate(table1, policies, 3000, 2)
    for name in ("system_time", "system_time_p95", "accuracy", "utilization"):
        np.testing.assert_allclose(getattr(batched, name), getattr(whole, name), rtol=1e-12)


def test_unstable_policy_warns_and_reports_infinite_prediction(table1):
    heavy = np.full(6, 3000.0)  # E[S] ~ 36 s at 0.1 queries/s: rho ~ 3.6
    with pytest.warns(jt.UnstableQueueWarning, match="utilization >= 1"):
        r = jt.simulate(table1, np.stack([np.zeros(6), heavy]), 2000, 2)
    assert np.isinf(float(r.predicted_system_time[1])) and np.isfinite(
        float(r.predicted_system_time[0])
    )
    assert np.all(np.isfinite(np.asarray(r.system_time)))  # finite simulated waits, never NaN


def test_simulate_api_types(table1):
    tokens = np.zeros(6)
    for kw, field in [({"num_queries": 100.5}, "num_queries"), ({"key": 5}, "key")]:
        with pytest.raises(jt.InputError, match=field):
            jt.simulate(table1, tokens, **{"num_replications": 2, **kw})
    with pytest.raises(jt.InputError, match="tokens"):
        jt.simulate(table1, ["a"] * 6, 100, 2)


def test_simulate_cli_strict_json_and_limits(files):
    rc, out, _ = run_cli(
        ["simulate", "--num-queries", "200", "--num-replications", "1", "--format", "json"]
    )
    assert rc == 0
    strict_loads(out)
    assert_refused(["simulate", "--seed", "99999999999999999999"], "--seed")
    assert_refused(["simulate", "--num-queries", "1000000000"], "GiB")
    assert_refused(["simulate", *FAST, "--tokens", files / "bad.bin"], "UTF-8")
