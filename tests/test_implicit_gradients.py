"""Implicit derivatives of `solve`.

Checked against finite differences, the envelope theorem and each other.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_tokens as jt

FIELDS = ("arrival_rate", "alpha", "A", "b", "D", "t0", "c", "share")


def J_star(w):
    return jt.solve(w, rtol=1e-13).objective


def tokens_star(w):
    return jt.solve(w, rtol=1e-13).tokens


_grad_J = jax.jit(jax.grad(J_star))
_J = jax.jit(J_star)


def central_difference(f, w, field, index, rel=1e-6):
    x = getattr(w, field)
    e = jnp.ones_like(x) if index is None else jnp.zeros_like(x).at[index].set(1.0)
    xi = float(x if index is None else x[index])
    h = rel * (abs(xi) if xi != 0 else 1.0)
    if float(jnp.min(x - h * e)) < 0:  # stay in the domain (D = 0 in Table I): one-sided
        return (f(w.replace(**{field: x + h * e})) - f(w)) / h
    if field in ("A", "D") and float(jnp.max(w.A + w.D + h * e)) > 1:  # A + D = 1 is the edge too
        return (f(w) - f(w.replace(**{field: x - h * e}))) / h
    return (f(w.replace(**{field: x + h * e})) - f(w.replace(**{field: x - h * e}))) / (2 * h)


def check_all_fields(w, rtol=1e-5):
    g = _grad_J(w)
    for field in FIELDS:
        x = getattr(w, field)
        indices = [None] if x.ndim == 0 else range(x.shape[0])
        for i in indices:
            ours = float(getattr(g, field) if i is None else getattr(g, field)[i])
            fd = float(central_difference(_J, w, field, i))
            assert ours == pytest.approx(fd, rel=rtol, abs=1e-7 * max(1.0, abs(float(_J(w))))), (
                field,
                i,
                ours,
                fd,
            )


def test_table1_every_field(table1):
    sol = jt.solve(table1)
    assert np.any(np.asarray(sol.tokens) == 0) and np.any(
        np.asarray(sol.tokens) > 0
    )  # bounds and interior
    check_all_fields(table1)


@pytest.mark.slow  # finite differences of capped budgets
def test_upper_bound_active(table1):
    w = table1.replace(max_tokens=200.0)  # GSM8K and BBH pinned at the cap
    tokens = np.asarray(jt.solve(w).tokens)
    assert tokens[1] == 200 and tokens[4] == 200
    check_all_fields(w)
    # a capped budget follows the cap one for one; a free one responds through the queue only
    dl = jax.jacfwd(tokens_star)(w).max_tokens
    assert float(dl[1]) == 1.0 and float(dl[4]) == 1.0


def test_near_degenerate(table1):
    """A budget just leaving its lower bound, and one just about to: CRUXEval as alpha grows."""
    lo, hi = 30.0, 300.0
    assert (
        float(tokens_star(table1.replace(alpha=lo))[3])
        == 0
        < float(tokens_star(table1.replace(alpha=hi))[3])
    )
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if float(tokens_star(table1.replace(alpha=mid))[3]) == 0 else (lo, mid)
    for alpha, pinned in ((hi * (1 + 1e-3), False), (lo * (1 - 1e-3), True)):
        w = table1.replace(alpha=alpha)
        assert (float(tokens_star(w)[3]) == 0) == pinned
        check_all_fields(w)


@pytest.mark.slow  # finite differences for every field of random instances
def test_random_instances_every_field():
    wb = jt.random_workloads(
        jax.random.key(21), 6, 4, dtype=jnp.float64, load=(0.05, 0.8), alpha=(1.0, 300.0)
    )
    for i in range(6):
        check_all_fields(jax.tree.map(lambda x: x[i], wb))


def test_envelope_theorem_and_modes(table1):
    g = jax.grad(J_star)(table1)
    acc = jt.mean_accuracy(jt.solve(table1).tokens, table1)
    assert float(g.alpha) == pytest.approx(float(acc), rel=1e-9)
    fwd, rev = jax.jacfwd(tokens_star)(table1), jax.jacrev(tokens_star)(table1)
    for field in FIELDS:
        np.testing.assert_allclose(getattr(fwd, field), getattr(rev, field), rtol=1e-9, atol=1e-9)


@pytest.mark.slow  # second derivatives through the solver
def test_hessian_in_arrival_rate_and_alpha(table1):
    def J_of(p):
        return J_star(table1.replace(arrival_rate=p[0], alpha=p[1]))

    p = jnp.array([0.1, 30.0])
    H = jax.hessian(J_of)(p)
    h = jnp.array([1e-5, 1e-3])
    for i in range(2):
        e = jnp.zeros(2).at[i].set(h[i])
        fd = (jax.grad(J_of)(p + e) - jax.grad(J_of)(p - e)) / (2 * h[i])
        np.testing.assert_allclose(H[i], fd, rtol=1e-5)
    np.testing.assert_allclose(H, H.T, rtol=1e-8)


def test_vmap_jit_and_bad_members_give_finite_gradients():
    wb = jt.random_workloads(jax.random.key(3), 8, 5, dtype=jnp.float64)
    wb = wb.replace(arrival_rate=wb.arrival_rate.at[2].set(1e6), b=wb.b.at[5, 0].set(jnp.nan))
    g = jax.jit(jax.grad(lambda w: jnp.nansum(jt.solve(w).objective)))(wb)
    leaves = jax.tree_util.tree_leaves(g)
    finite = [np.asarray(x)[[0, 1, 3, 4, 6, 7]] for x in leaves]
    assert all(np.all(np.isfinite(x)) for x in finite)
    assert float(g.alpha[2]) == 0.0  # the unstable member contributes nothing
    per_member = jax.vmap(jax.grad(lambda w: jt.solve(w).objective))(
        jax.tree.map(lambda x: x[:2], wb)
    )
    np.testing.assert_allclose(per_member.alpha, g.alpha[:2], rtol=1e-10)


def test_float32_gradients_finite(table1):
    w32 = table1.astype(jnp.float32)
    g = jax.grad(lambda w: jt.solve(w).objective)(w32)
    assert g.alpha.dtype == jnp.float32
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(g))
    assert float(g.alpha) == pytest.approx(0.39775, rel=1e-4)


@pytest.mark.slow  # jacfwd through 80 unrolled iterations
def test_implicit_equals_unrolled_fixed_point(table1):
    """Where the paper's fixed point (24) converges (Table I), differentiating through its
    iterations gives the same derivatives as the implicit ones."""
    from jaxopt_tokens._solver.aggregate import unclipped_budgets

    def unrolled(w):
        l = jnp.zeros_like(w.A)
        for _ in range(80):
            m1, m2 = jt.service_moments(l, w)
            d = 1 - w.arrival_rate * m1
            l = jnp.clip(
                unclipped_budgets(d, w.arrival_rate * m2 / (2 * d * d), w), 0, w.max_tokens
            )
        return l

    np.testing.assert_allclose(unrolled(table1), tokens_star(table1), atol=1e-8)
    implicit, through_loop = jax.jacfwd(tokens_star)(table1), jax.jacfwd(unrolled)(table1)
    for field in FIELDS:
        np.testing.assert_allclose(
            getattr(through_loop, field), getattr(implicit, field), rtol=1e-6, atol=1e-8
        )


def test_solve_latency_has_implicit_gradients(table1):
    model = jt.FIFO(service_cv=0.5)

    def J(alpha):
        return jt.solve_latency(table1.replace(alpha=alpha), model, rtol=1e-12).objective

    h = 1e-5
    fd = (J(table1.alpha + h) - J(table1.alpha - h)) / (2 * h)
    np.testing.assert_allclose(jax.grad(J)(table1.alpha), fd, rtol=1e-5)
