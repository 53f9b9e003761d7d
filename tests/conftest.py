"""Test configuration: float64 available (tests choose float32 explicitly where they test it)."""

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jaxopt_tokens as jt  # noqa: E402


@pytest.fixture
def table1():
    """The paper's Table I workload in float64."""
    return jt.default_workload().astype(np.float64)


TABLE1_TOKENS = np.array([0.0, 340.89, 0.0, 0.0, 346.24, 30.14])
TABLE1_J = 9.754203
