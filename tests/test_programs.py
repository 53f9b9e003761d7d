"""Programs kept ahead of time (`keep_programs_in`, `internal.call_program`): the same answer
as the jitted function, an artifact written once and loaded after, rebuilt when corrupt,
inlined under a caller's trace, and the command line's programs among them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_tokens as jt
from jaxopt_tokens.internal import call_program, kept_programs_dir

TWO_TASKS = dict(
    A=[0.5, 0.4], b=[0.01, 0.02], D=[0.1, 0.2], t0=[1.0, 1.5], c=[0.01, 0.02],
    arrival_rate=0.1, alpha=3.0, max_tokens=1000.0,
)  # fmt: skip


@pytest.fixture
def kept(tmp_path):
    jt.keep_programs_in(tmp_path / "programs")
    yield tmp_path / "programs"
    jt.keep_programs_in(None)


def _figures(w: jt.Workload, tokens, scale: float):
    return {"J": scale * jt.objective(tokens, w), "T": [jt.mean_system_time(tokens, w)]}


def _tokens(w):
    return jnp.linspace(0.0, 300.0, w.num_tasks, dtype=w.dtype)


def test_without_a_directory_nothing_is_written(tmp_path):
    assert kept_programs_dir() is None
    w = jt.default_workload()
    out = call_program("figures", _figures, w, _tokens(w), 2.0)
    assert float(out["J"]) == pytest.approx(2.0 * float(jt.objective(_tokens(w), w)), rel=1e-6)


@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
def test_an_artifact_is_written_once_then_loaded_with_the_same_answer(kept, x64):
    with jax.enable_x64(x64):
        w = jt.default_workload().astype("float64" if x64 else "float32")
        direct = jax.jit(_figures, static_argnums=2)(w, _tokens(w), 2.0)
        first = call_program("figures", _figures, w, _tokens(w), 2.0)
        files = sorted(kept.glob("figures-*.jaxexport"))
        assert len(files) == 1
        stamp = files[0].read_bytes()
        again = call_program("figures", _figures, w, _tokens(w), 2.0)
        assert sorted(kept.glob("*.jaxexport")) == files and files[0].read_bytes() == stamp
    for out in (first, again):
        assert out["J"].dtype == direct["J"].dtype
        np.testing.assert_array_equal(np.asarray(out["J"]), np.asarray(direct["J"]))
        np.testing.assert_array_equal(np.asarray(out["T"][0]), np.asarray(direct["T"][0]))


def test_static_settings_shapes_and_dtypes_name_different_artifacts(kept):
    with jax.enable_x64(True):
        w = jt.default_workload().astype("float32")
        call_program("figures", _figures, w, _tokens(w), 2.0)
        out = call_program("figures", _figures, w, _tokens(w), 3.0)  # another static value
        want = 3.0 * float(jt.objective(_tokens(w), w))
        assert float(out["J"]) == pytest.approx(want, rel=1e-6)
        w64 = w.astype("float64")
        call_program("figures", _figures, w64, _tokens(w64), 2.0)
        small = jt.make_workload(**TWO_TASKS).astype("float32")  # another shape
        call_program("figures", _figures, small, _tokens(small), 2.0)
    assert len(list(kept.glob("figures-*.jaxexport"))) == 4


def test_a_corrupt_artifact_is_rebuilt(kept):
    w = jt.default_workload()
    want = call_program("figures", _figures, w, _tokens(w), 2.0)
    (path,) = kept.glob("figures-*.jaxexport")
    path.write_bytes(b"not a program")
    got = call_program("figures", _figures, w, _tokens(w), 2.0)
    np.testing.assert_array_equal(np.asarray(got["J"]), np.asarray(want["J"]))
    assert path.read_bytes() != b"not a program"


def test_under_a_callers_trace_the_function_is_inlined_and_differentiable(kept):
    w = jt.default_workload()

    def loss(tokens):
        return call_program("figures", _figures, w, tokens, 2.0)["J"]

    g = jax.grad(loss)(_tokens(w))
    np.testing.assert_allclose(
        np.asarray(g), np.asarray(2.0 * jax.grad(jt.objective)(_tokens(w), w)), rtol=1e-5
    )
    assert not list(kept.glob("*.jaxexport")), "a traced call wrote an artifact"


def test_typed_keys_are_not_exported(kept):
    def draw(key, n: int):
        return jax.random.uniform(key, (n,))

    key = jax.random.key(3)
    np.testing.assert_array_equal(
        np.asarray(call_program("draw", draw, key, 4)), np.asarray(draw(key, 4))
    )
    assert not list(kept.glob("draw-*"))


def test_the_directory_keeps_at_most_max_artifacts(kept, monkeypatch):
    from jaxopt_tokens import _programs

    monkeypatch.setattr(_programs, "MAX_ARTIFACTS", 2)
    w = jt.default_workload()
    for scale in (1.0, 2.0, 3.0, 4.0):
        call_program("figures", _figures, w, _tokens(w), scale)
    assert len(list(kept.glob("*.jaxexport"))) == 2
    assert not list(kept.glob(".*.tmp")), "a temporary file was left behind"


def test_the_commands_programs_answer_as_the_library_does(kept):
    """`solve`'s one program (solution, certificate and figures) against `jt.solve` and the
    report built from it, and the simulator's kept program against the jitted one."""
    from jaxopt_tokens.cli._report import allocation_report, solved_report

    with jax.enable_x64(True):
        w = jt.default_workload().astype("float64")
        assert solved_report(w, "default") == allocation_report(w, jt.solve(w), "default")
        assert list(kept.glob("solve-*.jaxexport"))
        a = jt.simulate(w, _tokens(w), num_queries=500, num_replications=2)
        jt.keep_programs_in(None)
        b = jt.simulate(w, _tokens(w), num_queries=500, num_replications=2)
    np.testing.assert_array_equal(np.asarray(a.system_time), np.asarray(b.system_time))
    np.testing.assert_array_equal(
        np.asarray(a.predicted_objective), np.asarray(b.predicted_objective)
    )
    assert list(kept.glob("simulate-*.jaxexport"))


def test_python_numbers_stay_weakly_typed_and_lists_are_not():
    w = jt.default_workload()
    assert w.alpha.weak_type and w.arrival_rate.weak_type
    assert not w.A.weak_type
    with pytest.raises(jt.InputError, match="field 'A'"):
        jt.Workload(**{**TWO_TASKS, "A": ["x"] * 2, "share": [0.5, 0.5]})
