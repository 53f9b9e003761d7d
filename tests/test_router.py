"""The router trained through the solver (decision-focused) against the two-stage baseline."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_tokens as jt
from jaxopt_tokens._tuning.router import _smoothed_tokens


def held_out_setup():
    pool = jt.router.synthetic_task_pool(jax.random.key(0), 300, 4, noise=0.3)
    train, test = jnp.arange(200), jnp.arange(200, 300)
    test_idx = jax.vmap(lambda k: jax.random.choice(k, test, (6,), replace=False))(
        jax.random.split(jax.random.key(9), 200)
    )
    return pool, train, test_idx


@pytest.mark.slow  # trains two routers
def test_decision_focused_beats_two_stage_on_held_out_types():
    pool, train, test_idx = held_out_setup()
    dfl, hist = jt.router.train_router(
        jt.router.CurveModel(4, jax.random.key(1), 16), pool, train, jax.random.key(2), steps=300
    )
    two, _ = jt.router.train_router(
        jt.router.CurveModel(4, jax.random.key(1), 16),
        pool,
        train,
        jax.random.key(2),
        decision_focused=False,
        steps=600,
    )
    J_dfl = float(jnp.mean(jt.router.realised_objective(dfl, pool, test_idx)))
    J_two = float(jnp.mean(jt.router.realised_objective(two, pool, test_idx)))

    def oracle(i):
        w = pool.workload(i, arrival_rate=0.1, alpha=30.0, max_tokens=4096.0)
        return jt.objective(jt.solve(w).tokens, w)

    J_oracle = float(jnp.mean(jax.vmap(oracle)(test_idx)))
    assert float(hist[-1]) < float(hist[0])  # training raised the realised J
    assert J_two < J_dfl <= J_oracle + 1e-9


def test_smoothing_gives_gradients_at_bounds(table1):
    sol = jt.solve(table1)
    pinned = np.asarray(sol.tokens) == 0
    assert pinned.any()
    exact = jax.grad(lambda w: jnp.sum(jt.solve(w).tokens))(table1).b
    smooth = jax.grad(lambda w: jnp.sum(_smoothed_tokens(jt.solve(w).tokens, w, 5.0)))(table1).b
    assert np.all(np.asarray(exact)[pinned] == 0)
    assert np.all(np.asarray(smooth)[pinned] != 0)
    # away from the bounds the smoothed budgets equal the exact ones
    smoothed = _smoothed_tokens(sol.tokens, table1, 1e-3)
    np.testing.assert_allclose(
        np.asarray(smoothed)[~pinned], np.asarray(sol.tokens)[~pinned], rtol=1e-9
    )
