"""The continuously batching server: formulas, solver, simulator, calibration, planning."""

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxopt_tokens as jt
from jaxopt_tokens._queue.batching_sim import batching_trajectory

TAU = (0.02, 0.0005)
POLICY = jnp.asarray([0.0, 300.0, 0.0, 0.0, 250.0, 30.0])
TRAJECTORY = jax.jit(batching_trajectory, static_argnums=(5, 6))  # one compilation per limit


def reference_trajectory(arrivals, work, first_steps, tau0, tau1, limit):
    """An independent plain-Python simulation of the same rules, one decode step at a time."""
    q = len(arrivals)
    admit, first, depart = [None] * q, [None] * q, [None] * q
    running: dict[int, int] = {}
    qp = done = 0
    t_busy, S, M = 0.0, 0, 0
    while done < q:
        if not running:  # idle: a step starts at the next arrival
            t_busy, S, M = arrivals[qp], 0, 0
        T = t_busy + S * tau0 + M * tau1
        while qp < q and arrivals[qp] <= T and (limit is None or len(running) < limit):
            running[qp] = 0
            admit[qp] = T
            qp += 1
        S, M = S + 1, M + len(running)
        T = t_busy + S * tau0 + M * tau1
        for r in list(running):
            running[r] += 1
            if running[r] == first_steps[r]:
                first[r] = T
            if running[r] == work[r]:
                depart[r] = T
                del running[r]
                done += 1
    return np.asarray(admit), np.asarray(first), np.asarray(depart)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    limit=st.sampled_from([None, 1, 2, 5, 16]),
    rate=st.floats(0.5, 60.0),
    tau0=st.floats(0.0, 0.05),
    tau1=st.floats(1e-5, 0.01),
)
def test_event_simulator_equals_a_step_by_step_reference(seed, limit, rate, tau0, tau1):
    rng = np.random.default_rng(seed)
    q = 120
    arrivals = np.cumsum(rng.exponential(1 / rate, q))
    work = rng.integers(1, 30, q)
    first = np.minimum(rng.integers(1, 6, q), work)
    ref = reference_trajectory(list(arrivals), list(work), list(first), tau0, tau1, limit)
    got = TRAJECTORY(
        jnp.asarray(arrivals),
        jnp.asarray(work, jnp.int64),
        jnp.asarray(first, jnp.int64),
        tau0,
        tau1,
        128,  # room for every request: the reference has no slot limit
        limit,
    )
    for a, b in zip(got[:3], ref):
        np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=1e-9)
    assert not bool(got[4])


def test_unlimited_batching_is_the_negative_binomial_symmetric_queue(table1):
    """E[T] = R + (tau0 + tau1) E[w] / (1 - lam tau1 E[w]), E[T | w] linear in w."""
    m = jt.ContinuousBatching(step_time=TAU, answer_tokens=100.0, prefill=20.0)
    w = table1.replace(arrival_rate=1.0)
    work = POLICY + 120.0
    Ew = float(jnp.sum(w.share * work))
    q = 1.0 * TAU[1] * Ew
    s = m.stats(POLICY, w)
    assert float(s["service_time"]) == pytest.approx((TAU[0] + TAU[1]) * Ew / (1 - q), rel=1e-12)
    r = TAU[0] / TAU[1] + 1  # negative binomial number in system: mean r q / (1 - q)
    assert float(s["in_system"]) == pytest.approx(r * q / (1 - q), rel=1e-12)
    per = np.asarray(m.system_times(POLICY, w))
    slope = np.polyfit(np.asarray(work), per, 1)
    np.testing.assert_allclose(np.polyval(slope, np.asarray(work)), per, rtol=1e-12)
    # a huge max_batch is the same server
    big = jt.ContinuousBatching(step_time=TAU, answer_tokens=100.0, prefill=20.0, max_batch=4000)
    assert float(big.mean_system_time(POLICY, w)) == pytest.approx(
        float(m.mean_system_time(POLICY, w)), rel=1e-6
    )


def test_unstable_servers_give_inf_and_a_status_never_nan(table1):
    m = jt.ContinuousBatching(step_time=TAU, max_batch=8)
    w = table1.replace(arrival_rate=1e3)
    assert np.isinf(float(m.mean_system_time(POLICY, w)))
    assert np.all(np.isinf(np.asarray(m.system_times(POLICY, w))))
    g = jax.grad(lambda l: m.mean_system_time(l, w))(POLICY)
    assert not np.any(np.isnan(np.asarray(g)))
    for model in (m, jt.ContinuousBatching(step_time=TAU)):
        sol = jt.solve_latency(w, model)
        assert jt.Status(int(sol.status)) == jt.Status.UNSTABLE_INPUT
        assert np.all(np.isnan(np.asarray(sol.tokens)))


@pytest.mark.parametrize(
    "kw,needle",
    [
        (dict(step_time=(0.02, 0.0)), "tau1"),
        (dict(step_time=(-1.0, 0.001)), "tau0"),
        (dict(step_time=(float("nan"), 0.001)), "tau0"),
        (dict(step_time=(0.02,)), "step_time"),
        (dict(max_batch=0), "max_batch"),
        (dict(max_batch=2.5), "max_batch"),
        (dict(replicas=0), "replicas"),
        (dict(answer_tokens=-1.0), "answer_tokens"),
        (dict(prefill=float("inf")), "prefill"),
    ],
)
def test_bad_server_settings_name_the_field(kw, needle):
    with pytest.raises(jt.InputError, match=needle):
        jt.ContinuousBatching(**kw)


@pytest.mark.parametrize("max_batch,dtype", [(None, np.float64), (8, np.float64), (8, np.float32)])
def test_solve_latency_matches_scipy_and_differentiates(table1, max_batch, dtype):
    m = jt.ContinuousBatching(step_time=TAU, max_batch=max_batch)
    w = table1.replace(arrival_rate=0.5).astype(dtype)
    sol = jt.solve_latency(w, m)
    assert jt.Status(int(sol.status)) == jt.Status.CONVERGED
    w64 = table1.replace(arrival_rate=0.5)

    def f(l):
        return -float(m.objective(jnp.asarray(l), w64))

    def g(l):
        return -np.asarray(jax.grad(m.objective)(jnp.asarray(l), w64))

    best = min(
        (
            scipy.optimize.minimize(
                f, x0, jac=g, method="L-BFGS-B", bounds=[(0, 32768)] * 6, tol=1e-14
            )
            for x0 in (np.zeros(6), np.full(6, 200.0), np.full(6, 1000.0))
        ),
        key=lambda r: r.fun,
    )
    ours = float(m.objective(jnp.asarray(sol.tokens, jnp.float64), w64))
    assert ours >= -best.fun - (1e-9 if dtype == np.float64 else 1e-4) * abs(best.fun)
    if dtype == np.float64:
        np.testing.assert_allclose(sol.tokens, best.x, atol=0.05)
    # the implicit derivative against central finite differences (the limited-batch solve
    # attaches the same dense model derivative that test_solvers checks for every model)
    if dtype == np.float64 and max_batch is None:
        grad = jax.grad(lambda a: jt.solve_latency(w.replace(alpha=a), m).tokens[1])(30.0)
        h = 1e-2  # the solves stop at a relative residual of 1e-9: keep h well above that
        fd = (
            jt.solve_latency(w.replace(alpha=30.0 + h), m).tokens[1]
            - jt.solve_latency(w.replace(alpha=30.0 - h), m).tokens[1]
        ) / (2 * h)
        assert float(grad) == pytest.approx(float(fd), rel=1e-4)


def test_unlimited_solve_is_vmapped_with_a_status_per_member(table1):
    rates = jnp.asarray([0.1, 0.5, 2.0, 1e4])
    batch = jax.vmap(lambda r: table1.replace(arrival_rate=r))(rates)
    sols = jt.solve_latency(batch, jt.ContinuousBatching(step_time=TAU))
    assert [jt.Status(int(s)) for s in sols.status] == [jt.Status.CONVERGED] * 3 + [
        jt.Status.UNSTABLE_INPUT
    ]
    assert int(jnp.max(sols.iterations[:3])) <= 12  # one price: a handful of Newton steps


@pytest.mark.parametrize(
    "max_batch,loads", [(None, (0.1, 0.5, 0.8)), (16, (0.3, 0.7, 0.9)), (4, (0.5, 0.9))]
)
def test_model_within_the_simulators_intervals(table1, max_batch, loads):
    """The model against the simulator across loads, with and without a binding max_batch
    (the unlimited formula is exact up to the simulator's step granularity; the limited one
    is an approximation: within 5% where it is tested, see the docs page)."""
    m = jt.ContinuousBatching(step_time=TAU, max_batch=max_batch, answer_tokens=50.0)
    cap = float(m.capacity(POLICY, table1.replace(arrival_rate=1.0)))
    for load in loads:
        w = table1.replace(arrival_rate=load * cap)
        r = jt.simulate_batching(w, POLICY[None], m, num_queries=4000, num_replications=8)
        mean, lo, hi = (float(x[0]) for x in r.interval("system_time", 0.99))
        pred = float(r.predicted_system_time[0])
        tolerance = 0.0 if max_batch is None else 0.05 * pred
        assert lo - tolerance <= pred <= hi + tolerance, (load, pred, mean, lo, hi)
        # the mean batch size: exact for unlimited batches; with a small max_batch the chain's
        # number running is the rougher part of the approximation (E[T] is what is corrected)
        assert float(r.summary()["running"]["mean"][0]) == pytest.approx(
            float(r.predicted_running[0]), rel=0.1 if max_batch is None else 0.2
        )
        frac = np.asarray(r.batch_size)[0].mean(0)
        assert frac.sum() == pytest.approx(1.0) and (
            max_batch is None or frac.size == max_batch + 1
        )
        assert float(r.summary()["ttft"]["mean"][0]) < mean


def test_simulator_refuses_and_warns(table1):
    m = jt.ContinuousBatching(step_time=TAU)
    with pytest.warns(jt.UnstableQueueWarning):
        jt.simulate_batching(table1.replace(arrival_rate=50.0), POLICY[None], m, 200, 2, slots=4096)
    with pytest.raises(jt.InputError, match="slots"):
        jt.simulate_batching(table1.replace(arrival_rate=2.0), POLICY[None], m, 500, 2, slots=2)
    with pytest.raises(jt.InputError, match="tokens"):
        jt.simulate_batching(table1, jnp.asarray([[1.0, -1, 0, 0, 0, 0]]), m, 100, 2)


def _vllm_result(n, tpot_ms):
    # the keys vllm/benchmarks/serve.py (main_async) writes, as in vLLM 0.33.0
    return {
        "date": "20261201-000000",
        "backend": "vllm",
        "model_id": "Qwen/Qwen3-8B",
        "num_prompts": 500,
        "request_rate": "inf",
        "burstiness": 1.0,
        "max_concurrency": n,
        "duration": 100.0,
        "completed": 500,
        "total_output_tokens": 100000,
        "mean_tpot_ms": tpot_ms * 1.01,
        "median_tpot_ms": tpot_ms,
        "std_tpot_ms": 1.0,
        "p99_tpot_ms": tpot_ms * 1.2,
        "mean_ttft_ms": 50.0,
        "max_concurrent_requests": n,
    }


def test_fit_step_time_from_vllm_benchmark_files_and_csv(tmp_path):
    rng = np.random.default_rng(0)
    files = []
    for n in (1, 4, 16, 64, 128, 256):
        f = tmp_path / f"c{n}.json"
        f.write_text(
            json.dumps(_vllm_result(n, 1e3 * (0.02 + 0.0005 * n) * (1 + 0.01 * rng.normal())))
        )
        files.append(f)
    fit = jt.fit_step_time(*files)
    assert fit.interval("tau0")[0] < 0.02 < fit.interval("tau0")[1]
    assert fit.interval("tau1")[0] < 0.0005 < fit.interval("tau1")[1]
    assert fit.model(max_batch=32).step_time == (fit.tau0, fit.tau1)
    shipped = jt.fit_step_time(
        jt.__path__[0] + "/data/synthetic_step_times.csv"  # labelled synthetic in its header
    )
    assert abs(shipped.tau1 - 0.0005) < 3 * shipped.se_tau1 + 1e-5
    # a step time that bends (attention cost growing with the batch) is flagged
    n = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256.0])
    with pytest.warns(jt.FitWarning, match="not linear"):
        jt.fit_step_time(concurrency=n, step_time=0.02 + 0.0001 * n + 2e-6 * n**2)


@pytest.mark.parametrize(
    "text,needle",
    [
        ('{"median_tpot_ms": 20}', "max_concurrency"),
        ('{"max_concurrency": 4}', "tpot"),
        ('{"max_concurrency": "four", "median_tpot_ms": 20}', "max_concurrency"),
        ("[1, 2]", "JSON object"),
        ("{not json", "not valid JSON"),
        ("concurrency,tpot\n1,0.02\n2,-1\n", "line 3"),
        ("concurrency,speed\n1,2\n", "tpot"),
    ],
)
def test_bad_benchmark_files_name_the_field_and_line(tmp_path, text, needle):
    f = tmp_path / ("x.json" if text.startswith(("{", "[")) else "x.csv")
    f.write_text(text)
    with pytest.raises(jt.InputError, match=needle):
        jt.fit_step_time(f, f, f)


def test_cli_fit_server_solve_and_plan(tmp_path, capsys):
    from jaxopt_tokens.cli.main import main

    shipped = jt.__path__[0] + "/data/synthetic_step_times.csv"
    assert main(["fit-server", shipped, "--format", "json"]) == 0
    fitted = json.loads(capsys.readouterr().out)
    step = fitted["step_time_arg"]
    argv = ["solve", "--server", "batching", "--step-time", step, "--arrival-rate", "0.5"]
    assert main([*argv, "--format", "json"]) == 0
    free = json.loads(capsys.readouterr().out)
    assert free["method"] == "batching-newton" and free["load"] < 1
    plan = [
        "plan",
        "--step-time",
        step,
        "--max-batch",
        "64",
        "--arrival-rate",
        "8",
        "--target-latency",
        "12",
        "--max-replicas",
        "6",
        "--format",
        "json",
    ]
    assert main([*plan, "--plot", str(tmp_path / "replicas.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    chosen = out["replicas"]
    assert chosen is not None and (tmp_path / "replicas.png").exists()
    rows = out["rows"]
    assert rows[chosen - 1]["meets"] and not any(r["meets"] for r in rows[: chosen - 1])
    assert rows[chosen - 1]["mean_system_time"] <= 12
    sim = [
        "simulate",
        "--server",
        "batching",
        "--step-time",
        step,
        "--max-batch",
        "32",
        "--arrival-rate",
        "2",
        "--num-queries",
        "1500",
        "--num-replications",
        "3",
        "--format",
        "json",
    ]
    assert main(sim) == 0
    stats = json.loads(capsys.readouterr().out)["statistics"]
    mean, model = stats["system_time"]["mean"][0], stats["system_time"]["predicted"][0]
    assert stats["system_time_p95"]["mean"][0] > mean > 0 and model == pytest.approx(mean, rel=0.1)
    # bad settings: one line naming the flag
    assert main(["solve", "--server", "batching"]) == 2
    assert "--step-time" in capsys.readouterr().err
    assert main(["solve", "--step-time", "0.02,0.0005"]) == 2
    assert "--server batching" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["solve", "--server", "batching", "--step-time", "0.02,0"])
    assert "tau1" in capsys.readouterr().err


def test_budgets_differ_between_mg1_and_batching_for_a_reason(table1):
    """M/G/1 charges the second moment of service time (a long request delays everyone
    behind it); batching charges mean work. At the same mean load, batching gives the long
    (high-budget) tasks relatively more."""
    mg1 = jt.solve(table1)
    cb = jt.ContinuousBatching(step_time=TAU, answer_tokens=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sol = jt.solve_latency(table1.replace(arrival_rate=float(table1.arrival_rate)), cb)
    assert jt.Status(int(sol.status)) == jt.Status.CONVERGED
    assert "price" in sol.stats
    # single price: every task with a positive budget has the same marginal accuracy gain
    l = np.asarray(sol.tokens)
    free = (l > 0) & (l < float(table1.max_tokens))
    gain = np.asarray(table1.alpha * table1.A * table1.b * np.exp(-np.asarray(table1.b) * l))
    np.testing.assert_allclose(gain[free], float(sol.stats["price"]), rtol=1e-8)
    assert not np.allclose(l, np.asarray(mg1.tokens))
