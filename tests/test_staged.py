"""Large batches are solved in stages (`_solver/staged.py`).

The same steps per member as a plain vmap.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_tokens as jt

# the per-member loop and the driver's validation, tested on purpose against the stages
from jaxopt_tokens._solver.base import run
from jaxopt_tokens._solver.solution import masked_solution
from jaxopt_tokens._solver.staged import MIN_STAGED_BATCH
from jaxopt_tokens._validate import validate_members


@pytest.fixture(scope="module")
def batch():
    w = jt.random_workloads(jax.random.PRNGKey(3), 2 * MIN_STAGED_BATCH, 6, dtype=jnp.float64)
    # a few members the solver must reject, scattered through the batch
    lam = np.asarray(w.arrival_rate).copy()
    lam[[5, 700, 3000]] = [np.nan, -1.0, 1e9]
    return w.replace(arrival_rate=lam)


@jax.jit  # one compiled function for every test (a new jit closure per call recompiles)
def plain(w):
    """Members in vmapped blocks below the staging size: one while_loop per block, no stages."""
    return jax.lax.map(jt.solve, w, batch_size=MIN_STAGED_BATCH // 2)


@jax.jit
def one_loop(w):
    """The whole batch in one vmapped while_loop (every member as long as the slowest)."""
    status, ok, safe = validate_members(w)
    sol = jax.vmap(lambda wi: run(jt.AggregateNewton(), jt.Problem(wi, jt.FIFO())))(safe)
    return masked_solution(sol, ok, status)


@pytest.mark.xdist_group("staged_batch")  # one worker builds the shared batch
def test_staged_batch_takes_the_same_steps_as_plain_vmap(batch):
    staged, ref = jt.solve(batch), one_loop(batch)
    np.testing.assert_array_equal(staged.status, ref.status)
    np.testing.assert_array_equal(staged.iterations, ref.iterations)
    np.testing.assert_allclose(staged.tokens, ref.tokens, rtol=1e-12, atol=1e-9)
    # certificates agree up to rounding (both far below the 1e-9 target)
    np.testing.assert_allclose(staged.residual, ref.residual, rtol=0, atol=1e-12)
    assert np.asarray(staged.iterations).max() > 16  # stragglers exist: the rounds were exercised
    assert list(np.asarray(staged.status)[[5, 700, 3000]]) == [
        jt.Status.NONFINITE_INPUT,
        jt.Status.INVALID_INPUT,
        jt.Status.UNSTABLE_INPUT,
    ]


@pytest.mark.slow  # a staged solve and its gradient over a grid batch
@pytest.mark.xdist_group("staged_batch")  # one worker builds the shared batch
def test_staged_batch_keeps_batch_shape_and_gradients(batch):
    grid = jax.tree_util.tree_map(lambda x: x.reshape(64, -1, *x.shape[1:]), batch)
    sol = jt.solve(grid)
    assert (
        sol.tokens.shape == (64, 2 * MIN_STAGED_BATCH // 64, 6)
        and sol.status.shape == grid.batch_shape
    )
    np.testing.assert_array_equal(sol.status.reshape(-1), jt.solve(batch).status)
    # the implicit derivative is attached per member as in the plain path
    g_staged = jax.grad(
        lambda a: jnp.sum(jnp.where(sol_ok, jt.solve(batch.replace(alpha=a)).objective, 0))
    )
    sol_ok = np.asarray(jt.solve(batch).status) == 0
    g_plain = jax.grad(
        lambda a: jnp.sum(jnp.where(sol_ok, plain(batch.replace(alpha=a)).objective, 0))
    )
    np.testing.assert_allclose(g_staged(batch.alpha), g_plain(batch.alpha), rtol=1e-9, atol=1e-12)


@pytest.mark.slow  # the staged solve compiled again in float32
def test_staged_float32(batch):  # shares no compilation with the group: either worker
    """In float32 a different fusion can tip a member at the rounding floor either way."""
    w32 = batch.astype(jnp.float32)
    staged, ref = jt.solve(w32), plain(w32)
    assert staged.tokens.dtype == jnp.float32
    same = np.asarray(staged.status) == np.asarray(ref.status)
    assert same.mean() > 0.998
    both = same & (np.asarray(staged.status) == 0)
    np.testing.assert_allclose(
        np.asarray(staged.tokens)[both], np.asarray(ref.tokens)[both], rtol=1e-3, atol=0.5
    )


@pytest.mark.slow  # every vmap spelling compiles its own staged solve
@pytest.mark.xdist_group("staged_batch")  # one worker builds the shared batch
def test_every_spelling_takes_the_staged_path(batch):
    """`solve(batch)`, `jit(vmap(solve))(batch)` and `vmap` of a user's function that calls
    `solve` give the same answers, statuses, iteration counts and implicit gradients."""
    direct = jt.solve(batch)
    spelled = jax.jit(jax.vmap(jt.solve))(batch)

    def users(w):
        sol = jt.solve(w)
        return sol.tokens @ w.share, sol

    inside = jax.jit(jax.vmap(users))(batch)[1]
    for other in (spelled, inside):
        np.testing.assert_array_equal(other.status, direct.status)
        np.testing.assert_array_equal(other.iterations, direct.iterations)
        np.testing.assert_array_equal(np.asarray(other.tokens), np.asarray(direct.tokens))
    ok = np.asarray(direct.status) == 0
    g_direct = jax.grad(
        lambda a: jnp.sum(jnp.where(ok, jt.solve(batch.replace(alpha=a)).objective, 0))
    )
    g_vmap = jax.grad(
        lambda a: jnp.sum(jnp.where(ok, jax.vmap(jt.solve)(batch.replace(alpha=a)).objective, 0))
    )
    np.testing.assert_allclose(g_vmap(batch.alpha), g_direct(batch.alpha), rtol=1e-12, atol=0)


def test_solve_compiles_once_and_moves_nothing_to_the_host():
    """No host round trip inside the solvers: a jitted batched solve runs under
    `jax.transfer_guard("disallow")` on device-resident inputs, and new values of the same
    shape reuse the one compilation."""
    f = jax.jit(jt.solve)
    a = jax.device_put(jt.random_workloads(jax.random.PRNGKey(1), 256, 6, dtype=jnp.float64))
    b = jax.device_put(jt.random_workloads(jax.random.PRNGKey(2), 256, 6, dtype=jnp.float64))
    jax.block_until_ready(f(a))
    compiled = f._cache_size()
    with jax.transfer_guard("disallow"):
        out = jax.block_until_ready(f(b))
        assert f._cache_size() == compiled  # new values, the same compilation
        vm = jax.jit(jax.vmap(jt.solve))
    assert out.tokens.shape == (256, 6)
    jax.block_until_ready(vm(a))
    compiled = vm._cache_size()
    with jax.transfer_guard("disallow"):
        jax.block_until_ready(vm(b))
    assert vm._cache_size() == compiled
