"""Latency models of recorded traffic: Kingman, TimeVarying (and its simulation), and
`plan_windows`."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    AZURE_CODE,
)

import jaxopt_tokens as jt

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
    w6 = jt.default_workload()
    for base, discipline, served in (
        (jt.FIFO(), "fifo", (0, 1, 2, 3, 4, 5)),
        (jt.Priority(order), "priority", order),
    ):
        model = jt.TimeVarying(rate_factors=[0.5, 1.5], weights=[0.5, 0.5], base=base)
        assert model.discipline == discipline
        assert model.priority_order(w6) == base.priority_order(w6) == served
    with pytest.raises(jt.InputError, match="base: "):
        jt.TimeVarying([1.0], [1.0], base=model)  # windows of windows
    with pytest.raises(jt.InputError, match="base: "):
        jt.TimeVarying([1.0], [1.0], base=jt.ContinuousBatching(step_time=(0.02, 0.0005)))
    with jax.enable_x64(True):
        w = jt.default_workload()
        l = jnp.asarray(jt.solve(w).tokens)
        trace = jt.traffic.Trace(np.cumsum(np.random.default_rng(0).exponential(10.0, 2000)))
        sim = jt.simulate(w, l, arrivals=trace, model=model, num_replications=2)
        assert sim.discipline == "priority"


def test_plan_windows_solves_each_window_and_a_robust_static_policy():
    with jax.enable_x64(True):
        w = jt.default_workload()
        es = float(jt.service_moments(jt.solve(w).tokens, w)[0])
        trace = jt.traffic.read_trace(AZURE_CODE)
        trace = trace.rescaled(0.3 / es)
        plan = jt.traffic.plan_windows(w, trace, window=trace.duration / 4)
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
