"""CLEAR global token budgets (MATH.md section 2): clearing invariants, implicit gradients,
baselines, exact DP optimum, evaluation harness and the `budget` / `evaluate-budget` CLI."""

from __future__ import annotations

import argparse
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    assert_refused,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxopt_tokens as jt
from jaxopt_tokens import InputError, clear
from jaxopt_tokens.cli import budget as cli_budget
from jaxopt_tokens.theory import lambertw

E = np.e


def _instances(count=12, n=40, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        tau = rng.lognormal(6.5, 0.8, n)
        budget = n * rng.choice([64.0, 256.0, 700.0, 1500.0, 4000.0])
        yield tau, budget


clear_jit = jax.jit(clear.allocate, static_argnames=("decay", "iterations", "min_scale"))


# --- clearing invariants -----------------------------------------------------------------------


def test_total_within_budget_and_binding_when_cleared():
    statuses = set()
    for tau, budget in _instances():
        a = clear_jit(tau, budget)
        total = float(a.tokens.sum())
        statuses.add(int(a.status))
        assert total <= budget * (1 + 1e-12)
        assert float(a.unused) == pytest.approx(budget - total, abs=1e-6)
        if a.status == clear.AllocationStatus.CLEARED:
            assert abs(total - budget) <= 1.0
        if a.status == clear.AllocationStatus.INDIVISIBLE:
            # remainder below the threshold of every abandoned query: nobody could use it
            assert float(a.unused) <= np.min(tau[~np.asarray(a.admitted)]) + 1e-9
        assert np.all(np.asarray(a.tokens)[~np.asarray(a.admitted)] == 0)
        assert np.all(np.asarray(a.tokens)[np.asarray(a.admitted)] > tau[np.asarray(a.admitted)])
    assert clear.AllocationStatus.CLEARED in statuses


def test_admitted_tokens_follow_lambert_policy_and_abandon_hardest():
    tau, budget = np.linspace(50, 1000, 30), 30 * 300.0
    a = clear.allocate(tau, budget)
    assert a.status == clear.AllocationStatus.CLEARED and 0 < float(a.price) < 1
    adm = np.asarray(a.admitted)
    assert 0 < adm.sum() < tau.size
    # rational abandonment keeps the easiest queries
    assert adm.max() and np.all(adm[: adm.sum()]) and not np.any(adm[adm.sum() :])
    expected = tau + (1 - float(lambertw(E * a.price))) / float(a.beta)
    np.testing.assert_allclose(np.asarray(a.tokens)[adm], expected[adm], rtol=1e-12)
    # marginal utility equals the price for every admitted query
    z = np.asarray(a.tokens)[adm] - tau[adm]
    b = float(a.beta)
    np.testing.assert_allclose((1 - b * z) * np.exp(-b * z), float(a.price), rtol=1e-8)
    # and their net surplus at that price is positive
    assert np.all(
        np.asarray(clear.surge_utility(a.tokens, tau, b))[adm]
        - float(a.price) * np.asarray(a.tokens)[adm]
        > 0
    )


def test_total_tokens_nondecreasing_in_budget():
    rng = np.random.default_rng(1)
    tau = rng.lognormal(6.0, 1.0, 25)
    budgets = np.linspace(0, 25 * 2500, 301)
    totals = np.asarray(jax.vmap(lambda b: clear.allocate(tau, b).tokens.sum())(budgets))
    assert np.all(np.diff(totals) >= -1e-6)
    capped = np.asarray(
        jax.vmap(lambda b: clear.allocate(tau, b, query_cap=900.0).tokens.sum())(budgets)
    )
    assert np.all(np.diff(capped) >= -1e-6)


def test_permutation_equivariance():
    for tau, budget in itertools.islice(_instances(seed=2), 5):
        perm = np.random.default_rng(3).permutation(tau.size)
        a, p = clear.allocate(tau, budget), clear.allocate(tau[perm], budget)
        np.testing.assert_allclose(
            np.asarray(p.tokens), np.asarray(a.tokens)[perm], rtol=1e-9, atol=1e-9
        )
        assert float(p.price) == pytest.approx(float(a.price), rel=1e-9, abs=1e-15)


def test_scale_invariance_and_velocity_only_rescales_price():
    tau, budget = np.linspace(100, 2000, 12), 12 * 400.0
    a = clear.allocate(tau, budget)
    s = clear.allocate(3 * tau, 3 * budget)
    np.testing.assert_allclose(np.asarray(s.tokens), 3 * np.asarray(a.tokens), rtol=1e-9)
    v = clear.allocate(tau, budget, velocity=7.0)
    np.testing.assert_allclose(np.asarray(v.tokens), np.asarray(a.tokens), rtol=1e-9)
    assert float(v.price) == pytest.approx(7 * float(a.price), rel=1e-9)


def test_adaptive_decay_is_explicit():
    tau = np.array([100.0, 200.0, 300.0])
    assert float(clear.adaptive_inverse_decay(tau, 3 * 1200.0)) == pytest.approx(
        1000.0
    )  # B/n - mean
    assert float(clear.adaptive_inverse_decay(tau, 3 * 100.0, min_scale=0.25)) == pytest.approx(
        50.0
    )  # floor
    a = clear.allocate(tau, 3 * 1200.0)  # surplus regime: everyone gets tau + (B/n - mean tau)
    np.testing.assert_allclose(np.asarray(a.tokens), tau + 1000.0, rtol=1e-9)
    assert int(a.status) in (clear.AllocationStatus.SLACK, clear.AllocationStatus.CLEARED)
    f = clear.allocate(tau, 3 * 100.0, decay=0.01)
    assert float(f.beta) == pytest.approx(0.01)


def test_slack_and_cap():
    tau = np.array([100.0, 200.0, 300.0])
    a = clear.allocate(tau, 1e5, query_cap=500.0)
    assert a.status == clear.AllocationStatus.SLACK and float(a.price) == 0.0
    np.testing.assert_allclose(np.asarray(a.tokens), 500.0)
    assert float(a.unused) == pytest.approx(1e5 - 1500.0)
    # a cap below a threshold abandons that query
    b = clear.allocate(np.array([100.0, 800.0]), 2000.0, query_cap=600.0)
    assert bool(b.admitted[0]) and not bool(b.admitted[1])


def test_leftover_goes_to_cheapest_abandoned_query_when_it_can_cross():
    # KKT abandons the second query; the remainder 589 > its threshold 500 is still given to it.
    a = clear.allocate(np.array([10.0, 500.0]), 600.0)
    assert a.status == clear.AllocationStatus.CLEARED
    assert float(a.tokens.sum()) == pytest.approx(600.0)
    assert np.all(np.asarray(a.admitted))
    # ... but not when it is below the threshold: INDIVISIBLE, remainder kept
    b = clear.allocate(np.array([10.0, 1000.0]), 700.0)
    assert b.status == clear.AllocationStatus.INDIVISIBLE and not bool(b.admitted[1])
    assert 0 < float(b.unused) <= 1000.0
    c = clear.allocate(np.array([10.0, 1000.0]), 700.0, spread_remainder=True)
    assert c.status == clear.AllocationStatus.INDIVISIBLE and float(c.unused) == pytest.approx(
        0.0, abs=1e-9
    )
    np.testing.assert_allclose(np.asarray(c.tokens), [700.0, 0.0])


def test_batched_jit_vmap_and_invalid_members_do_not_raise():
    rng = np.random.default_rng(4)
    tau = rng.lognormal(6.0, 0.7, (3, 4, 16))
    budget = rng.uniform(100, 3000, (3, 4)) * 16
    tau[1, 2, 5] = np.nan
    budget[2, 0] = -5.0
    a = clear_jit(tau, budget)
    assert a.tokens.shape == (3, 4, 16) and a.status.shape == (3, 4)
    assert (
        int(a.status[1, 2]) == clear.AllocationStatus.INVALID
        and int(a.status[2, 0]) == clear.AllocationStatus.INVALID
    )
    assert np.all(np.asarray(a.tokens[1, 2]) == 0)
    one = clear.allocate(tau[0, 1], budget[0, 1])
    np.testing.assert_allclose(np.asarray(a.tokens[0, 1]), np.asarray(one.tokens), rtol=1e-12)
    valid = np.asarray(a.status) != clear.AllocationStatus.INVALID
    assert np.all(np.asarray(a.tokens.sum(-1))[valid] <= budget[valid] * (1 + 1e-12))
    # float32 keeps its dtype and still clears
    f = clear_jit(tau[0].astype(np.float32), budget[0].astype(np.float32))
    assert f.tokens.dtype == jnp.float32
    assert np.all(np.asarray(f.tokens.sum(-1)) <= budget[0] * (1 + 1e-5))


def test_check_clear_inputs_names_the_field():
    with pytest.raises(InputError, match=r"thresholds\[1\]"):
        clear.check_inputs([1.0, -2.0], 10.0)
    with pytest.raises(InputError, match=r"thresholds\[0\]"):
        clear.check_inputs([np.nan, 2.0], 10.0)
    with pytest.raises(InputError, match="budget"):
        clear.check_inputs([1.0, 2.0], -1.0)
    with pytest.raises(InputError, match="velocity"):
        clear.check_inputs([1.0], 1.0, velocity=0.0)
    with pytest.raises(InputError, match="decay"):
        clear.allocate([1.0], 1.0, decay="fast")
    clear.check_inputs([1.0, 2.0], 10.0)


def test_integer_tokens():
    for tau, budget in itertools.islice(_instances(seed=5), 6):
        a = clear.allocate(tau, budget)
        k = np.asarray(clear.integer_tokens(a, budget))
        assert k.sum() <= budget and np.all(k[~np.asarray(a.admitted)] == 0)
        assert np.all(np.abs(k - np.asarray(a.tokens)) <= 1.0)
        if a.status == clear.AllocationStatus.CLEARED:
            assert k.sum() == np.floor(budget)


# --- implicit gradients ------------------------------------------------------------------------


@pytest.mark.parametrize("decay", ["adaptive", 0.002])
def test_gradients_match_finite_differences(decay):
    tau = np.linspace(80.0, 2400.0, 15) + np.random.default_rng(6).uniform(0, 30, 15)
    budget = 15 * 500.0
    a = clear.allocate(tau, budget, decay=decay)
    assert a.status == clear.AllocationStatus.CLEARED
    adm = np.asarray(a.admitted)
    assert 0 < adm.sum() < tau.size

    def f(t, b):
        return clear.allocate(t, b, decay=decay).tokens

    weights = np.random.default_rng(7).uniform(0.5, 1.5, tau.size)
    loss = jax.jit(lambda t, b: jnp.sum(weights * jnp.sqrt(1.0 + f(t, b))))
    g_tau, g_b = jax.jit(jax.grad(loss, argnums=(0, 1)))(tau, budget)
    h = 1e-4
    fd_b = (loss(tau, budget + h) - loss(tau, budget - h)) / (2 * h)
    assert float(g_b) == pytest.approx(float(fd_b), rel=1e-5)
    assert float(g_b) != 0.0
    for i in [0, int(adm.sum()) - 1, int(adm.sum()), tau.size - 1]:  # admitted and abandoned
        e = np.zeros(tau.size)
        e[i] = h
        fd = (loss(tau + e, budget) - loss(tau - e, budget)) / (2 * h)
        assert float(g_tau[i]) == pytest.approx(float(fd), rel=1e-5, abs=1e-9)
    # the Jacobian of the total w.r.t. the budget is exactly one when it binds
    jt = jax.jacfwd(lambda b: f(tau, b).sum())(budget)
    assert float(jt) == pytest.approx(1.0, rel=1e-10)
    # thresholds shift the total by zero (the budget is fixed)
    np.testing.assert_allclose(
        np.asarray(jax.grad(lambda t: f(t, budget).sum())(tau)), 0.0, atol=1e-9
    )


def test_gradient_of_price_wrt_velocity_and_budget_signs():
    tau, budget = np.linspace(50, 1000, 30), 30 * 300.0
    assert clear.allocate(tau, budget).status == clear.AllocationStatus.CLEARED
    dp_db = jax.grad(lambda b: clear.allocate(tau, b).price)(budget)
    assert float(dp_db) < 0  # more supply, lower price
    h = 1e-4
    fd = (
        clear.allocate(tau, budget, velocity=1 + h).price
        - clear.allocate(tau, budget, velocity=1 - h).price
    ) / (2 * h)
    gv = jax.grad(lambda v: clear.allocate(tau, budget, velocity=v).price)(1.0)
    assert float(gv) == pytest.approx(float(fd), rel=1e-6)


# --- baselines and the exact optimum -----------------------------------------------------------


def test_baselines_follow_their_definitions():
    tau = np.array([100.0, 400.0, 900.0, 1600.0])
    B = 2000.0
    np.testing.assert_allclose(clear.uniform_allocation(tau, B), 500.0)
    np.testing.assert_allclose(clear.predictor_allocation(tau, B), B * tau / tau.sum())
    # heuristic: B/n = 500 < mean 750 -> keep the easier half, tau + equal share
    np.testing.assert_allclose(clear.heuristic_allocation(tau, B), [850.0, 1150.0, 0.0, 0.0])
    # not scarce: everyone gets tau + (B/n - mean)
    np.testing.assert_allclose(clear.heuristic_allocation(tau, 4000.0), tau + 250.0)
    # auction: prefix 100+400+900 = 1400 fits, share the other 600
    np.testing.assert_allclose(clear.auction_allocation(tau, B), [300.0, 600.0, 1100.0, 0.0])
    lengths = np.array([500.0, 300.0, 1200.0, 50.0])
    x = clear.oracle_allocation(lengths, 900.0, solvable=np.array([True, True, True, False]))
    np.testing.assert_allclose(x, [500.0, 300.0, 0.0, 0.0])
    for fn in (
        clear.uniform_allocation,
        clear.predictor_allocation,
        clear.heuristic_allocation,
        clear.auction_allocation,
    ):
        for b in (50.0, 700.0, 3000.0, 9000.0):
            assert float(jnp.sum(fn(tau, b))) <= b * (1 + 1e-12)


def _brute_force(tau, budget, beta):
    best = -1.0
    for x in itertools.product(range(budget + 1), repeat=len(tau)):
        if sum(x) <= budget:
            best = max(best, float(np.sum(clear.surge_utility(np.array(x, float), tau, beta))))
    return best


def test_exact_dp_matches_brute_force():
    rng = np.random.default_rng(8)
    for _ in range(4):
        tau = rng.integers(0, 8, 3).astype(float)
        tokens, value = clear.exact_allocation(tau, 14, beta=0.3)
        assert tokens.sum() <= 14
        assert value == pytest.approx(
            float(np.sum(clear.surge_utility(tokens.astype(float), tau, 0.3)))
        )
        assert value == pytest.approx(_brute_force(tau, 14, 0.3))


def test_exact_dp_dominates_clear_and_gap_is_small():
    rng = np.random.default_rng(9)
    gaps = []
    for _ in range(8):
        tau = rng.uniform(5, 120, 5).round()
        budget = float(rng.integers(60, 400))
        a = clear.allocate(tau, budget)
        beta = float(a.beta)
        k = np.asarray(clear.integer_tokens(a, budget)).astype(float)
        clear_u = float(np.sum(clear.surge_utility(k, tau, beta)))
        _, opt = clear.exact_allocation(tau, budget, beta=beta)
        assert opt >= clear_u - 1e-9
        gaps.append((opt - clear_u) / opt)
    assert np.median(gaps) < 0.05 and max(gaps) < 0.5


# --- evaluation harness ------------------------------------------------------------------------


def test_shipped_pool_is_the_documented_generator(tmp_path):
    pool, gen = clear.default_pool(), clear.synthetic_pool(0)
    np.testing.assert_allclose(pool.threshold, gen.threshold, rtol=1e-5)
    np.testing.assert_array_equal(pool.true_length, gen.true_length)
    np.testing.assert_array_equal(pool.solvable, gen.solvable)
    np.testing.assert_array_equal(pool.tier, gen.tier)
    clear.write_pool(pool, tmp_path / "p.csv")
    again = clear.load_pool(tmp_path / "p.csv")
    np.testing.assert_array_equal(again.tier, pool.tier)
    stream = clear.sample_stream(pool, "Mostly-Hard", 500, seed=1)
    assert len(stream) == 500 and np.mean(stream.tier == 2) == pytest.approx(0.6)


def test_clear_beats_uniform_when_scarce():
    result = clear.evaluate_streams(budgets=(256, 512))
    for stream in clear.STREAMS:
        for bi in range(2):
            assert result["gain"][stream][bi] > 2.0, (stream, bi)
            assert (
                result["accuracy"]["Oracle"][stream][bi] >= result["accuracy"]["CLEAR"][stream][bi]
            )
    robust = clear.noise_robustness(sigmas=(0.0, 1.0))
    assert robust["CLEAR"][0] >= robust["CLEAR"][1]
    assert min(robust["CLEAR"]) > max(robust["Uniform"])


def test_load_pool_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("threshold,true_length,solvable\n100,200,1\n-3,200,0\n")
    with pytest.raises(InputError, match=r"bad.csv:3: threshold"):
        clear.load_pool(bad)
    bad.write_text("threshold,true_length,solvable\n100,200,maybe\n")
    with pytest.raises(InputError, match=r"bad.csv:2: solvable"):
        clear.load_pool(bad)
    bad.write_text("threshold,solvable\n100,1\n")
    with pytest.raises(InputError, match="true_length"):
        clear.load_pool(bad)
    ok = tmp_path / "ok.csv"
    ok.write_text(
        "threshold,true_length,solvable\n" + "".join(f"{t},{t},1\n" for t in range(10, 100, 10))
    )
    assert sorted(set(clear.load_pool(ok).tier.tolist())) == [0, 1, 2]  # tiers by tertiles


# --- CLI -----------------------------------------------------------------------------------------


def _parser():
    p = argparse.ArgumentParser(prog="jaxopt-tokens")
    sub = p.add_subparsers(dest="command")
    cli_budget.register(sub)
    return p


def _run(argv):
    args = _parser().parse_args(argv)
    return args.func(args)


def test_cli_budget_json_and_table(tmp_path, capsys):
    f = tmp_path / "th.csv"
    f.write_text("threshold,name\n100,a\n300,b\n800,c\n1500,d\n")
    assert _run(["budget", "--budget", "1600", "--thresholds", str(f), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    direct = clear.allocate(np.array([100.0, 300.0, 800.0, 1500.0]), 1600.0)
    np.testing.assert_allclose(out["tokens"], np.asarray(direct.tokens), rtol=1e-9)
    assert out["total_tokens"] <= 1600 and out["status"] in ("cleared", "indivisible")
    assert _run(["budget", "--budget", "2000", "--thresholds", str(f), "--policy", "auction"]) == 0
    text = capsys.readouterr().out
    assert "auction" in text and "1066.7" in text


def test_cli_budget_bad_csv_names_line(tmp_path):
    f = tmp_path / "th.csv"
    f.write_text("threshold\n100\nabc\n")
    with pytest.raises(InputError, match=r"th.csv:3"):
        _run(["budget", "--budget", "1000", "--thresholds", str(f)])


def test_cli_evaluate_budget(tmp_path, capsys):
    pool = tmp_path / "pool.csv"
    clear.write_pool(clear.synthetic_pool(3), pool)
    assert _run(["evaluate-budget", "--pool", str(pool), "--seed", "2", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["streams"] == list(clear.STREAMS) and out["budgets"] == [256, 512, 1024, 2048]
    assert set(out["accuracy"]) >= {"Uniform", "CLEAR", "Oracle"}
    assert _run(["evaluate-budget", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert "Mostly-Easy" in text and "Uniform" in text and "Oracle" in text


# --- property-based: the invariants on arbitrary inputs, float64 and float32 ---------------------

from hypothesis.extra.numpy import arrays  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(
    # a few batch sizes only: each size compiles once; ties break by index,
    # so thresholds are distinct
    tau=arrays(
        np.float64, st.sampled_from([1, 7, 30]), elements=st.floats(1.0, 5000.0), unique=True
    ),
    per_query=st.floats(1.0, 6000.0),
    grow=st.floats(1.0, 3.0),
    dtype=st.sampled_from([np.float64, np.float32]),
    seed=st.integers(0, 2**16),
)
def test_clearing_invariants_hold_on_arbitrary_batches(tau, per_query, grow, dtype, seed):
    budget = per_query * len(tau)
    rtol = 1e-9 if dtype == np.float64 else 2e-5
    tau_d = tau.astype(dtype)
    a = clear_jit(tau_d, dtype(budget), decay=0.004)
    total = float(np.sum(np.asarray(a.tokens, np.float64)))
    assert np.all(np.asarray(a.tokens) >= 0)
    assert total <= budget * (1 + rtol) + 1e-6
    if int(a.status) == clear.AllocationStatus.CLEARED:
        assert total == pytest.approx(budget, rel=rtol, abs=1.0)
    # more budget never means fewer tokens handed out in total
    b = clear_jit(tau_d, dtype(budget * grow), decay=0.004)
    assert float(np.sum(np.asarray(b.tokens, np.float64))) >= total * (1 - rtol) - 1e-3
    # relabelling the queries relabels the allocation
    perm = np.random.default_rng(seed).permutation(len(tau))
    c = clear_jit(tau_d[perm], dtype(budget), decay=0.004)
    np.testing.assert_allclose(
        np.asarray(c.tokens), np.asarray(a.tokens)[perm], rtol=rtol * 10, atol=1e-3
    )


def test_clear_inputs(tmp_path):
    with pytest.raises(jt.InputError, match="budget"):
        jt.clear.uniform_allocation(jnp.ones(3), jnp.ones(4))
    with pytest.raises(jt.InputError, match="min_scale"):
        jt.clear.allocate(jnp.ones(3), 10.0, min_scale=-1.0)
    assert np.all(np.isnan(np.asarray(jt.clear.uniform_allocation(jnp.ones(3), -5.0))))
    tau = jnp.array([np.nan, 2.0, 3.0])
    for baseline in jt.clear.BASELINES.values():
        assert np.all(np.isnan(np.asarray(baseline(tau, 10.0))))
    with pytest.raises(jt.InputError, match="thresholds"):
        jt.clear.heuristic_allocation(jnp.array([]), 10.0)
    with pytest.raises(jt.InputError, match="budget"):
        jt.clear.allocate(jnp.ones((2, 3)), jnp.ones(4))


def test_budget_and_evaluate_cli(files):
    assert_refused(["budget", "--budget", "100", "--thresholds", files / "bad.bin"], "UTF-8")
    assert_refused(["evaluate-budget", "--seed", "-1"], "--seed")
    assert_refused(["evaluate-budget", "--pool", files / "bad.bin"], "UTF-8")
