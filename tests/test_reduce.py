"""`task_reduce`: several sums and maxima over the task axis in one pass, equal to `jnp.sum` /
`jnp.max` (the default solver's step is built on it)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxopt_tokens._reduce import task_reduce

_values = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@settings(max_examples=40, deadline=None)
@given(
    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=7),
    dtype=st.sampled_from([np.float32, np.float64]),
    data=st.data(),
)
def test_task_reduce_equals_separate_reductions(shape, dtype, data):
    a, b, c = (data.draw(hnp.arrays(dtype, shape, elements=_values), label=name) for name in "abc")
    a, b, c = (jnp.asarray(x) for x in (a, b, c))  # x64 is on in the tests (conftest)
    (s1, s2), (m1, m2) = jax.jit(lambda a, b, c: task_reduce((a, b * c), (c, -a)))(a, b, c)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    scale = jnp.sum(jnp.abs(a), -1) + jnp.sum(jnp.abs(b * c), -1) + 1
    np.testing.assert_array_less(jnp.abs(s1 - jnp.sum(a, -1)), rtol * scale)
    np.testing.assert_array_less(jnp.abs(s2 - jnp.sum(b * c, -1)), rtol * scale)
    np.testing.assert_array_equal(m1, jnp.max(c, -1))
    np.testing.assert_array_equal(m2, jnp.max(-a, -1))
    assert s1.dtype == a.dtype and s1.shape == shape[:-1]


def test_task_reduce_under_vmap_and_with_non_finite_values():
    x = jnp.array([[1.0, jnp.inf, 2.0], [jnp.nan, 0.0, 1.0], [-jnp.inf, -1.0, -2.0]])
    (s,), (m,) = jax.vmap(lambda r: task_reduce((r,), (r,)))(x)
    np.testing.assert_array_equal(s, jnp.sum(x, -1))
    np.testing.assert_array_equal(m, jnp.max(x, -1))
