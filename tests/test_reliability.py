"""Trust at the edges: every line of the reliability trial (bad or extreme input a new user
tried) has a regression test here, and property-based tests draw arbitrary input of each class.

The contract: the CLI exits 0 or 2 with one line on stderr (1: `solve`/`tune` printed a result
that did not converge), never a traceback; machine-readable
output is strict JSON; no existing file changes without --force; the API raises `InputError`.
"""

from __future__ import annotations

import contextlib
import io
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxopt_tokens as jt
from jaxopt_tokens.cli import main

BAD_BYTES = b"\xff\xfe\x00\x81not utf-8"
FAST = ["--num-queries", "200", "--num-replications", "2"]


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


def _table1_measurements(tmp_path, edit=None, name="m.csv"):
    """The shipped synthetic Table I measurements, optionally edited row by row."""
    from importlib import resources

    text = resources.files("jaxopt_tokens").joinpath("data", "synthetic_measurements_table1.csv")
    rows = [r for r in text.read_text().splitlines() if not r.startswith("#")]
    if edit:
        rows = [rows[0]] + [edit(r) for r in rows[1:]]
    path = tmp_path / name
    path.write_text("\n".join(rows) + "\n")
    return path


# ------------------------------------------------------------------ the trial, line by line


def test_load_non_utf8_workload_api_and_cli(files):
    with pytest.raises(jt.InputError, match="UTF-8"):
        jt.load_workload(files / "bad.bin")
    assert_refused(["solve", "--workload", files / "bad.bin"], "UTF-8")


def test_load_integer_too_large_for_a_float(tmp_path):
    text = jt.dump_workload(jt.default_workload()).replace(
        "max_tokens = 32768.0", "max_tokens = 1" + "0" * 400
    )
    (tmp_path / "w.toml").write_text(text)
    assert_refused(["solve", "--workload", tmp_path / "w.toml"], "max_tokens", "too large")


def test_default_solver_every_t0_zero(table1):
    sol = jt.solve(table1.replace(t0=jnp.zeros(6)))
    assert bool(sol.converged)
    assert float(sol.objective) == pytest.approx(9.91732, abs=1e-5)


@pytest.mark.parametrize("dtype,rate", [(jnp.float64, 1e-300), (jnp.float32, 1e-30)])
def test_default_solver_tiny_arrival_rate(table1, dtype, rate):
    sol = jt.solve(table1.astype(dtype).replace(arrival_rate=jnp.asarray(rate, dtype)))
    assert bool(sol.converged) and np.all(np.isfinite(np.asarray(sol.tokens)))


def test_solve_json_is_strict_when_the_solve_fails():
    argv = ["solve", "--arrival-rate", "7", "--solver", "fixed-point", "--format", "json"]
    rc, out, _ = run_cli(argv)
    report = strict_loads(out)
    # the report is printed, and the exit code (1) tells a script the solve did not converge
    assert rc == 1 and report["status"] != "converged"


def test_empty_workload_path_is_refused():
    assert_refused(["solve", "--workload", ""], "empty")


def test_batch_members_outside_the_model_are_not_converged(table1):
    bad_ad = table1.replace(A=table1.A.at[1].set(0.9))  # A + D > 1
    bad_share = table1.replace(share=table1.share * 2)
    batch = jax.tree.map(lambda *x: jnp.stack(x), table1, bad_ad, bad_share)
    status = np.asarray(jt.solve(batch).status)
    assert list(status) == [jt.Status.CONVERGED, jt.Status.INVALID_INPUT, jt.Status.INVALID_INPUT]


def test_share_of_length_one_is_refused(table1):
    with pytest.raises(jt.InputError, match="share"):
        table1.replace(share=[1.0])


def test_tune_alpha_statuses(table1):
    assert jt.tune_alpha(table1, float("nan")).status == jt.TuneStatus.INVALID_INPUT
    assert jt.tune_alpha(table1, -1.0).status == jt.TuneStatus.INVALID_INPUT
    bad = table1.replace(share=table1.share * 2)
    assert jt.tune_alpha(bad, 2.0).status == jt.TuneStatus.SOLVE_FAILED


def test_tune_alpha_float32_tolerance(table1):
    r = jt.tune_alpha(table1.astype(jnp.float32), 2.0)
    assert r.status == jt.TuneStatus.CONVERGED and float(r.mean_system_time) == pytest.approx(
        2.0, rel=1e-4
    )


def test_tune_unknown_field_is_an_input_error(table1):
    with pytest.raises(jt.InputError, match="names"):
        jt.tune(table1, lambda s, w: s.objective, ["names"], steps=1)


def test_sweep_empty_grid_is_an_input_error(table1):
    with pytest.raises(jt.InputError, match="alpha"):
        jt.sweep(table1, alpha=[])


def test_sweep_per_task_grids_mark_invalid_members(table1):
    df = jt.sweep(table1, share__GSM8K=[1 / 6, 0.5], A__GSM8K=[0.5, 0.95], quiet=True)
    status = dict(zip(zip(df["share__GSM8K"], df["A__GSM8K"]), df["status"]))
    assert status[(1 / 6, 0.5)] == "converged"
    assert status[(0.5, 0.5)] == "invalid_input"  # shares no longer sum to 1
    assert status[(1 / 6, 0.95)] == "invalid_input"  # A + D > 1


def test_sweep_cli_huge_grid_and_conflicting_flags(tmp_path):
    assert_refused(
        ["sweep", "--arrival-rate", "0.1:0.2:99999999999", "--out", tmp_path / "s"], "NUM"
    )
    assert_refused(
        ["sweep", "--alpha", "1,2", "--grid", "alpha=3,4,5", "--out", tmp_path / "s"], "alpha"
    )
    assert not (tmp_path / "s").exists()


def test_sweep_memory_estimate(table1):
    with pytest.raises(jt.InputError, match="GiB"):
        jt.sweep(table1, alpha=np.ones(100_000), arrival_rate=np.full(100_000, 0.1))


def test_simulate_api_types(table1):
    tokens = np.zeros(6)
    for kw, field in [({"num_queries": 100.5}, "num_queries"), ({"key": 5}, "key")]:
        with pytest.raises(jt.InputError, match=field):
            jt.simulate(table1, tokens, **{"num_replications": 2, **kw})
    with pytest.raises(jt.InputError, match="tokens"):
        jt.simulate(table1, ["a"] * 6, 100, 2)


def test_simulate_cli_strict_json_and_limits(files):
    rc, out, _ = run_cli(
        ["simulate", "--num-queries", "200", "--num-replications", "1", "--format", "json"]
    )
    assert rc == 0
    strict_loads(out)
    assert_refused(["simulate", "--seed", "99999999999999999999"], "--seed")
    assert_refused(["simulate", "--num-queries", "1000000000"], "GiB")
    assert_refused(["simulate", *FAST, "--tokens", files / "bad.bin"], "UTF-8")


def test_clear_inputs(tmp_path):
    with pytest.raises(jt.InputError, match="budget"):
        jt.clear.uniform_allocation(jnp.ones(3), jnp.ones(4))
    with pytest.raises(jt.InputError, match="min_scale"):
        jt.clear.allocate(jnp.ones(3), 10.0, min_scale=-1.0)
    assert np.all(np.isnan(np.asarray(jt.clear.uniform_allocation(jnp.ones(3), -5.0))))
    tau = jnp.array([np.nan, 2.0, 3.0])
    for baseline in jt.clear.BASELINES.values():
        assert np.all(np.isnan(np.asarray(baseline(tau, 10.0))))
    with pytest.raises(jt.InputError, match="thresholds"):
        jt.clear.heuristic_allocation(jnp.array([]), 10.0)
    with pytest.raises(jt.InputError, match="budget"):
        jt.clear.allocate(jnp.ones((2, 3)), jnp.ones(4))


def test_budget_and_evaluate_cli(files):
    assert_refused(["budget", "--budget", "100", "--thresholds", files / "bad.bin"], "UTF-8")
    assert_refused(["evaluate-budget", "--seed", "-1"], "--seed")
    assert_refused(["evaluate-budget", "--pool", files / "bad.bin"], "UTF-8")


def test_fit_cli_inputs_and_outputs(files):
    m = _table1_measurements(files)
    assert_refused(["fit", files / "bad.bin"], "UTF-8")
    assert_refused(["fit", m, "--shares", files / "bad.bin"], "UTF-8")
    huge = files / "shares.csv"
    huge.write_text(
        "task,count\n" + "".join(f"{t},1e308\n" for t in jt.default_workload().task_names)
    )
    rc, out, err = run_cli(["fit", m, "--shares", huge, "--format", "json"])
    assert rc == 0, err  # equal huge counts are equal shares, not "shares sum to 0"
    # JSON is strict even where a standard error is infinite
    rc, out, _ = run_cli(["fit", m, "--format", "json"])
    assert rc == 0
    strict_loads(out)
    # constant latency: a FitWarning, not a silent 14,000-token budget
    const = _table1_measurements(
        files,
        lambda r: ",".join(r.split(",")[:4] + ["0.5"]) if r.startswith("GSM8K") else r,
        "const.csv",
    )
    rc, out, _ = run_cli(["fit", const, "--format", "json"])
    assert rc == 0 and any("does not grow" in w for w in strict_loads(out)["warnings"])
    # decreasing latency: the error names the latency line, not the arrival rate alone
    dec = _table1_measurements(
        files,
        lambda r: (
            ",".join(r.split(",")[:4] + [str(100 - 0.01 * float(r.split(",")[1]))])
            if r.startswith("GSM8K")
            else r
        ),
        "dec.csv",
    )
    assert_refused(["fit", dec], "GSM8K", "t0")
    # full precision in the written workload
    rc, _, _ = run_cli(["fit", m, "-o", files / "w.toml"])
    assert rc == 0 and "arrival_rate = 0.1\n" in (files / "w.toml").read_text()
    # nothing replaced without --force, nothing half-written when the plot fails
    assert_refused(["fit", m, "-o", files / "keep.txt"], "--force")
    assert_refused(["fit", m, "-o", files / "new.toml", "--plot", files / "fig.xyz"], "xyz")
    assert not (files / "new.toml").exists()
    assert_refused(["fit", m, "-o", files / "keep.txt" / "w.toml"], "not a directory")
    assert_refused(["fit", m, "-o", files / "full"], "directory")
    assert (files / "keep.txt").read_text() == "keep me"


def test_export_cli(files, tmp_path):
    assert_refused(["export", "-o", files / "keep.txt"], "--force")
    assert (files / "keep.txt").read_text() == "keep me"
    rc, _, _ = run_cli(["export", "-o", files / "keep.txt", "--force"])
    assert rc == 0 and strict_loads((files / "keep.txt").read_text())["engine"] == "vllm"
    (tmp_path / "bool.json").write_text(json.dumps([True, 1, 2, 3, 4, 5]))
    assert_refused(["export", "--tokens", tmp_path / "bool.json"], "number")
    (tmp_path / "solve.json").write_text(
        json.dumps({"status": "max_iterations", "tokens": [1] * 6})
    )
    assert_refused(["export", "--tokens", tmp_path / "solve.json"], "did not converge")
    (tmp_path / "huge.json").write_text(json.dumps([30000] * 6))
    assert_refused(["export", "--tokens", tmp_path / "huge.json"], "utilization")
    assert_refused(["export", "--min-budget", "1000000"], "utilization")
    with pytest.warns(jt.UnstableQueueWarning, match="utilization"):
        policy = jt.export_policy(jt.default_workload(), [30000] * 6, engine="json")
    assert policy["source"]["utilization"] >= 1
    assert_refused(["export", "--tokens", files / "bad.bin"], "UTF-8")


def test_figures_and_frontier_cli(files, tmp_path):
    assert_refused(["figures", "--out", files / "full"], "not empty")
    assert_refused(["figures", "--out", files / "keep.txt"], "not a directory")
    assert_refused(["frontier", "--points", "0", "--out", tmp_path / "f"], "--points")
    assert_refused(["frontier", "--points", "-5", "--out", tmp_path / "f"], "--points")
    assert_refused(["frontier", "--out", files / "keep.txt" / "sub"], "not a directory")
    assert (files / "full" / "other.txt").read_text() == "keep me too"


def test_figures_refuse_a_non_converged_optimum(table1):
    from jaxopt_tokens._sweeps.figures import converged_optimum

    with pytest.raises(jt.InputError, match="not found"):
        converged_optimum(table1.replace(arrival_rate=jnp.nan))


def test_sweep_cli_outputs(files, tmp_path):
    out = tmp_path / "s"
    rc, _, _ = run_cli(["sweep", "--alpha", "1,2", "--out", out, "--quiet"])
    assert rc == 0 and (out / "_manifest.json").exists() and (out / "part-00000.parquet").exists()
    assert_refused(["sweep", "--alpha", "1,2", "--out", out, "--quiet"], "--resume")
    assert_refused(["sweep", "--alpha", "1,2,3", "--out", out, "--quiet"], "--force")
    (out / "part-00007.parquet").write_text("stale")  # a stale part of an older sweep
    rc, _, _ = run_cli(["sweep", "--alpha", "1,2,3", "--out", out, "--quiet", "--force"])
    assert rc == 0 and not (out / "part-00007.parquet").exists()
    assert len(jt.read_sweep(out)) == 3
    assert_refused(["sweep", "--alpha", "1", "--out", files / "keep.txt"], "not a directory")


def test_api_shapes_and_types(table1):
    with pytest.raises(jt.InputError, match="'c'"):
        table1.replace(c=table1.c[:2])
    with pytest.raises(jt.InputError, match="no tasks"):
        jt.make_workload(A=[], b=[], D=[], t0=[], c=[], arrival_rate=0.1, alpha=1.0, max_tokens=10)
    with pytest.raises(jt.InputError, match="complex"):
        table1.replace(A=table1.A + 0j)


# ------------------------------------------------------------- property-based, by class

COMMANDS = {
    "solve": lambda p: ["solve", "--workload", p, "--format", "json"],
    "export": lambda p: ["export", "--tokens", p],
    "simulate": lambda p: ["simulate", *FAST, "--tokens", p, "--format", "json"],
    "fit": lambda p: ["fit", p, "--format", "json"],
    "budget": lambda p: ["budget", "--budget", "1000", "--thresholds", p, "--format", "json"],
    "evaluate-budget": lambda p: ["evaluate-budget", "--pool", p, "--format", "json"],
}


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(command=st.sampled_from(sorted(COMMANDS)), data=st.binary(max_size=200))
def test_arbitrary_file_bytes_never_give_a_traceback(tmp_path, command, data):
    path = tmp_path / "input.dat"
    path.write_bytes(data)
    rc, out, err = run_cli(COMMANDS[command](path))
    assert rc in (0, 2), (command, data, err)
    assert "Traceback" not in err
    if rc == 2:
        assert len(err.strip().splitlines()) == 1, err
    elif "--format" in COMMANDS[command](path):
        strict_loads(out)


TEXT_FILES = st.one_of(
    st.text(max_size=120),
    st.builds(
        lambda rows: (
            "task,budget,n_correct,n_total,latency\n" + "\n".join(",".join(r) for r in rows)
        ),
        st.lists(
            st.lists(
                st.sampled_from(["GSM8K", "0", "10", "-1", "1e308", "nan", "x", ""]),
                min_size=5,
                max_size=5,
            ),
            max_size=6,
        ),
    ),
    st.builds(
        lambda v: json.dumps(v),
        st.lists(st.one_of(st.floats(), st.integers(), st.booleans()), max_size=7),
    ),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(command=st.sampled_from(sorted(COMMANDS)), text=TEXT_FILES)
def test_arbitrary_text_files_never_give_a_traceback(tmp_path, command, text):
    path = tmp_path / "input.txt"
    path.write_text(text)
    rc, out, err = run_cli(COMMANDS[command](path))
    assert rc in (0, 2) and "Traceback" not in err, (command, text, err)
    if rc == 2:
        assert len(err.strip().splitlines()) == 1, err


WRITERS = {
    "export": lambda p: ["export", "-o", p],
    "fit": lambda p: ["fit", "MEASUREMENTS", "-o", p],
    "sweep": lambda p: ["sweep", "--alpha", "1,2", "--quiet", "--out", p],
}


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    command=st.sampled_from(sorted(WRITERS)),
    target=st.sampled_from(["keep.txt", "full", "keep.txt/sub/x", "full/other.txt", "", "new"]),
)
def test_no_existing_file_changes_without_force(files, command, target):
    argv = [
        str(_table1_measurements(files)) if a == "MEASUREMENTS" else a
        for a in WRITERS[command](files / target if target else "")
    ]
    before = {p: p.read_bytes() for p in files.rglob("*") if p.is_file() and p.name != "m.csv"}
    rc, _, err = run_cli(argv)
    assert rc in (0, 2) and "Traceback" not in err, err
    for p, content in before.items():
        assert p.read_bytes() == content, (command, target, p)
    leftovers = [p for p in files.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]
    assert not leftovers, leftovers


@settings(max_examples=25, deadline=None)
@given(
    flags=st.lists(
        st.sampled_from(
            [
                "--seed",
                "-1",
                "0",
                "1e99",
                "--points",
                "--num-queries",
                "--num-replications",
                "--alpha",
                "--arrival-rate",
                "--max-tokens",
                "nan",
                "inf",
                "-inf",
                "",
                "1:2:0",
                "--format",
                "json",
                "--level",
                "2",
                "--service-cv",
                "-0.5",
                "--discipline",
                "ps",
            ]
        ),
        max_size=6,
    ),
    command=st.sampled_from(["solve", "tune", "simulate", "export", "evaluate-budget"]),
)
def test_arbitrary_flags_never_give_a_traceback(flags, command):
    extra = FAST if command == "simulate" else []
    extra = extra + (["--target-latency", "2"] if command == "tune" else [])
    rc, out, err = run_cli([command, *extra, *flags])
    assert rc in (0, 1, 2), (flags, err)
    assert "Traceback" not in err
    if rc == 2:
        assert len(err.strip().splitlines()) == 1, err
    elif "json" in flags and out.strip():
        strict_loads(out)


def test_strict_json_helper_turns_non_finite_into_null():
    from jaxopt_tokens.cli._output import strict_json

    text = strict_json({"a": float("nan"), "b": [math.inf, 1.0], "c": np.array([np.nan, 2.0])})
    assert strict_loads(text) == {"a": None, "b": [None, 1.0], "c": [None, 2.0]}
