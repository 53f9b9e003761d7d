"""The objective (eqs. 3-7) against the paper's closed forms (10), (11), (12), (15)."""

import jax
import jax.numpy as jnp
import numpy as np
from conftest import TABLE1_J, TABLE1_TOKENS
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxopt_tokens as jt


def test_table1_reference_values(table1):
    assert abs(float(jt.objective(jnp.asarray(TABLE1_TOKENS), table1)) - TABLE1_J) < 5e-6
    for u, ref in [(0, 5.8316), (100, 8.2393), (500, 1.7939)]:
        assert abs(float(jt.objective(jnp.full(6, float(u)), table1)) - ref) < 1e-4


def test_unstable_is_infinite_and_gradient_finite(table1):
    big = jnp.full(6, 5000.0)
    assert float(jt.utilization(big, table1)) > 1
    assert float(jt.mean_wait(big, table1)) == np.inf
    assert float(jt.objective(big, table1)) == -np.inf
    g = jax.grad(jt.objective)(big, table1)
    assert np.all(np.isfinite(g))


def _closed_forms(l, w):
    lam, pi, c = w.arrival_rate, w.share, w.c
    t = w.t0 + c * l
    m1, m2 = jnp.sum(pi * t), jnp.sum(pi * t * t)
    D = 1 - lam * m1
    dW = lam * pi * c * (t / D + lam * m2 / (2 * D**2))  # (10)
    diag = lam * pi * c**2 / D * (2 * lam * pi * t / D + lam**2 * pi * m2 / D**2 + 1)
    off = lam**2 * jnp.outer(pi * c, pi * c) / D**2 * (t[:, None] + t[None, :] + lam * m2 / D)
    H = jnp.where(jnp.eye(len(l), dtype=bool), diag[:, None] * jnp.eye(len(l)), off)  # (11)
    dp = w.A * w.b * jnp.exp(-w.b * l)  # (15)
    return dW, H, dp, (m1, m2, D, t)


_grad_wait = jax.jit(jax.grad(jt.mean_wait))
_hess_wait = jax.jit(jax.hessian(jt.mean_wait))
_grad_J = jax.jit(jax.grad(jt.objective))
_hess_J = jax.jit(jax.hessian(jt.objective))


def _random_stable_point(seed, n):
    w = jt.random_workloads(jax.random.key(seed), 1, n, dtype=jnp.float64, load=(0.01, 0.9))
    w = jax.tree.map(lambda x: x[0], w)
    rng = np.random.default_rng(seed)
    # a random point with utilization below 0.95
    l = rng.uniform(0, 1, n)
    m1_0 = float(jnp.sum(w.share * w.t0))
    budget = (0.95 / float(w.arrival_rate) - m1_0) * rng.uniform(0.05, 1)
    l = l / np.sum(np.asarray(w.share * w.c) * l) * budget
    return w, jnp.asarray(l)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.sampled_from([1, 2, 5, 12]))
def test_autodiff_matches_closed_forms(seed, n):
    w, l = _random_stable_point(seed, n)
    assert float(jt.utilization(l, w)) < 0.96
    dW, H, dp, (m1, m2, D, t) = _closed_forms(l, w)
    np.testing.assert_allclose(_grad_wait(l, w), dW, rtol=1e-9)
    np.testing.assert_allclose(_hess_wait(l, w), H, rtol=1e-8, atol=1e-300)
    grad_J = _grad_J(l, w)
    np.testing.assert_allclose(
        grad_J, w.alpha * w.share * dp - dW - w.share * w.c, rtol=1e-8, atol=1e-14
    )
    np.testing.assert_allclose(grad_J, jt.objective_gradient(l, w), rtol=1e-8, atol=1e-14)
    # (12): z^T H z = lam^3 m2 B^2 / D^3 + 2 lam^2 A B / D^2 + lam sum pi c^2 z^2 / D
    z = jnp.asarray(np.random.default_rng(seed).normal(size=n))
    Az, Bz = jnp.sum(w.share * w.c * z * t), jnp.sum(w.share * w.c * z)
    lam = w.arrival_rate
    q = (
        lam**3 * m2 * Bz**2 / D**3
        + 2 * lam**2 * Az * Bz / D**2
        + lam / D * jnp.sum(w.share * w.c**2 * z**2)
    )
    np.testing.assert_allclose(z @ _hess_wait(l, w) @ z, q, rtol=1e-8)
    assert float(q) > 0


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.sampled_from([1, 2, 5, 12]))
def test_hessian_negative_definite(seed, n):
    w, l = _random_stable_point(seed, n)
    eig = np.linalg.eigvalsh(np.asarray(_hess_J(l, w)))
    assert np.all(eig < 0)


def test_float32_objective_finite_and_close(table1):
    w32 = table1.astype(jnp.float32)
    v32 = jt.objective(jnp.asarray(TABLE1_TOKENS, jnp.float32), w32)
    assert v32.dtype == jnp.float32
    assert abs(float(v32) - TABLE1_J) < 1e-5
