"""Test configuration: float64 available (tests choose float32 explicitly where they test it),
no persistent compilation cache shared between processes, and fixtures shared by the suite.

Writing every executable of both xdist workers into one persistent XLA cache crashed a worker
inside the cache's serialisation (`executable.serialize()`, an abort, not an exception), and
concurrent writers to one cache directory are not supported by JAX. So the workers compile in
memory only; the CLI subprocesses and notebook kernels a worker starts (fresh interpreters
that compile the same programs again) share a persistent cache private to that worker, so one
process at a time writes it. A per-test time limit (`timeout` in `pyproject.toml`) and
`--max-worker-restart=0` make a crashed or stuck worker fail the run at once instead of
hanging it.
"""

import collections
import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jaxopt_tokens as jt  # noqa: E402
from jaxopt_tokens.cli import main  # noqa: E402

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_made_cache = pytest.StashKey[str]()  # the directory this process made, to remove at the end


def pytest_configure(config):
    # this process compiles in memory only, whatever it inherited
    jax.config.update("jax_enable_compilation_cache", False)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    # the subprocesses this process starts (CLI commands, notebook kernels) share a cache that
    # no other process writes
    path = tempfile.mkdtemp(prefix=f"jaxopt-tokens-xla-{worker}-")
    config.stash[_made_cache] = path
    os.environ[_CACHE_ENV] = path
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"


def pytest_unconfigure(config):
    path = config.stash.get(_made_cache, None)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
        os.environ.pop(_CACHE_ENV, None)


@pytest.fixture
def table1():
    """The paper's Table I workload in float64."""
    return jt.default_workload().astype(np.float64)


@pytest.fixture
def traces():
    """How many times each function was traced to a jaxpr while the test runs, by name (JAX's
    own monitoring events): a compile-once check without a counter in the package."""
    counts: collections.Counter = collections.Counter()

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_trace_duration":
            counts[kwargs.get("fun_name")] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield counts
    jax.monitoring.unregister_event_duration_listener(listener)


TABLE1_TOKENS = np.array([0.0, 340.89, 0.0, 0.0, 346.24, 30.14])
TABLE1_J = 9.754203


# ---------------------------------------------------------- shared by several modules

TAU = (0.02, 0.0005)


POLICY = jnp.asarray([0.0, 300.0, 0.0, 0.0, 250.0, 30.0])


def table1_dict():
    """Table I as the dict a workload file holds."""
    return jt.workload_to_dict(jt.default_workload())


BAD_BYTES = b"\xff\xfe\x00\x81not utf-8"


FAST = ["--num-queries", "200", "--num-replications", "2"]

# CI draws the same hypothesis examples every run (derandomized: what passed on the
# developer's machine with CI=true passes there); a developer's runs explore new ones
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    _hypothesis_settings.load_profile("ci")
#: how many times more examples the fuzz tests draw: 1 in the suite, more in CI's long
#: fuzz step (`JT_FUZZ_SCALE=8`, `.ci/run`)
FUZZ_SCALE = max(int(os.environ.get("JT_FUZZ_SCALE", "1")), 1)
#: the first 300 requests of public traces (licences in tests/data/traces/NOTICE.md)
TRACES = Path(__file__).parent / "data" / "traces"
TRACE_EXCERPT = TRACES / "AzureLLMInferenceTrace_conv_excerpt.csv"
AZURE_CODE = TRACES / "AzureLLMInferenceTrace_code_excerpt.csv"
MOONCAKE = TRACES / "mooncake_conversation_excerpt.jsonl"


def scaled_table1(scale: float = 0.01) -> jt.Workload:
    """Table I in scaled time (float64): service `1/scale` times faster, rates `1/scale` times
    higher and alpha scaled with them, so the optimal budgets at rate r/scale are Table I's
    at rate r (the gateway tests' fake engine runs on this clock)."""
    with jax.enable_x64(True):
        w = jt.default_workload("float64")
        return w.replace(
            t0=w.t0 * scale,
            c=w.c * scale,
            alpha=w.alpha * scale,
            arrival_rate=w.arrival_rate / scale,
        )


def run_cli(argv):
    """`(exit code, stdout, stderr)` of one in-process CLI call."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:  # argparse usage errors
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def strict_loads(text):
    def refuse(name):
        raise ValueError(f"non-finite number {name} in JSON")

    return json.loads(text, parse_constant=refuse)


def assert_refused(argv, *words):
    rc, out, err = run_cli(argv)
    assert rc == 2, (argv, rc, out[-300:], err[-300:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


@pytest.fixture
def files(tmp_path):
    (tmp_path / "bad.bin").write_bytes(BAD_BYTES)
    (tmp_path / "keep.txt").write_text("keep me")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "other.txt").write_text("keep me too")
    return tmp_path


def table1_measurements(tmp_path, edit=None, name="m.csv"):
    """The shipped synthetic Table I measurements, optionally edited row by row."""
    from importlib import resources

    text = resources.files("jaxopt_tokens").joinpath("data", "synthetic_measurements_table1.csv")
    rows = [r for r in text.read_text().splitlines() if not r.startswith("#")]
    if edit:
        rows = [rows[0]] + [edit(r) for r in rows[1:]]
    path = tmp_path / name
    path.write_text("\n".join(rows) + "\n")
    return path
