"""Workload validation, loaders and pytree behaviour."""

import jax
import jax.numpy as jnp
import numpy as np

import jaxopt_tokens as jt


def test_default_workload_is_table1():
    w = jt.default_workload()
    assert w.task_names == ("AIME", "GSM8K", "GPQA", "CRUXEval", "BBH", "ARC-Challenge")
    np.testing.assert_allclose(w.b, [1.59e-4, 3.20e-3, 4.41e-4, 5.63e-4, 1.75e-3, 1.66e-1])
    assert float(w.arrival_rate) == 0.1 and float(w.alpha) == 30 and float(w.max_tokens) == 32768


def test_default_dtype_follows_caller():
    assert jt.default_workload(jnp.float32).dtype == jnp.float32
    assert jt.default_workload(jnp.float64).dtype == jnp.float64


def test_workload_is_a_vmappable_pytree():
    w = jt.random_workloads(jax.random.key(1), 7, 4, dtype=jnp.float64)
    assert w.batch_shape == (7,)
    out = jax.vmap(lambda m: m.alpha * jnp.sum(m.share))(w)
    np.testing.assert_allclose(out, w.alpha, rtol=1e-12)
    leaves = jax.tree_util.tree_leaves(w)
    assert len(leaves) == 9  # names are static
