"""The certificate: the KKT residual, its rounding floor, the provable box and the paper's
constants; "converged" always means certified.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_tokens as jt
from jaxopt_tokens._kkt import residual_floor


def test_table1_constants(table1):
    box = jt.theory.provable_box(table1)
    np.testing.assert_allclose(box, [0, 498.07, 0, 0, 618.96, 30.74], atol=1e-2)
    assert float(jt.theory.contraction_constant(table1)) == np.inf  # rho_max = 41 on [0, l_max]
    assert float(jt.theory.gradient_lipschitz(table1)) == np.inf
    assert 1 < float(jt.theory.contraction_constant(table1, box)) < np.inf  # exists, but > 1
    assert 0 < float(jt.theory.gradient_lipschitz(table1, box)) < np.inf
    stats = jt.solve(table1, solver="fixed-point").stats
    assert not bool(stats["contraction_guaranteed"])


@pytest.mark.parametrize("solver", ["default", "fixed-point"])
def test_converged_always_means_a_finite_certified_residual(solver):
    """A member reported converged has a finite residual within the tolerance (or within the
    rounding floor of its dtype): never an infinite residual from leaving the stable region."""

    wb = jt.random_workloads(
        jax.random.key(0),
        200,
        6,
        dtype=jnp.float64,
        load=(0.5, 0.98),
        alpha=(10, 1e4),
        corners=0.3,
    )
    sol = jt.solve(wb, solver)
    ok = np.asarray(sol.converged)
    res = np.asarray(sol.residual)[ok]
    floor = np.asarray(residual_floor(sol.tokens, wb))[ok]
    assert np.all(np.isfinite(res)) and np.all(res <= np.maximum(1e-9, floor))
