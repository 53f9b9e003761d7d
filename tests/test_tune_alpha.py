"""Tuning alpha to a latency target, checked against an independent constrained solve (cvxpy)."""

from __future__ import annotations

import json
import warnings

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxopt_tokens as jt
from jaxopt_tokens import TuneStatus
from jaxopt_tokens.cli import main

_tune = jax.jit(jt.tune_alpha)


def max_accuracy_under_latency(w, tau):
    """cvxpy: maximise mean accuracy subject to E[T] <= tau (the DCP form of eqs. 5-6)."""
    n = w.num_tasks
    A, b, D, t0, c, pi = (np.asarray(getattr(w, f)) for f in ("A", "b", "D", "t0", "c", "share"))
    lam, lmax = float(w.arrival_rate), float(w.max_tokens)
    l = cp.Variable(n)
    t = t0 + cp.multiply(c, l)
    m1 = pi @ t
    wait = sum(cp.quad_over_lin(np.sqrt(lam * pi[k] / 2) * t[k], 1 - lam * m1) for k in range(n))
    acc = pi @ (cp.multiply(A, 1 - cp.exp(-cp.multiply(b, l))) + D)
    prob = cp.Problem(cp.Maximize(acc), [wait + m1 <= tau, l >= 0, l <= lmax])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    return float(prob.value)


@pytest.mark.parametrize("tau", [0.5, 2.0, 6.0])
def test_matches_constrained_optimum(table1, tau):
    r = _tune(table1, tau)
    assert TuneStatus(int(r.status)) == TuneStatus.CONVERGED
    assert float(r.mean_system_time) == pytest.approx(tau, rel=1e-6)
    assert float(r.accuracy) == pytest.approx(max_accuracy_under_latency(table1, tau), abs=1e-6)


@pytest.mark.slow  # scipy reference per random workload
def test_random_workloads_match_constrained_optimum():
    wb = jt.random_workloads(
        jax.random.key(8), 4, 4, dtype=jnp.float64, load=(0.05, 0.6), alpha=(1.0, 100.0)
    )
    for i in range(4):
        w = jax.tree.map(lambda x: x[i], wb)
        tau = 1.5 * float(jt.mean_system_time(jnp.zeros(4), w))
        r = _tune(w, tau)
        assert TuneStatus(int(r.status)) == TuneStatus.CONVERGED
        assert float(r.accuracy) == pytest.approx(max_accuracy_under_latency(w, tau), abs=1e-6)


def test_unreachable_targets(table1):
    zero_latency = float(jt.mean_system_time(jnp.zeros(6), table1))
    assert (
        TuneStatus(int(_tune(table1, 0.5 * zero_latency).status)) == TuneStatus.TARGET_BELOW_MINIMUM
    )
    capped = table1.replace(max_tokens=50.0)  # every budget capped well before the queue saturates
    top = float(jt.mean_system_time(jnp.full(6, 50.0), capped))
    assert TuneStatus(int(_tune(capped, 2 * top).status)) == TuneStatus.TARGET_ABOVE_MAXIMUM


@pytest.mark.slow  # a thousand tuned targets
def test_vmap_over_targets(table1):
    taus = jnp.linspace(0.5, 8.0, 64)
    r = jax.jit(jax.vmap(jt.tune_alpha, in_axes=(None, 0)))(table1, taus)
    assert np.all(np.asarray(r.status) == 0)
    np.testing.assert_allclose(r.mean_system_time, taus, rtol=1e-8)
    assert np.all(np.diff(np.asarray(r.alpha)) > 0) and np.all(np.diff(np.asarray(r.accuracy)) > 0)


def test_general_tune_reaches_latency_target(table1):
    def loss(sol, w):
        return (jt.mean_system_time(sol.tokens, w) - 3.0) ** 2

    tuned, history = jax.jit(
        lambda w: jt.tune(w, loss, ["alpha"], optimizer=optax.adam(0.1), steps=150)
    )(table1)
    assert float(history[-1]) < 1e-6 < float(history[0])
    ref = _tune(table1, 3.0)
    assert float(tuned.alpha) == pytest.approx(float(ref.alpha), rel=1e-3)


def test_cli_tune(capsys):
    assert main(["tune", "--target-latency", "2.0", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mean_system_time"] == pytest.approx(2.0, abs=1e-6)
    assert out["tune_status"] == "converged"
    w = jt.default_workload().astype(jnp.float64)
    assert out["accuracy"] == pytest.approx(max_accuracy_under_latency(w, 2.0), abs=1e-6)
    assert main(["tune", "--target-latency", "0.01"]) == 1


def test_general_tune_vmaps_over_targets(table1):
    taus = jnp.array([1.0, 2.0, 4.0, 6.0])

    def tuned_latency(tau):
        loss = lambda sol, w: (jt.mean_system_time(sol.tokens, w) / tau - 1) ** 2  # noqa: E731
        w, _ = jt.tune(table1, loss, ["alpha"], optimizer=optax.adam(0.1), steps=200)
        return jt.mean_system_time(jt.solve(w).tokens, w)

    np.testing.assert_allclose(jax.jit(jax.vmap(tuned_latency))(taus), taus, rtol=1e-3)


def test_tune_alpha_statuses(table1):
    assert jt.tune_alpha(table1, float("nan")).status == jt.TuneStatus.INVALID_INPUT
    assert jt.tune_alpha(table1, -1.0).status == jt.TuneStatus.INVALID_INPUT
    bad = table1.replace(share=table1.share * 2)
    assert jt.tune_alpha(bad, 2.0).status == jt.TuneStatus.SOLVE_FAILED


def test_tune_alpha_float32_tolerance(table1):
    r = jt.tune_alpha(table1.astype(jnp.float32), 2.0)
    assert r.status == jt.TuneStatus.CONVERGED and float(r.mean_system_time) == pytest.approx(
        2.0, rel=1e-4
    )


def test_tune_unknown_field_is_an_input_error(table1):
    with pytest.raises(jt.InputError, match="names"):
        jt.tune(table1, lambda s, w: s.objective, ["names"], steps=1)
