"""Integer budgets (39)-(41)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_tokens as jt


def test_table1_integer(table1):
    sol = jt.solve(table1)
    li = jt.integer_budgets(sol.tokens, table1)
    np.testing.assert_array_equal(li, [0, 341, 0, 0, 346, 30])
    assert float(jt.objective(li, table1)) <= float(sol.objective)


@pytest.mark.slow  # integer bounds on a random batch, each solved
def test_bounds_on_random_instances():
    wb = jt.random_workloads(jax.random.key(4), 500, 6, dtype=jnp.float64)
    sol = jt.solve(wb)
    exhaustive = jax.vmap(lambda l, w: jt.integer_budgets(l, w, "exhaustive"))(sol.tokens, wb)
    rounded = jt.theory.round_budgets(sol.tokens, wb)
    local = jax.vmap(jt.theory.local_search_budgets)(sol.tokens, wb)
    J_star = np.asarray(sol.objective)
    J_ex, J_rd, J_ls = (np.asarray(jt.objective(x, wb)) for x in (exhaustive, rounded, local))
    tol = 1e-12 * np.maximum(1, np.abs(J_star))
    assert np.all(J_star >= J_ex - tol)
    assert np.all(J_ex >= J_rd - tol)  # (39) searches a set containing (40)
    assert np.all(J_ls >= J_rd - tol)  # local search never worsens rounding
    assert np.all(J_ex >= np.asarray(jt.theory.integer_lower_bound(sol.tokens, wb)) - tol)
    assert np.all(J_ex >= np.asarray(jt.theory.paper_integer_lower_bound(sol.tokens, wb)) - tol)
    for x in (exhaustive, rounded, local):
        x = np.asarray(x)
        assert np.all(x == np.round(x)) and np.all(x >= 0)
        assert np.all(x <= np.asarray(wb.max_tokens)[:, None])


def test_exhaustive_refuses_large_n():
    w = jax.tree.map(
        lambda x: x[0], jt.random_workloads(jax.random.key(0), 1, 20, dtype=jnp.float64)
    )
    l = jt.solve(w).tokens
    with pytest.raises(ValueError, match="2\\^20"):
        jt.integer_budgets(l, w, "exhaustive")
    auto = jt.integer_budgets(l, w, "auto")  # falls back to local search
    assert float(jt.objective(auto, w)) >= float(jt.objective(jt.theory.round_budgets(l, w), w))
