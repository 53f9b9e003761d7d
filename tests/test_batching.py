"""The continuously batching server: formulas, solver, simulator, calibration, planning."""

import json
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxopt_tokens as jt
from jaxopt_tokens._queue.batching_sim import batching_trajectory, routed_trajectory

TAU = (0.02, 0.0005)
POLICY = jnp.asarray([0.0, 300.0, 0.0, 0.0, 250.0, 30.0])
TRAJECTORY = jax.jit(batching_trajectory, static_argnums=(5, 6))  # one compilation per limit
ROUTED = jax.jit(routed_trajectory, static_argnums=(5, 6, 7, 8))


def reference_trajectory(
    arrivals,
    work,
    first_steps,
    tau0,
    tau1,
    limit,
    replicas=1,
    routing="shortest_queue",
    window=None,
):
    """An independent plain-Python simulation of the same rules, one decode step at a time:
    `replicas` servers, each arrival routed on arrival to the replica with the fewest requests
    present (or decode steps outstanding), ties to the lowest index; at equal times a step
    ends before an arrival is routed. Returns admission, first-token and departure times and
    the replicas' summed time with n running inside `window`."""
    q = len(arrivals)
    admit, first, depart = [None] * q, [None] * q, [None] * q
    lo, hi = window if window is not None else (arrivals[0], arrivals[-1])
    hist: dict[int, float] = {}

    def add(n, a, b):
        hist[n] = hist.get(n, 0.0) + max(min(b, hi) - max(a, lo), 0.0)

    class Replica:
        def __init__(self):
            self.running: dict[int, int] = {}  # request -> tokens so far
            self.queue: list[int] = []
            self.t_busy, self.S, self.M = 0.0, 0, 0
            self.idle_since = arrivals[0]
            self.starting = False  # idle, a request routed to it: a step starts now

        def now(self):
            return self.t_busy + self.S * tau0 + self.M * tau1

        def next_event(self):
            if self.starting:
                return self.t_busy
            if self.running:  # the end of the current step
                return self.t_busy + (self.S + 1) * tau0 + (self.M + len(self.running)) * tau1
            return math.inf

        def admit_waiting(self, T):
            while self.queue and (limit is None or len(self.running) < limit):
                r = self.queue.pop(0)
                self.running[r] = 0
                admit[r] = T

    servers = [Replica() for _ in range(replicas)]
    ap = done = 0
    while done < q:
        ends = [srv.next_event() for srv in servers]
        e = min(range(replicas), key=lambda i: (ends[i], i))
        if ap < q and arrivals[ap] < ends[e]:  # route the arrival
            if routing == "shortest_queue":
                score = [len(x.running) + len(x.queue) for x in servers]
            else:
                score = [
                    sum(work[r] - k for r, k in x.running.items()) + sum(work[r] for r in x.queue)
                    for x in servers
                ]
            i = min(range(replicas), key=lambda j: (score[j], j))
            srv = servers[i]
            if not srv.running and not srv.queue:
                add(0, srv.idle_since, arrivals[ap])
                srv.t_busy, srv.S, srv.M, srv.starting = arrivals[ap], 0, 0, True
            srv.queue.append(ap)
            ap += 1
            continue
        srv = servers[e]
        if srv.starting:
            srv.starting = False
            srv.admit_waiting(srv.now())
            continue
        n = len(srv.running)
        t0 = srv.now()
        srv.S, srv.M = srv.S + 1, srv.M + n
        T = srv.now()
        add(n, t0, T)
        for r in list(srv.running):
            srv.running[r] += 1
            if srv.running[r] == first_steps[r]:
                first[r] = T
            if srv.running[r] == work[r]:
                depart[r] = T
                del srv.running[r]
                done += 1
        srv.admit_waiting(T)
        if not srv.running:
            srv.idle_since = T
    for srv in servers:
        add(0, srv.idle_since, hi)
    size = max(hist) + 1
    h = np.zeros(size)
    for n, t in hist.items():
        h[n] = t
    return np.asarray(admit), np.asarray(first), np.asarray(depart), h


def _assert_same_trajectory(got, ref):
    for a, b in zip(got[:3], ref[:3]):
        np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=1e-9)
    hist = np.asarray(got[3])
    assert np.all(hist[len(ref[3]) :] == 0)
    np.testing.assert_allclose(hist[: len(ref[3])], ref[3], rtol=0, atol=1e-9)
    assert not bool(got[4])


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
    window = (float(arrivals[10]), float(arrivals[-1]))
    ref = reference_trajectory(
        list(arrivals), list(work), list(first), tau0, tau1, limit, window=window
    )
    args = (jnp.asarray(arrivals), jnp.asarray(work, jnp.int64), jnp.asarray(first, jnp.int64))
    # 128 slots: room for every request (the reference has no slot limit)
    _assert_same_trajectory(TRAJECTORY(*args, tau0, tau1, 128, limit, window), ref)
    # one replica under state-dependent routing is the same server
    _assert_same_trajectory(ROUTED(*args, tau0, tau1, 128, limit, 1, "shortest_queue", window), ref)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    limit=st.sampled_from([None, 1, 3, 8]),
    replicas=st.sampled_from([2, 3, 5]),
    routing=st.sampled_from(["shortest_queue", "least_loaded"]),
    rate=st.floats(1.0, 150.0),
    tau0=st.floats(0.0, 0.05),
    tau1=st.floats(1e-5, 0.01),
)
def test_routed_simulator_equals_a_step_by_step_reference(
    seed, limit, replicas, routing, rate, tau0, tau1
):
    rng = np.random.default_rng(seed)
    q = 150
    arrivals = np.cumsum(rng.exponential(1 / rate, q))
    work = rng.integers(1, 40, q)
    first = np.minimum(rng.integers(1, 6, q), work)
    window = (float(arrivals[10]), float(arrivals[-1]))
    ref = reference_trajectory(
        list(arrivals), list(work), list(first), tau0, tau1, limit, replicas, routing, window
    )
    args = (jnp.asarray(arrivals), jnp.asarray(work, jnp.int64), jnp.asarray(first, jnp.int64))
    _assert_same_trajectory(ROUTED(*args, tau0, tau1, 160, limit, replicas, routing, window), ref)


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
        (dict(routing="round_robin"), "routing"),
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
    "max_batch,loads", [(None, (0.1, 0.5, 0.8)), (16, (0.3, 0.7, 0.9)), (4, (0.05, 0.5, 0.9))]
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
        # the time-average batch size, idle time included (a histogram that skipped idle
        # periods read 1.10 for the model's 0.19 at 5% load, B = 4)
        assert float(r.summary()["running"]["mean"][0]) == pytest.approx(
            float(r.predicted_running[0]), rel=0.1 if load >= 0.8 else 0.03
        )
        frac = np.asarray(r.batch_size)[0].mean(0)
        assert frac.sum() == pytest.approx(1.0) and (
            max_batch is None or frac.size == max_batch + 1
        )
        if max_batch is None:  # P(N = 0) of the negative binomial
            q = float(w.arrival_rate) * TAU[1] * float(jnp.sum(w.share * m.work(POLICY, w)))
            p0 = (1 - q) ** (TAU[0] / TAU[1] + 1)
            assert frac[0] == pytest.approx(p0, abs=0.02)
        assert float(r.summary()["ttft"]["mean"][0]) < mean


def _chain_mean(lam, m, c, B, rates=None, N=60_000):
    """E[N] of the pooled birth-death chain by brute force on a truncated state space."""
    n = np.arange(1, N + 1)
    k, s = n // c, n % c
    if B is None:
        phi = n / (TAU[0] + TAU[1] * np.maximum(1, n / c))
    else:
        g = lambda j: np.minimum(j, B) / (TAU[0] + TAU[1] * np.minimum(j, B))  # noqa: E731
        phi = s * g(k + 1) + (c - s) * g(k)
    log_u = np.concatenate([[0.0], np.cumsum(np.log(lam * m) - np.log(phi))])
    p = np.exp(log_u - log_u.max())
    p /= p.sum()
    assert p[-1] < 1e-12  # the truncation is harmless
    return float(np.arange(N + 1) @ p)


@pytest.mark.parametrize("max_batch", [None, 8])
def test_pooled_routing_model_is_its_birth_death_chain(table1, max_batch):
    """State-dependent routing is modelled as the pooled server: its closed forms equal the
    chain summed by brute force; one replica is the single-server model; routing by state
    never predicts more than random routing; gradients stay finite."""
    kw = dict(step_time=TAU, max_batch=max_batch, answer_tokens=50.0)
    m_work = float(jnp.sum(table1.share * (POLICY + 50.0)))
    for c in (2, 5):
        pooled = jt.ContinuousBatching(**kw, replicas=c, routing="shortest_queue")
        random_ = jt.ContinuousBatching(**kw, replicas=c)
        cap = float(pooled.capacity(POLICY, table1.replace(arrival_rate=1.0)))
        for load in (0.2, 0.7, 0.95):
            w = table1.replace(arrival_rate=load * cap)
            st = pooled.stats(POLICY, w)
            lam = float(w.arrival_rate)
            assert c * float(st["in_system"]) == pytest.approx(
                _chain_mean(lam, m_work, c, max_batch), rel=1e-9
            )
            assert float(st["system_time"]) <= float(random_.stats(POLICY, w)["system_time"])
            g = jax.grad(lambda l: pooled.mean_system_time(l, w))(POLICY)
            assert np.all(np.isfinite(np.asarray(g))) and np.all(np.asarray(g) > 0)
    one = jt.ContinuousBatching(**kw, replicas=1, routing="least_loaded")
    w = table1.replace(arrival_rate=1.0)
    assert float(one.mean_system_time(POLICY, w)) == float(
        jt.ContinuousBatching(**kw).mean_system_time(POLICY, w)
    )
    # unstable: +inf, never NaN
    w = table1.replace(arrival_rate=10 * cap)
    assert np.isinf(float(pooled.mean_system_time(POLICY, w)))
    g = jax.grad(lambda l: pooled.mean_system_time(l, w))(POLICY)
    assert not np.any(np.isnan(np.asarray(g)))


@pytest.mark.parametrize("routing", ["shortest_queue", "least_loaded"])
def test_routed_replicas_against_the_pooled_model_and_random_routing(table1, routing):
    """Three replicas with a binding max_batch at 90% of capacity: routing by state pools the
    waiting rooms (far below random routing, simulated on the same arrivals); the pooled
    model is within 6% of the simulated mean (see the docs page for the measured table)."""
    kw = dict(step_time=TAU, max_batch=8, answer_tokens=50.0, replicas=3)
    m = jt.ContinuousBatching(**kw, routing=routing)
    cap = float(m.capacity(POLICY, table1.replace(arrival_rate=1.0)))
    w = table1.replace(arrival_rate=0.9 * cap)
    r = jt.simulate_batching(w, POLICY[None], m, num_queries=6000, num_replications=4)
    base = jt.simulate_batching(w, POLICY[None], jt.ContinuousBatching(**kw), 6000, 4)
    mean, lo, hi = (float(x[0]) for x in r.interval("system_time", 0.99))
    pred = float(r.predicted_system_time[0])
    assert lo - 0.06 * pred <= pred <= hi + 0.06 * pred, (pred, mean, lo, hi)
    assert mean < 0.85 * float(base.interval("system_time")[0][0])
    # throughput is the whole system's under either routing
    for sim in (r, base):
        assert float(sim.summary()["throughput"]["mean"][0]) == pytest.approx(
            float(w.arrival_rate), rel=0.05
        )
    assert float(r.summary()["running"]["mean"][0]) == pytest.approx(
        float(r.predicted_running[0]), rel=0.03
    )


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


def test_plan_replicas_api_answers_the_fewest_and_refuses_bad_targets(table1):
    server = jt.ContinuousBatching(step_time=TAU)
    w = table1.replace(arrival_rate=15.0)
    plan = jt.plan_replicas(w, server, 20.0, max_replicas=6)
    assert plan.routing == "random" and len(plan.rows) == 6  # one batched solve: every count
    first = plan.replicas
    assert first is not None and plan.rows[first - 1].meets
    assert not any(r.meets for r in plan.rows[: first - 1])
    assert plan.budgets == plan.rows[first - 1].tokens
    # c random replicas are one replica at lambda / c
    alone = jt.solve_latency(w.replace(arrival_rate=15.0 / first), server)
    np.testing.assert_allclose(plan.budgets, np.asarray(alone.tokens), rtol=1e-9)
    with pytest.raises(jt.InputError, match="target_latency"):
        jt.plan_replicas(w, server, -1.0)
    with pytest.raises(jt.InputError, match="model"):
        jt.plan_replicas(w, jt.FIFO(), 1.0)
    with pytest.raises(jt.InputError, match="max_replicas"):
        jt.plan_replicas(w, server, 1.0, max_replicas=0)
    batch = jax.vmap(lambda r: table1.replace(arrival_rate=r))(jnp.asarray([1.0, 2.0]))
    with pytest.raises(jt.InputError, match="one workload"):
        jt.plan_replicas(batch, server, 1.0)


def test_limited_batch_solves_converge_at_every_replica_count():
    """Notebook 07's plan: 2-8 replicas of the shipped synthetic server, max_batch 64, at 8/s.
    Three replicas stalled at a residual of 1.7e-8 for 20000 steps: near the optimum J could not
    tell a Newton step from the spectral one (both below its rounding), so the quadratic step
    was refused; now the smaller residual decides there."""
    fit = jt.fit_step_time(jt.__path__[0] + "/data/synthetic_step_times.csv")
    server = jt.ContinuousBatching(step_time=(fit.tau0, fit.tau1), max_batch=64)
    w = jt.default_workload().astype(np.float64)
    rates = 8.0 / jnp.arange(2, 9, dtype=jnp.float64)
    batch = jax.vmap(lambda r: w.replace(arrival_rate=r))(rates)
    sols = jt.solve_latency(batch, server)
    assert [jt.Status(int(s)) for s in sols.status] == [jt.Status.CONVERGED] * 7
    assert int(jnp.max(sols.iterations)) <= 50
    assert float(jnp.max(sols.residual)) <= 1e-9


def test_cli_routing_by_state_plans_solves_and_simulates(capsys):
    """`plan --routing shortest-queue` at an arrival rate the paper's M/G/1 server could not
    take (the batching server judges its own stability), and `simulate --replicas`."""
    from jaxopt_tokens.cli.main import main

    server = ["--step-time", "0.02,0.0005", "--routing", "shortest-queue"]
    plan = ["plan", *server, "--arrival-rate", "15", "--target-latency", "200"]
    assert main([*plan, "--max-replicas", "8", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["routing"] == "shortest_queue" and out["replicas"] == 2
    rows = out["rows"]
    assert rows[0]["status"] == "unstable_input" and rows[1]["mean_system_time"] <= 200
    # the scan stops two counts past the answer (each count is a new solve)
    assert len(rows) == 4 and all(r["status"] == "converged" for r in rows[1:])
    sim = ["simulate", "--server", "batching", *server, "--max-batch", "8", "--replicas", "3"]
    sim += ["--arrival-rate", "3", "--num-queries", "1500", "--num-replications", "2"]
    assert main([*sim, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "shortest_queue routing" in report["discipline"]
    assert main(["solve", "--routing", "least-loaded"]) == 2
    assert "--server batching" in capsys.readouterr().err
    # the M/G/1 server still refuses the arrival rate it cannot take
    assert main(["solve", "--arrival-rate", "15"]) == 2
    assert "unstable" in capsys.readouterr().err


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
