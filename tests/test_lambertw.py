"""Lambert W and Wright omega against scipy, mpmath (40 digits), finite differences and TFP."""

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
import scipy.special as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxopt_tokens.theory import lambertw, wright_omega

mpmath.mp.dps = 40


def ulp_error(a, ref):
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return np.abs(a - ref) / np.spacing(np.maximum(np.abs(ref), np.finfo(np.float64).tiny))


X_GRID = np.concatenate(
    [-np.logspace(-3, np.log10(700), 400), np.linspace(-3, 3, 301), np.logspace(-3, 10, 400)]
)
Z_GRID = np.concatenate([np.logspace(-300, 300, 500), np.linspace(-0.36, 5, 400)])


def test_wright_omega_float64_ulp():
    ours = wright_omega(jnp.asarray(X_GRID))
    exact = np.array([float(mpmath.lambertw(mpmath.exp(mpmath.mpf(v))).real) for v in X_GRID])
    assert ulp_error(ours, exact).max() <= 2
    # scipy's wrightomega is itself off by up to ~24 ulp on this grid
    assert ulp_error(ours, sp.wrightomega(X_GRID).real).max() <= 40


def test_lambertw_float64_ulp():
    ours = lambertw(jnp.asarray(Z_GRID))
    exact = np.array([float(mpmath.lambertw(mpmath.mpf(v)).real) for v in Z_GRID])
    assert ulp_error(ours, exact).max() <= 8
    assert ulp_error(ours, sp.lambertw(Z_GRID).real).max() <= 8


def test_lambertw_near_branch_point():
    z = -np.exp(-1) * (1 - np.logspace(-16, -1, 200))
    ours = np.asarray(lambertw(jnp.asarray(z)))
    ref = sp.lambertw(z).real
    # W is ill-conditioned here (W' -> inf): the limit is the rounding of e*z + 1, ~sqrt(eps)
    assert np.max(np.abs(ours - ref)) <= 5e-8
    assert float(lambertw(-np.exp(-1))) == pytest.approx(-1.0, abs=1e-7)
    assert np.isnan(float(lambertw(-0.5)))


def test_special_values():
    assert float(lambertw(0.0)) == 0.0
    assert float(lambertw(np.e)) == pytest.approx(1.0, rel=4e-16)
    assert float(wright_omega(1.0)) == 1.0
    assert float(wright_omega(0.0)) == pytest.approx(0.5671432904097838, rel=2e-16)
    assert float(wright_omega(np.inf)) == np.inf and float(wright_omega(-np.inf)) == 0.0
    assert float(lambertw(np.inf)) == np.inf
    assert np.isnan(float(wright_omega(np.nan))) and np.isnan(float(lambertw(np.nan)))
    big = float(wright_omega(1e10))
    assert big == pytest.approx(1e10 - np.log(1e10), rel=1e-15)
    assert float(lambertw(1e300)) == pytest.approx(
        float(mpmath.lambertw(mpmath.mpf("1e300")).real), rel=4e-16
    )


@pytest.mark.parametrize("value", [5e-324, 1e-310, -1e-310, 1e-300])
def test_subnormal_and_tiny_inputs_are_finite(value):
    w = float(lambertw(value))
    assert np.isfinite(w) and abs(w) <= abs(value) * 1.0000001
    assert np.isfinite(float(jax.grad(lambertw)(value)))
    assert float(wright_omega(-745.0)) >= 0 and np.isfinite(float(jax.grad(wright_omega)(-800.0)))


def test_derivatives():
    assert float(jax.grad(lambertw)(0.0)) == 1.0  # exactly
    # jitted once each (run eagerly, every primitive compiles on its own for every shape)
    w_of, dw_of = jax.jit(lambertw), jax.jit(jax.vmap(jax.grad(lambertw)))
    om_of, dom_of = jax.jit(wright_omega), jax.jit(jax.vmap(jax.grad(wright_omega)))
    z = jnp.asarray(np.concatenate([np.linspace(-0.35, 4, 50), np.logspace(1, 100, 20)]))
    w, dw = w_of(z), dw_of(z)
    np.testing.assert_allclose(dw, w / (z * (1 + w)), rtol=1e-12)
    h = 1e-6 * np.maximum(1, np.abs(np.asarray(z)))
    fd = (np.asarray(w_of(z + h)) - np.asarray(w_of(z - h))) / (2 * h)
    np.testing.assert_allclose(dw, fd, rtol=1e-7)
    x = jnp.asarray(np.linspace(-50, 50, 101))
    om, dom = om_of(x), dom_of(x)
    np.testing.assert_allclose(dom, om / (1 + om), rtol=1e-13)
    fd = (np.asarray(om_of(x + 1e-6)) - np.asarray(om_of(x - 1e-6))) / 2e-6
    np.testing.assert_allclose(dom, fd, rtol=1e-7, atol=1e-12)
    assert float(jax.grad(wright_omega)(1e10)) == pytest.approx(1.0, rel=1e-9)
    g2 = jax.grad(jax.grad(wright_omega))(jnp.asarray([-30.0, 0.0, 30.0]).sum())
    assert np.isfinite(float(g2))


def test_float32():
    x = jnp.asarray(np.linspace(-80, 1e6, 4001), jnp.float32)
    w = wright_omega(x)
    assert w.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(w)))
    ref = sp.wrightomega(np.asarray(x, np.float64)).real
    ok = ref > 1e-30
    # two float32 ulp (2^-22 relative) of the exact omega of the float32 input
    assert np.max(np.abs(np.asarray(w, np.float64)[ok] - ref[ok]) / ref[ok]) <= 2.0**-22
    z = jnp.asarray(
        np.concatenate([np.linspace(-0.36, 10, 500), np.logspace(1, 38, 300)]), jnp.float32
    )
    wz = lambertw(z)
    assert wz.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(wz)))
    ref = sp.lambertw(np.asarray(z, np.float64)).real
    ok = np.abs(ref) > 1e-30
    assert np.max(np.abs(np.asarray(wz, np.float64)[ok] - ref[ok]) / np.abs(ref[ok])) <= 2e-6
    assert float(jax.grad(lambertw)(jnp.float32(0))) == 1.0
    assert jax.grad(wright_omega)(jnp.float32(3.0)).dtype == jnp.float32


@settings(max_examples=60, deadline=None)
@given(st.floats(min_value=-0.3678, max_value=1e200, allow_nan=False))
def test_defining_equation(z):
    w = float(lambertw(z))
    assert w >= -1
    assert w * np.exp(w) == pytest.approx(z, rel=1e-13, abs=1e-15)


@settings(max_examples=60, deadline=None)
@given(st.floats(min_value=-700, max_value=1e12, allow_nan=False))
def test_omega_defining_equation(x):
    w = float(wright_omega(x))
    assert w > 0
    assert w + np.log(w) == pytest.approx(x, rel=1e-14, abs=1e-13)


def test_jit_vmap_shapes():
    z = jnp.linspace(0.0, 3.0, 12).reshape(3, 4)
    np.testing.assert_allclose(
        jax.jit(lambertw)(z), lambertw(z), rtol=1e-15
    )  # fusion may differ by 1 ulp
    np.testing.assert_allclose(jax.vmap(lambertw)(z), lambertw(z))
    assert lambertw(jnp.int32(1)).dtype == jnp.result_type(float)


def test_against_tfp():
    tfp = pytest.importorskip(
        "tensorflow_probability.substrates.jax", reason="tfp-nightly not installed"
    )
    z = jnp.asarray(np.concatenate([np.linspace(-0.36, 5, 200), np.logspace(1, 200, 100)]))
    np.testing.assert_allclose(lambertw(z), tfp.math.lambertw(z), rtol=1e-12)
