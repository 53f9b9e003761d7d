"""Latency models beyond FIFO: formulas against the JAX simulator, simulators against naive ones."""

import heapq

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxopt_tokens as jt
from jaxopt_tokens._queue.disciplines import priority_waits, ps_sojourns

TOKENS = np.array([200.0, 300.0, 0.0, 50.0, 400.0, 30.0])
ORDER = (5, 1, 4, 0, 2, 3)


def _at_load(w, rho, tokens=TOKENS):
    m1 = float(jnp.sum(w.share * (w.t0 + w.c * tokens)))
    return w.replace(arrival_rate=rho / m1)


def naive_priority(arrivals, task, service, rank):
    """Event loop with a heap keyed by (class rank, arrival index)."""
    n = len(arrivals)
    waits = np.zeros(n)
    heap, i, free_at = [], 0, -np.inf
    for _ in range(n):
        while i < n and arrivals[i] <= free_at:
            heapq.heappush(heap, (rank[task[i]], i))
            i += 1
        if not heap:  # idle: the next arrival starts on arrival
            heapq.heappush(heap, (rank[task[i]], i))
            i += 1
        _, c = heapq.heappop(heap)
        start = max(free_at, arrivals[c])
        waits[c] = start - arrivals[c]
        free_at = start + service[c]
    return waits


def naive_ps(arrivals, service):
    """Processor sharing by time stepping between events, with a plain dict of remaining work."""
    n = len(arrivals)
    remaining, done = {}, np.zeros(n)
    now, i = 0.0, 0
    while i < n or remaining:
        k = len(remaining)
        dep = min(remaining.values()) * k if k else np.inf
        arr = arrivals[i] - now if i < n else np.inf
        dt = min(dep, arr)
        for c in remaining:
            remaining[c] -= dt / k
        now += dt
        if arr <= dep:
            remaining[i] = service[i]
            i += 1
        else:
            c = min(remaining, key=remaining.get)
            del remaining[c]
            done[c] = now
    return done - arrivals


def _random_stream(seed, n=400, classes=3, load=0.8):
    rng = np.random.default_rng(seed)
    task = rng.integers(0, classes, n)
    means = rng.uniform(0.5, 2.0, classes)
    service = rng.gamma(2.0, means[task] / 2)
    arrivals = np.cumsum(rng.exponential(np.mean(means) / load, n))
    return arrivals, task, service


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1), st.permutations([0, 1, 2]))
def test_priority_scan_equals_heap_simulation(seed, order):
    arrivals, task, service = _random_stream(seed)
    rank = np.empty(3, int)
    rank[list(order)] = np.arange(3)
    got = priority_waits(
        jnp.asarray(arrivals), jnp.asarray(task), jnp.asarray(service), jnp.asarray(rank)
    )
    np.testing.assert_allclose(
        got, naive_priority(arrivals, task, service, rank), atol=1e-9, rtol=0
    )


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_ps_scan_equals_naive_simulation(seed):
    arrivals, _, service = _random_stream(seed, n=300)
    got, overflow = ps_sojourns(jnp.asarray(arrivals), jnp.asarray(service), capacity=128)
    assert not bool(overflow)
    np.testing.assert_allclose(got, naive_ps(arrivals, service), atol=1e-8, rtol=0)


def test_ps_overflow_is_flagged_not_silent():
    arrivals = jnp.arange(50.0) * 1e-3
    service = jnp.full(50, 10.0)
    _, overflow = ps_sojourns(arrivals, service, capacity=8)
    assert bool(overflow)


@pytest.mark.parametrize(
    "model",
    [
        jt.FIFO(service_cv=0.5),
        jt.Priority(order=ORDER, service_cv=0.5),
        jt.ProcessorSharing(service_cv=1.0),
    ],
    ids=lambda m: m.discipline,
)
@pytest.mark.parametrize("rho", [0.3, 0.7])
def test_per_type_system_times_match_the_simulator(table1, model, rho):
    w = _at_load(table1, rho)
    r = jt.simulate(
        w,
        TOKENS,
        num_queries=20_000,
        num_replications=20,
        key=jax.random.PRNGKey(3),
        model=model,
        capacity=256,
    )
    predicted = np.asarray(model.system_times(jnp.asarray(TOKENS), w))
    np.testing.assert_allclose(r.predicted_system_time_by_task, predicted, rtol=1e-12)
    _, lo, hi = r.interval("system_time_by_task", level=0.99)
    assert np.all((lo <= predicted) & (predicted <= hi)), (lo, predicted, hi)
    _, lo, hi = r.interval("system_time", level=0.99)
    assert lo <= float(model.mean_system_time(jnp.asarray(TOKENS), w)) <= hi


def test_fifo_model_without_variance_is_the_paper_objective(table1):
    l = jnp.asarray(TOKENS)
    assert float(jt.FIFO().mean_system_time(l, table1)) == pytest.approx(
        float(jt.mean_system_time(l, table1)), rel=1e-14
    )
    assert float(jt.latency_objective(l, table1, jt.FIFO())) == pytest.approx(
        float(jt.objective(l, table1)), rel=1e-14
    )
    # variance adds lambda * sum_k pi_k var_k / (2 (1 - rho)) to every type's wait
    t = table1.t0 + table1.c * l
    extra = (
        table1.arrival_rate
        * jnp.sum(table1.share * (0.3 * t) ** 2)
        / (2 * (1 - jt.utilization(l, table1)))
    )
    np.testing.assert_allclose(
        jt.FIFO(0.3).system_times(l, table1) - jt.FIFO().system_times(l, table1), extra, rtol=1e-12
    )


@settings(max_examples=25, deadline=None)
@given(st.permutations(list(range(6))), st.floats(0.1, 0.9))
def test_priority_obeys_kleinrock_conservation_law(order, rho):
    """Work-conserving non-preemptive disciplines share sum_k rho_k E[W_k] (= rho E[W_FIFO])."""
    w = _at_load(jt.default_workload().astype(np.float64), rho)
    l = jnp.asarray(TOKENS)
    t = w.t0 + w.c * l
    rho_k = w.arrival_rate * w.share * t
    wait_prio = jt.Priority(order=tuple(order)).system_times(l, w) - t
    wait_fifo = jt.FIFO().system_times(l, w) - t
    assert float(jnp.sum(rho_k * wait_prio)) == pytest.approx(
        float(jnp.sum(rho_k * wait_fifo)), rel=1e-10
    )


def test_unstable_queue_gives_infinite_latency(table1):
    w = _at_load(table1, 1.2)
    for model in (jt.FIFO(), jt.Priority(order=ORDER), jt.ProcessorSharing()):
        assert np.isinf(float(model.mean_system_time(jnp.asarray(TOKENS), w)))


def test_solve_latency_fifo_matches_the_default_solver(table1):
    sol = jt.solve_latency(table1, jt.FIFO())
    assert int(sol.status) == 0
    np.testing.assert_allclose(sol.tokens, jt.solve(table1).tokens, atol=1e-5)


@pytest.mark.parametrize(
    "model", [jt.FIFO(service_cv=1.0), jt.Priority(order=ORDER), jt.ProcessorSharing()]
)
def test_solve_latency_beats_scipy_on_the_same_objective(table1, model):
    optimize = pytest.importorskip("scipy.optimize")
    w = table1.replace(arrival_rate=0.15)
    sol = jt.solve_latency(w, model)
    assert int(sol.status) == 0 and float(sol.residual) < 1e-8
    f = jax.jit(lambda l: -jt.latency_objective(l, w, model))
    g = jax.jit(jax.grad(lambda l: -jt.latency_objective(l, w, model)))
    best = min(
        (
            optimize.minimize(
                lambda x: float(f(jnp.asarray(x))),
                x0,
                jac=lambda x: np.asarray(g(jnp.asarray(x))),
                method="L-BFGS-B",
                bounds=[(0, 32768)] * 6,
                options={"ftol": 1e-15, "gtol": 1e-12},
            )
            for x0 in (np.zeros(6), np.full(6, 300.0), np.asarray(jt.solve(w).tokens))
        ),
        key=lambda r: r.fun,
    )
    assert float(sol.objective) >= -best.fun - 1e-9


def test_solve_latency_vmaps_with_a_status_per_member(table1):
    batch = jax.tree_util.tree_map(lambda x: jnp.stack([x, x, x]), table1)
    batch = batch.replace(arrival_rate=jnp.asarray([0.05, 0.2, jnp.nan]))
    sol = jt.solve_latency(batch, jt.ProcessorSharing())
    assert sol.status.shape == (3,)
    assert list(np.asarray(sol.status)) == [0, 0, int(jt.Status.NONFINITE_INPUT)]
    assert np.all(np.isnan(np.asarray(sol.tokens[2])))
    # more load, fewer tokens
    assert np.sum(np.asarray(sol.tokens[1])) < np.sum(np.asarray(sol.tokens[0]))


def test_bad_priority_order_names_the_field(table1):
    with pytest.raises(jt.InputError, match="order"):
        jt.simulate(table1, TOKENS, model=jt.Priority(order=(0, 1, 2)))
    with pytest.raises(jt.InputError, match="order"):
        jt.solve_latency(table1, jt.Priority(order=(0, 0, 1, 2, 3, 4)))
    with pytest.raises(jt.InputError, match="model"):
        jt.simulate(table1, TOKENS, model="lifo")


# ------------------------------------------------------------ the third trial (M1-M3)


@pytest.mark.parametrize(
    "model",
    [
        jt.FIFO(),
        jt.FIFO(service_cv=0.5),
        jt.Priority(order=(0, 1, 2, 3, 4, 5)),
        jt.ProcessorSharing(),
        jt.Kingman(arrival_scv=2.0),
        jt.TimeVarying(rate_factors=[0.5, 1.5], weights=[1.0, 1.0]),
    ],
    ids=lambda m: type(m).__name__,
)
def test_budgets_outside_the_model_have_infinite_latency_never_negative(table1, model):
    """M2: a negative or NaN budget is outside the model: +inf, as for ContinuousBatching."""
    for bad in (jnp.full(6, -300.0), jnp.array([0.0, 340.0, jnp.nan, 0.0, 0.0, 0.0])):
        assert float(model.mean_system_time(bad, table1)) == np.inf
        assert np.all(np.asarray(model.system_times(bad, table1)) == np.inf)
    ok = jnp.array([0.0, 340.0, 0.0, 0.0, 346.0, 30.0])
    assert 0 < float(model.mean_system_time(ok, table1)) < np.inf
    batch = jnp.stack([ok, jnp.full(6, -1.0)])  # per member, not for the batch
    T = np.asarray(model.mean_system_time(batch, table1))
    assert np.isfinite(T[0]) and T[1] == np.inf


def test_the_papers_pure_functions_follow_the_same_rule(table1):
    neg = jnp.full(6, -300.0)
    assert float(jt.mean_system_time(neg, table1)) == np.inf
    assert float(jt.mean_wait(neg, table1)) == np.inf
    assert float(jt.objective(neg, table1)) == -np.inf
    g = jax.grad(jt.objective)(jnp.array([0.0, 340.0, 0.0, 0.0, 346.0, 30.0]), table1)
    assert np.all(np.isfinite(np.asarray(g)))  # the rule costs valid budgets nothing


def test_huge_weights_are_normalised_without_overflow(table1):
    """M3: weights of 1e308 summed to inf, every normalised weight became 0 and J was 0."""
    tv = jt.TimeVarying(rate_factors=[1.0, 1.0], weights=[1e308, 1e308])
    assert np.asarray(tv.weights).tolist() == [0.5, 0.5]
    ok = jnp.array([0.0, 340.0, 0.0, 0.0, 346.0, 30.0])
    assert float(tv.mean_system_time(ok, table1)) == pytest.approx(
        float(jt.FIFO().mean_system_time(ok, table1))
    )


@pytest.mark.parametrize(
    "model",
    [jt.Kingman(arrival_scv=4.0), jt.TimeVarying(rate_factors=[0.1, 100.0], weights=[0.99, 0.01])],
    ids=lambda m: type(m).__name__,
)
def test_a_model_of_recorded_arrivals_is_not_simulated_with_poisson_ones(table1, model):
    """M1: the simulator drew Poisson arrivals beside the model's prediction for others."""
    with pytest.raises(jt.InputError, match="give arrivals="):
        jt.simulate(table1, jnp.array([0.0, 340.0, 0.0, 0.0, 346.0, 30.0]), 400, 2, model=model)
