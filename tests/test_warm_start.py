"""Warm starts: `solve(w, start=budgets)` changes where the iteration begins, never the answer.

Checked against the cold solve of the same members: the same budgets (to the solver's
tolerance), statuses and implicit gradients, fewer steps from a nearby start, exactly the cold
path for a start that cannot seed the solver, and the same member by member however the call
is spelled. Sweeps solve coarse to fine with it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxopt_tokens as jt
from jaxopt_tokens import InputError, Status
from jaxopt_tokens._solver.staged import MIN_STAGED_BATCH


def family(size, key=0, scale=1.0):
    """Table-I workloads at random arrival rates and alphas (alpha times `scale`)."""
    w = jt.default_workload()
    k1, k2 = jax.random.split(jax.random.key(key))
    rates = jax.random.uniform(k1, (size,), jnp.float64, 0.01, 0.5)
    alphas = jnp.exp(jax.random.uniform(k2, (size,), jnp.float64, 0.0, np.log(100.0)))
    return jax.vmap(lambda r, a: w.replace(arrival_rate=r, alpha=a * scale))(rates, alphas)


@pytest.mark.parametrize("method", ["default", "fixed-point", "pga-safeguarded"])
def test_start_at_the_optimum_is_certified_at_once(table1, method):
    cold = jt.solve(table1, method)
    warm = jt.solve(table1, method, start=cold.tokens)
    assert int(warm.status) == Status.CONVERGED
    assert int(warm.iterations) <= 1 < int(cold.iterations)
    np.testing.assert_allclose(warm.tokens, cold.tokens, rtol=1e-8, atol=1e-8)


@pytest.fixture(scope="module")
def nearby():
    """A staged batch (like a sweep chunk), its cold solution, and starts from the solution at
    alpha 2% higher."""
    w = family(MIN_STAGED_BATCH)
    neighbour = jt.solve(family(MIN_STAGED_BATCH, scale=1.02)).tokens
    return w, neighbour, jt.solve(w), jt.solve(w, start=neighbour)


@pytest.mark.slow  # shares a 2e4-member batch solved cold and warm
@pytest.mark.xdist_group("warm_nearby")  # one worker builds the shared batch
def test_nearby_starts_take_fewer_steps_and_give_the_cold_answer(nearby):
    w, neighbour, cold, warm = nearby
    np.testing.assert_array_equal(warm.status, cold.status)
    assert np.all(np.asarray(warm.status) == Status.CONVERGED)
    np.testing.assert_allclose(warm.tokens, cold.tokens, rtol=1e-7, atol=1e-6)
    assert np.all(np.asarray(warm.residual) <= 1e-9)
    # 2% in alpha: the price iteration starts in its quadratic region
    assert float(jnp.mean(warm.iterations)) <= 0.6 * float(jnp.mean(cold.iterations))


def test_starts_that_cannot_seed_the_solver_take_the_cold_path(table1):
    """Non-finite budgets, or budgets the server cannot sustain: the member starts as it
    would without a start (same steps, same answer, bit for bit)."""
    heavy = table1.replace(arrival_rate=0.5)
    cold = jt.solve(heavy)
    for bad in (
        jnp.full(6, jnp.nan),
        cold.tokens.at[2].set(jnp.inf),
        jnp.full(6, float(heavy.max_tokens)),  # every budget at the cap: load far above 1
    ):
        warm = jt.solve(heavy, start=bad)
        assert int(warm.iterations) == int(cold.iterations)
        np.testing.assert_array_equal(warm.tokens, cold.tokens)


def test_start_shape_and_type_are_checked(table1):
    with pytest.raises(InputError, match="start"):
        jt.solve(table1, start=jnp.zeros(5))
    with pytest.raises(InputError, match="start"):
        jt.solve(jt.random_workloads(jax.random.key(0), 3, 6), start=jnp.zeros(6))
    # integer budgets are budgets
    sol = jt.solve(table1, start=jnp.asarray([0, 300, 200, 0, 100, 50]))
    assert int(sol.status) == Status.CONVERGED


@pytest.mark.slow  # shares a 2e4-member batch solved cold and warm
@pytest.mark.xdist_group("warm_nearby")  # one worker builds the shared batch
def test_warm_start_spellings_agree_member_by_member(nearby):
    w, start, _, batched = nearby
    mapped = jax.jit(jax.vmap(lambda wi, si: jt.solve(wi, start=si)))(w, start)
    for field in ("status", "iterations", "tokens", "residual"):
        np.testing.assert_array_equal(getattr(batched, field), getattr(mapped, field))


def test_gradients_do_not_depend_on_the_start(table1):
    start = jt.solve(table1.replace(alpha=table1.alpha * 1.1)).tokens

    def value(alpha, start):
        return jt.solve(table1.replace(alpha=alpha), start=start).objective

    g_cold = jax.grad(value)(table1.alpha, None)
    g_warm, g_start = jax.grad(value, argnums=(0, 1))(table1.alpha, start)
    assert float(g_warm) == pytest.approx(float(g_cold), rel=1e-8)
    np.testing.assert_array_equal(g_start, 0)  # where it started is not an input of the answer


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True),
            st.floats(min_value=0, max_value=3000),
        ),
        min_size=6,
        max_size=6,
    )
)
def test_any_start_gives_the_certified_answer(table1, values):
    """Whatever the start (NaN, inf, negative, beyond the cap, unstable), the answer is the
    cold one: converged, certified, the same budgets to the tolerance."""
    cold = _cold(table1)
    warm = _solve_from(table1, jnp.asarray(values, jnp.float64))
    assert int(warm.status) == Status.CONVERGED
    assert float(warm.residual) <= 1e-9
    np.testing.assert_allclose(warm.tokens, cold.tokens, rtol=1e-7, atol=1e-6)


_solve_from = jax.jit(lambda w, s: jt.solve(w, start=s))
_COLD = {}


def _cold(w):
    if "table1" not in _COLD:
        _COLD["table1"] = jt.solve(w)
    return _COLD["table1"]


@pytest.mark.slow  # compiles the sweep's second (warm) solver; warm starts keep their tests
def test_sweep_coarse_to_fine_matches_cold_sweep():
    w = jt.default_workload()
    grids = dict(arrival_rate=np.linspace(0.02, 0.45, 64), alpha=np.geomspace(1, 100, 64))
    warm = jt.sweeps.sweep(w, quiet=True, warm_start=True, **grids)  # one chunk, coarse to fine
    cold = jt.sweeps.sweep(w, quiet=True, **grids)  # the default below 4e6 points: cold
    with pytest.raises(InputError, match="warm_start"):
        jt.sweeps.sweep(w, quiet=True, warm_start="yes", alpha=[1.0])
    assert (warm["status"] == cold["status"]).all() and (warm["status"] == "converged").all()
    tok = [c for c in warm.columns if c.startswith("l_") and not c.startswith("l_int_")]
    np.testing.assert_allclose(warm[tok].to_numpy(), cold[tok].to_numpy(), rtol=1e-7, atol=1e-6)
    np.testing.assert_allclose(warm["objective"], cold["objective"], rtol=1e-12)
