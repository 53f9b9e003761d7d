"""Test configuration: float64 available (tests choose float32 explicitly where they test it),
and one XLA compilation cache for the whole run.

Most of the suite's time is compilation, and much of it is the same program compiled again:
by the other xdist worker, by each CLI subprocess and notebook kernel (a fresh interpreter),
and by functions that build a new `jax.jit` closure per call. JAX's persistent cache keys an
executable by its program, so every repeat after the first is a cache read. The directory is
made once by the controlling process, inherited through the environment by workers,
subprocesses and kernels, and removed when the run ends; a caller's own
`JAX_COMPILATION_CACHE_DIR` is used as is. What is compiled, and so what is tested, does not
change.
"""

import os
import shutil
import tempfile

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jaxopt_tokens as jt  # noqa: E402

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_made_cache = pytest.StashKey[str]()  # the directory this process made, to remove at the end


def pytest_configure(config):
    if _CACHE_ENV not in os.environ:  # the controller (or a run without xdist) makes it
        path = tempfile.mkdtemp(prefix="jaxopt-tokens-xla-cache-")
        os.environ[_CACHE_ENV] = path
        config.stash[_made_cache] = path
    # every program, however quick to compile: the suite compiles thousands of small ones
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs",
        float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
    )


def pytest_unconfigure(config):
    path = config.stash.get(_made_cache, None)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
        os.environ.pop(_CACHE_ENV, None)


@pytest.fixture
def table1():
    """The paper's Table I workload in float64."""
    return jt.default_workload().astype(np.float64)


TABLE1_TOKENS = np.array([0.0, 340.89, 0.0, 0.0, 346.24, 30.14])
TABLE1_J = 9.754203
