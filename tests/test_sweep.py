"""Sweeps: same answers as solving point by point, no recompilation, metadata, devices, figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from conftest import (
    assert_refused,
)

import jaxopt_tokens as jt
from jaxopt_tokens.cli import main


def test_sweep_matches_pointwise_solves(table1):
    rates, alphas = np.linspace(0.02, 0.4, 5), np.geomspace(2, 80, 4)
    df = jt.sweeps.sweep(
        table1, arrival_rate=rates, alpha=alphas, b__GSM8K=[1e-3, 3.2e-3], quiet=True, chunk_size=16
    )
    assert len(df) == 40 and list(df.columns[:3]) == ["arrival_rate", "alpha", "b__GSM8K"]
    for _, row in df.sample(8, random_state=0).iterrows():
        w = table1.replace(
            arrival_rate=row.arrival_rate, alpha=row.alpha, b=table1.b.at[1].set(row.b__GSM8K)
        )
        sol = jt.solve(w)
        np.testing.assert_allclose(
            row[[f"l_{n}" for n in w.task_names]].to_numpy(float), sol.tokens, rtol=1e-10, atol=1e-8
        )
        assert row.objective == pytest.approx(float(sol.objective), rel=1e-12)
        assert row.mean_system_time == pytest.approx(
            float(jt.mean_system_time(sol.tokens, w)), rel=1e-12
        )
        np.testing.assert_array_equal(
            row[[f"l_int_{n}" for n in w.task_names]].to_numpy(float),
            jt.integer_budgets(sol.tokens, w),
        )
    assert set(df["status"]) == {"converged"}


def test_no_recompilation_between_chunks_and_failures_kept(table1, traces):
    # 8 chunks of 7 with a padded last one (a chunk size no other test compiles); arrival
    # rates past the zero-token limit fail
    df = jt.sweeps.sweep(table1, arrival_rate=np.linspace(0.05, 12.0, 50), chunk_size=7, quiet=True)
    assert traces["_solve_chunk"] == 1
    assert len(df) == 50
    unstable = df["arrival_rate"] >= 1 / float(jnp.sum(table1.share * table1.t0))
    assert (df.loc[unstable, "status"] == "unstable_input").all() and unstable.any()
    assert df.loc[unstable, "objective"].isna().all()
    assert (df.loc[~unstable, "status"] == "converged").all()


def test_write_and_metadata(table1, tmp_path):
    df = jt.sweeps.sweep(table1, alpha=[10.0, 30.0], quiet=True)
    out = tmp_path / "new" / "folder" / "s"  # folders that do not exist yet
    paths = jt.sweeps.write_sweep(df, out)
    assert sorted(p.name for p in paths) == ["s.csv", "s.meta.json", "s.parquet"]
    for p in paths:
        meta = jt.sweeps.read_sweep_metadata(p)
        assert meta["jaxopt_tokens_version"] == jt.__version__
        assert meta["workload"]["tasks"][1]["name"] == "GSM8K"
    back = pd.read_csv(out.with_suffix(".csv"))  # plain pandas: no comment line to skip
    assert list(back.columns) == list(df.columns)
    np.testing.assert_allclose(back["objective"], df["objective"])
    assert pd.read_parquet(out.with_suffix(".parquet"))["status"].tolist() == df["status"].tolist()


def test_bad_grid_names(table1):
    with pytest.raises(ValueError, match="not a sweepable field"):
        jt.sweeps.sweep(table1, gamma=[1.0])
    with pytest.raises(ValueError, match="no task named"):
        jt.sweeps.sweep(table1, b__MMLU=[1.0])


@pytest.mark.slow  # a subprocess with eight host devices
def test_eight_devices_match_one(tmp_path):
    script = textwrap.dedent("""
        import json, sys
        import jax
        jax.config.update("jax_enable_x64", True)
        import numpy as np
        import jaxopt_tokens as jt
        assert jax.device_count() == 8, jax.devices()
        w = jt.default_workload()
        df = jt.sweeps.sweep(
            w,
            arrival_rate=np.linspace(0.01, 0.5, 13),
            alpha=np.geomspace(1, 100, 7),
            chunk_size=32,
            quiet=True,
        )
        print(json.dumps(df["objective"].tolist()))
    """)
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    eight = np.asarray(json.loads(out.stdout.strip().splitlines()[-1]))
    one = jt.sweeps.sweep(
        jt.default_workload().astype(np.float64),
        arrival_rate=np.linspace(0.01, 0.5, 13),
        alpha=np.geomspace(1, 100, 7),
        quiet=True,
    )["objective"].to_numpy()
    np.testing.assert_allclose(eight, one, rtol=1e-12)


def test_cli_sweep_and_figures(tmp_path):

    assert (
        main(
            [
                "sweep",
                "--arrival-rate",
                "0.01:0.5:4",
                "--alpha",
                "1:100:3",
                "--out",
                str(tmp_path),
                "--quiet",
            ]
        )
        == 0
    )
    assert len(jt.sweeps.read_sweep(tmp_path)) == 12 and len(pd.read_parquet(tmp_path)) == 12


def test_progress_bar_does_not_change_results(table1):
    kw = dict(arrival_rate=np.linspace(0.05, 0.3, 6), alpha=[5.0, 50.0], chunk_size=4)
    quiet = jt.sweeps.sweep(table1, quiet=True, **kw)
    shown = jt.sweeps.sweep(table1, quiet=False, **kw)
    pd.testing.assert_frame_equal(quiet, shown)


def test_repeated_sweeps_reuse_the_compilation(table1, traces):
    kw = dict(alpha=np.geomspace(1, 100, 10), chunk_size=8, quiet=True)
    jt.sweeps.sweep(table1, **kw)
    before = traces["_solve_chunk"]
    jt.sweeps.sweep(
        table1.replace(arrival_rate=2 * table1.arrival_rate), **kw
    )  # same dtype and weak type
    assert traces["_solve_chunk"] == before


def test_sweep_empty_grid_is_an_input_error(table1):
    with pytest.raises(jt.InputError, match="alpha"):
        jt.sweeps.sweep(table1, alpha=[])


def test_sweep_per_task_grids_mark_invalid_members(table1):
    df = jt.sweeps.sweep(table1, share__GSM8K=[1 / 6, 0.5], A__GSM8K=[0.5, 0.95], quiet=True)
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
        jt.sweeps.sweep(table1, alpha=np.ones(100_000), arrival_rate=np.full(100_000, 0.1))


def test_a_sweep_without_pandas_is_refused_before_solving_naming_the_extra(table1, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pandas" else real(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match=r"jaxopt_tokens\[plots\]") as e:
        jt.sweeps.sweep(table1, alpha=[1.0, 2.0], quiet=True)
    assert e.value.name == "pandas"
