"""Latency- and token-aware strategy selection (MATH.md section 3).

Selection, probe, benchmark, queue.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_tokens as jt
from jaxopt_tokens import InputError, strategy
from jaxopt_tokens.strategy._probe import _fit_platt


def random_selection_problem(seed, batch=(7, 3), S=5):
    rng = np.random.default_rng(seed)
    return (
        rng.uniform(0, 1, batch + (S,)),
        rng.uniform(0, 2000, S),
        rng.uniform(0, 20, S),
        rng.uniform(0, 1e-4),
        rng.uniform(0, 0.02),
    )


# --------------------------------------------------------------------------- per-query selection


def test_select_strategy_is_argmax_of_utility():
    a, T, L, lt, ll = random_selection_problem(0)
    got = np.asarray(strategy.select(a, T, L, lt, ll))
    want = np.argmax(a - lt * T - ll * L, axis=-1)
    np.testing.assert_array_equal(got, want)
    assert got.shape == a.shape[:-1]
    # per-query costs and per-query prices broadcast; jit and vmap agree with the eager call
    T_q = np.broadcast_to(T, a.shape) * np.random.default_rng(1).uniform(0.5, 1.5, a.shape)
    prices = np.random.default_rng(2).uniform(0, 2e-4, a.shape[:-1])
    want_q = np.argmax(a - prices[..., None] * T_q - ll * L, axis=-1)
    np.testing.assert_array_equal(strategy.select(a, T_q, L, prices, ll), want_q)
    np.testing.assert_array_equal(jax.jit(strategy.select)(a, T_q, L, prices, ll), want_q)
    vm = jax.vmap(lambda ai, ti, pi: strategy.select(ai, ti, L, pi, ll))(a, T_q, prices)
    np.testing.assert_array_equal(vm, want_q)


def test_zero_prices_pick_most_accurate_and_high_prices_pick_cheapest():
    a, T, L, _, _ = random_selection_problem(3)
    np.testing.assert_array_equal(strategy.select(a, T, L, 0.0, 0.0), np.argmax(a, -1))
    cheapest = np.argmin(T)
    np.testing.assert_array_equal(
        strategy.select(a, T, L, 10.0, 0.0), np.full(a.shape[:-1], cheapest)
    )


def test_soft_select_gradients_match_finite_differences():
    a, T, L, lt, ll = random_selection_problem(4, batch=(3,), S=4)
    tau = 0.05

    def f(a, T, L, lt, ll):
        q, u = strategy.soft_select(a, T, L, lt, ll, tau)
        return jnp.sum(u) + jnp.sum(q[:, 0] ** 2)

    args = [jnp.asarray(x, jnp.float64) for x in (a * 0.8 + 0.1, T, L, lt, ll)]
    grads = jax.grad(f, argnums=(0, 1, 2, 3, 4))(*args)
    rng = np.random.default_rng(5)
    for i, (x, g) in enumerate(zip(args, grads)):
        direction = rng.normal(size=x.shape)
        h = 1e-6 * max(1.0, float(jnp.max(jnp.abs(x))))
        plus = [y if j != i else y + h * direction for j, y in enumerate(args)]
        minus = [y if j != i else y - h * direction for j, y in enumerate(args)]
        fd = (f(*plus) - f(*minus)) / (2 * h)
        np.testing.assert_allclose(float(jnp.sum(g * direction)), float(fd), rtol=1e-5, atol=1e-8)
    assert all(bool(jnp.any(g != 0)) for g in grads)


def test_soft_select_tends_to_argmax_as_temperature_vanishes():
    a, T, L, lt, ll = random_selection_problem(6)
    u = np.asarray(strategy.utility(a, T, L, lt, ll))
    hard = np.asarray(strategy.select(a, T, L, lt, ll))
    q_warm, _ = strategy.soft_select(a, T, L, lt, ll, 1.0)
    assert float(jnp.max(q_warm)) < 0.9  # warm: genuinely soft
    errors = []
    for tau in (1e-1, 1e-2, 1e-3, 1e-5):
        q, eu = strategy.soft_select(a, T, L, lt, ll, tau)
        np.testing.assert_allclose(np.sum(q, -1), 1.0, atol=1e-12)
        errors.append(float(np.max(np.abs(u.max(-1) - eu))))
        assert np.all(u.max(-1) - np.asarray(eu) <= tau * np.log(u.shape[-1]) + 1e-12)
    assert errors == sorted(errors, reverse=True)
    q, eu = strategy.soft_select(a, T, L, lt, ll, 1e-6)
    np.testing.assert_allclose(q, jax.nn.one_hot(hard, a.shape[-1]), atol=1e-6)
    np.testing.assert_allclose(eu, u.max(-1), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(pred_accuracy=np.full((2, 3), 1.5)), "pred_accuracy"),
        (dict(pred_accuracy=np.full((2, 3), -0.1)), "pred_accuracy"),
        (dict(pred_accuracy=0.5), "pred_accuracy"),
        (dict(token_cost=np.ones(4)), "token_cost"),
        (dict(token_cost=-np.ones(3)), "token_cost"),
        (dict(latency_cost=np.ones((5, 3))), "latency_cost"),
        (dict(latency_cost=np.array([1.0, np.nan, 1.0])), "latency_cost"),
        (dict(price_tokens=-1.0), "price_tokens"),
        (dict(price_latency=np.ones(3)), "price_latency"),
        (dict(temperature=0.0), "temperature"),
    ],
)
def test_selection_rejects_bad_input_naming_the_field(kwargs, field):
    args = dict(
        pred_accuracy=np.full((2, 3), 0.5),
        token_cost=np.ones(3),
        latency_cost=np.ones(3),
        price_tokens=0.1,
        price_latency=0.1,
        temperature=0.1,
    )
    args.update(kwargs)
    with pytest.raises(InputError, match=field):
        strategy.soft_select(**args)


def test_strategy_table_defaults_and_validation():
    table = strategy.default_table()
    assert table.num_strategies == 10 and table.names[0] == "greedy"
    assert table.params.shape == (10, 5)
    np.testing.assert_allclose(table.params[table.index("best_of_n[8]")], [3.0, 0, 1, 0, 0])
    assert bool(jnp.all(table.token_cost > 0)) and bool(jnp.all(table.latency_cost > 0))
    with pytest.raises(InputError, match="token_cost"):
        strategy.Table(["a", "b"], ["greedy", "best_of_n"], [1, 2], [1.0], [1.0, 2.0])
    with pytest.raises(InputError, match="latency_cost"):
        strategy.Table(["a", "b"], ["greedy", "best_of_n"], [1, 2], [1.0, 2.0], [1.0, -2.0])
    with pytest.raises(InputError, match="method"):
        strategy.Table(["a"], ["sampling"], [1], [1.0], [1.0])
    with pytest.raises(InputError, match="names"):
        table.index("nope")


# --------------------------------------------------------------------------- probe


def test_platt_scaling_recovers_known_calibration():
    z = jax.random.normal(jax.random.key(0), (4000,), jnp.float64)
    y = jax.nn.sigmoid(2.0 * z - 1.0)
    a, b = _fit_platt(z, y)
    np.testing.assert_allclose([float(a), float(b)], [2.0, -1.0], atol=1e-6)


@pytest.fixture(scope="module")
def strategy_benchmark():
    """Probe trained on 1500 synthetic queries, frontier evaluated on 2000 fresh ones."""
    return strategy.run_benchmark(
        jax.random.key(0), num_train=1500, num_test=2000, probe_steps=600, batch_size=256
    )


@pytest.mark.slow  # shares a probe trained on the synthetic benchmark
@pytest.mark.xdist_group("strategy_benchmark")  # one worker trains the shared probe
def test_probe_learns_strategy_accuracy_and_beats_constant_baseline(strategy_benchmark):
    _, probe, test = strategy_benchmark
    table = strategy.default_table()
    pred = probe(test.features)
    assert pred.shape == (2000, table.num_strategies)
    assert bool(jnp.all((pred >= 0) & (pred <= 1)))
    assert probe(test.features[0]).shape == (table.num_strategies,)
    assert probe(test.features[:6].reshape(2, 3, -1)).shape == (2, 3, table.num_strategies)
    base = jnp.mean(test.soft_labels, axis=0)
    baseline = strategy.soft_log_loss(
        jnp.broadcast_to(jax.scipy.special.logit(base), test.soft_labels.shape), test.soft_labels
    )
    ideal = strategy.soft_log_loss(
        jax.scipy.special.logit(jnp.clip(test.true_accuracy, 1e-12, 1 - 1e-12)), test.soft_labels
    )
    loss = strategy.probe_log_loss(probe, test.features, test.soft_labels)
    # most of the way from the best per-strategy constant to the ground truth
    assert float(loss) < float(ideal) + 0.25 * float(baseline - ideal)
    assert float(jnp.mean(jnp.abs(pred - test.true_accuracy))) < 0.08


def test_train_probe_rejects_bad_labels():
    table = strategy.default_table()
    x = np.zeros((10, 3))
    with pytest.raises(InputError, match="soft_labels"):
        strategy.train_probe(jax.random.key(0), x, table.params, np.full((10, 10), 1.2))
    with pytest.raises(InputError, match="soft_labels"):
        strategy.train_probe(jax.random.key(0), x, table.params, np.full((10, 4), 0.5))
    with pytest.raises(InputError, match="features"):
        strategy.train_probe(
            jax.random.key(0), np.full((10, 3), np.inf), table.params, np.full((10, 10), 0.5)
        )


# --------------------------------------------------------------------------- benchmark


def test_true_accuracy_closed_forms():
    table = strategy.default_table()
    p = jnp.array([0.0, 0.3, 0.5, 0.9, 1.0])
    acc = np.asarray(strategy.true_accuracy(p, table))
    np.testing.assert_allclose(acc[:, 0], p)
    np.testing.assert_allclose(acc[0], 0.0, atol=1e-15)
    np.testing.assert_allclose(acc[-1], 1.0)
    # best-of-N improves with N; majority vote helps easy queries and hurts hard ones
    bon = [table.index(f"best_of_n[{n}]") for n in (2, 4, 8, 16)]
    assert np.all(np.diff(acc[1:4, bon], axis=1) > 0)
    mv4 = table.index("majority_vote[4]")
    assert acc[1, mv4] < 0.3 < 0.9 < acc[3, mv4]
    np.testing.assert_allclose(acc[2, mv4], 0.5)  # symmetric at p = 1/2


@pytest.mark.slow  # shares a probe trained on the synthetic benchmark
@pytest.mark.xdist_group("strategy_benchmark")  # one worker trains the shared probe
def test_adaptive_frontier_dominates_every_static_strategy(strategy_benchmark):
    frontier, _, _ = strategy_benchmark
    gaps = strategy.frontier_dominance_gaps(frontier)
    assert np.all(gaps["at_one_price"] >= -0.005), gaps
    assert np.all(gaps["interpolated"] >= -0.005), gaps
    # and strictly above the strategies that are neither cheapest nor most accurate
    assert np.sum(gaps["interpolated"] > 0.01) >= 5


@pytest.mark.slow  # shares a probe trained on the synthetic benchmark
@pytest.mark.xdist_group("strategy_benchmark")  # one worker trains the shared probe
def test_oracle_is_at_least_as_good_as_adaptive(strategy_benchmark):
    frontier, probe, test = strategy_benchmark
    mu = frontier.mu
    util_adaptive = frontier.adaptive_accuracy - mu * frontier.adaptive_cost
    util_oracle = frontier.oracle_accuracy - mu * frontier.oracle_cost
    assert bool(jnp.all(util_oracle >= util_adaptive - 1e-12))
    assert float(jnp.max(util_oracle - util_adaptive)) > 1e-3  # the probe is not perfect
    gaps = strategy.frontier_dominance_gaps(frontier, "oracle")
    assert np.all(gaps["interpolated"] >= -1e-3)
    # at zero prices both maximise accuracy; the oracle's is the best achievable
    assert float(frontier.oracle_accuracy[0]) >= float(frontier.adaptive_accuracy[0])
    assert float(frontier.oracle_accuracy[0]) >= float(jnp.max(frontier.static_accuracy))


@pytest.mark.slow  # shares the trained probe
@pytest.mark.xdist_group("strategy_benchmark")  # one worker trains the shared probe
def test_frontier_moves_to_cheaper_strategies_as_prices_rise(strategy_benchmark):
    frontier, _, _ = strategy_benchmark
    cost = np.asarray(frontier.oracle_cost)
    assert np.all(np.diff(cost) <= 1e-12)  # Lagrangian: optimal cost is non-increasing in price
    assert cost[-1] == pytest.approx(
        float(frontier.static_cost[0])
    )  # everything greedy at high price


# ---------------------------------------------------------------------- queue-aware joint choice


def random_queue_instance(rng, K, S):
    t = np.sort(rng.uniform(0.1, 5, (K, S)), axis=1) * rng.uniform(0.5, 2, (K, 1))
    acc = np.sort(rng.uniform(0, 1, (K, S)), axis=1)
    share = rng.dirichlet(np.ones(K))
    lam = rng.uniform(0.01, 0.9) / (share @ t[:, 0])
    return acc, t, share, lam, rng.uniform(1, 30)


def test_enumeration_matches_brute_force():
    rng = np.random.default_rng(0)
    acc, t, share, lam, alpha = random_queue_instance(rng, 3, 4)

    def J(choice):
        tt = t[np.arange(3), choice]
        m1, m2 = share @ tt, share @ tt**2
        if lam * m1 >= 1:
            return -np.inf
        return alpha * share @ acc[np.arange(3), choice] - (lam * m2 / (2 * (1 - lam * m1)) + m1)

    best = max(itertools.product(range(4), repeat=3), key=lambda c: J(np.array(c)))
    res = strategy.select_queueing(acc, t, share, lam, alpha, "enumerate")
    np.testing.assert_array_equal(res.choice, best)
    assert float(res.objective) == pytest.approx(J(np.array(best)), rel=1e-12)
    assert float(res.objective) == pytest.approx(
        float(res.mean_accuracy * alpha - res.mean_system_time)
    )


def test_coordinate_ascent_agrees_with_enumeration_on_random_instances():
    rng = np.random.default_rng(1)
    exact, gaps = 0, []
    n = 60
    for _ in range(n):
        inst = random_queue_instance(rng, 4, 6)
        e = strategy.select_queueing(*inst, method="enumerate")
        c = strategy.select_queueing(*inst, method="coordinate")
        assert float(c.objective) <= float(e.objective) + 1e-9  # enumeration is exact
        gap = float(e.objective - c.objective) / abs(float(e.objective))
        exact += gap <= 1e-9
        gaps.append(gap)
    assert exact >= 0.95 * n, sorted(gaps)[-5:]
    assert max(gaps) < 0.1


def test_queueing_objective_matches_token_objective(table1):
    # strategies = token levels: service time eq. (1), accuracy eq. (2); J must equal eq. (7)
    levels = np.array([0.0, 100.0, 300.0, 1000.0])
    acc = np.asarray(jt.task_accuracy(levels[:, None] * np.ones(6), table1)).T
    t = np.asarray(jt.service_times(levels[:, None] * np.ones(6), table1)).T
    choice = np.array([1, 3, 0, 2, 3, 0])
    J = strategy.queueing_objective(choice, acc, t, table1.share, table1.arrival_rate, table1.alpha)
    np.testing.assert_allclose(J, jt.objective(jnp.asarray(levels[choice]), table1), rtol=1e-12)
    res = strategy.select_queueing(acc, t, table1.share, table1.arrival_rate, table1.alpha)
    assert res.method == "enumerate"  # 4**6 = 4096 combinations
    # the discrete optimum can't beat the continuous one (the paper's Table I optimum)
    assert float(res.objective) <= 9.754203 + 1e-6
    assert float(res.objective) >= float(J)


def test_unstable_instances_give_minus_infinity():
    acc = np.array([[0.5, 0.9], [0.4, 0.8]])
    t = np.array([[2.0, 4.0], [2.0, 8.0]])
    res = strategy.select_queueing(acc, t, np.array([0.5, 0.5]), 0.6, 10.0)
    assert float(res.objective) == -np.inf and float(res.utilization) >= 1
    ok = strategy.select_queueing(acc, t, np.array([0.5, 0.5]), 0.2, 10.0)
    assert np.isfinite(float(ok.objective)) and float(ok.utilization) < 1


def test_queue_aware_choice_gets_cheaper_as_arrival_rate_grows():
    rates = [0.0, 0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.15]
    choices, mean_service, J = strategy.queueing_arrival_sweep(rates, alpha=300.0)
    assert np.all(np.diff(mean_service) <= 1e-12)
    assert mean_service[0] > 3 * mean_service[-1]
    assert np.all(np.diff(J) < 0)
    np.testing.assert_array_equal(choices[-1], 0)  # greedy everywhere under heavy load
    # coordinate ascent is what "auto" used here (10**6 combinations);
    # check one rate exactly on a sub-table
    table = strategy.default_table()
    sub = strategy.Table(
        table.names[:5], table.method[:5], table.n[:5], table.token_cost[:5], table.latency_cost[:5]
    )
    for rate in (0.01, 0.04):
        c_enum, _, J_enum = strategy.queueing_arrival_sweep(
            [rate], table=sub, alpha=300.0, method="enumerate"
        )
        c_coord, _, J_coord = strategy.queueing_arrival_sweep(
            [rate], table=sub, alpha=300.0, method="coordinate"
        )
        np.testing.assert_allclose(J_coord, J_enum, rtol=1e-12)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(task_accuracy=np.full((2, 3), 1.1)), "task_accuracy"),
        (dict(service_time=np.ones((3, 2))), "service_time"),
        (dict(service_time=-np.ones((2, 3))), "service_time"),
        (dict(share=np.array([0.3, 0.3])), "share"),
        (dict(share=np.array([1.0])), "share"),
        (dict(arrival_rate=-0.1), "arrival_rate"),
        (dict(alpha=np.ones(2)), "alpha"),
        (dict(method="magic"), "method"),
    ],
)
def test_queueing_rejects_bad_input_naming_the_field(kwargs, field):
    args = dict(
        task_accuracy=np.full((2, 3), 0.5),
        service_time=np.ones((2, 3)),
        share=np.array([0.5, 0.5]),
        arrival_rate=0.1,
        alpha=10.0,
    )
    args.update(kwargs)
    with pytest.raises(InputError, match=field):
        strategy.select_queueing(**args)


def test_enumeration_refuses_too_many_combinations():
    acc, t = np.full((6, 10), 0.5), np.ones((6, 10))
    with pytest.raises(InputError, match="method"):
        strategy.select_queueing(acc, t, np.full(6, 1 / 6), 0.1, 10.0, "enumerate")
    assert strategy.select_queueing(acc, t, np.full(6, 1 / 6), 0.1, 10.0).method == "coordinate"
