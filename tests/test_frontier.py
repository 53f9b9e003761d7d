"""Frontiers, simulated tails and figures (`frontier_by_alpha`, `with_simulated_tail`,
`all_figures`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from conftest import (
    assert_refused,
    run_cli,
)

import jaxopt_tokens as jt
from jaxopt_tokens.cli import main


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


def test_frontier_dominates_uniform(table1):
    df = jt.sweeps.frontier_by_alpha(table1, points=200)
    _, et_u, acc_u = jt.sweeps.uniform_curve(table1)
    ok = df["status"] == "converged"
    et, acc = df.loc[ok, "mean_system_time"].to_numpy(), df.loc[ok, "accuracy"].to_numpy()
    order = np.argsort(et)
    # at every uniform point's latency, the optimal frontier is at least as accurate
    inside = (et_u >= et.min()) & (et_u <= et.max())
    assert np.all(np.interp(et_u[inside], et[order], acc[order]) >= acc_u[inside] - 1e-9)


@pytest.mark.slow  # draws every figure (the CLI's figures test keeps one in the fast suite)
def test_figures_written_and_shapes(table1, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    paths = jt.sweeps.all_figures(table1, tmp_path)
    names = {p.name for p in paths}
    for stem in ("fig3_uniform_vs_optimal", "fig4_gsm8k_sensitivity", "heatmaps", "frontier"):
        assert {f"{stem}.png", f"{stem}.svg"} <= names
    assert all(p.stat().st_size > 1000 for p in paths)
    # Fig. 4 is unimodal with its peak at the GSM8K optimum; Fig. 3: uniform 500 is worst
    sol = jt.solve(table1)
    grid = jnp.linspace(0.0, 1000.0, 1001)
    J = jax.vmap(lambda g: jt.objective(sol.tokens.at[1].set(g), table1))(grid)
    peak = int(jnp.argmax(J))
    assert abs(float(grid[peak]) - float(sol.tokens[1])) <= 1.0
    d = np.diff(np.asarray(J))
    assert np.all(d[: peak - 1] > 0) and np.all(d[peak + 1 :] < 0)
    uniform = [float(jt.objective(jnp.full(6, float(u)), table1)) for u in (0, 100, 500)]
    assert min(uniform) == uniform[2] and max(uniform) < float(sol.objective)


def test_frontier_with_simulated_tail(table1):
    df = jt.sweeps.with_simulated_tail(
        jt.sweeps.frontier_by_alpha(table1, points=6, alpha_range=(1.0, 300.0)),
        table1,
        num_queries=4000,
        num_replications=4,
    )
    assert np.all(np.isfinite(df["sim_p95_system_time"]))
    # the simulated mean agrees with the model's and the tail sits above the mean
    np.testing.assert_allclose(df["sim_mean_system_time"], df["mean_system_time"], rtol=0.1)
    assert np.all(df["sim_p95_system_time"] > df["sim_mean_system_time"])
    assert np.all(np.diff(df["sim_p95_system_time"]) >= -0.05 * df["sim_p95_system_time"][1:])
    assert np.all(
        (df["sim_p95_lower"] <= df["sim_p95_system_time"])
        & (df["sim_p95_system_time"] <= df["sim_p95_upper"])
    )


def test_cli_frontier_with_simulated_tail(tmp_path, capsys):

    assert (
        main(["frontier", "--out", str(tmp_path), "--points", "4", "--simulate-tail", "2000"]) == 0
    )
    df = pd.read_csv(tmp_path / "frontier_optimal.csv", comment="#")
    assert {"sim_mean_system_time", "sim_p95_system_time", "sim_p99_system_time"} <= set(df.columns)
    assert np.all(df["sim_p99_system_time"] >= df["sim_p95_system_time"])
    assert main(["frontier", "--out", str(tmp_path), "--points", "4", "--simulate-tail", "1"]) == 2


def test_frontier_from_a_sweep_uses_its_own_workload_and_refuses_a_2d_sweep(tmp_path):
    """S5: `frontier --from` drew a 2-D sweep as one zig-zag line against a uniform curve at
    another arrival rate, and ignored --points."""
    grid2 = ["--alpha", "1:100:12", "--arrival-rate", "0.01:0.2:3", "--quiet"]
    assert run_cli(["sweep", *grid2, "--chunk-size", "12", "--out", tmp_path / "two"])[0] == 0
    argv = ["frontier", "--from", tmp_path / "two", "--out", tmp_path / "f2"]
    assert_refused(argv, "alpha alone")
    one = ["--alpha", "1:100:12", "--arrival-rate", "0.3", "--quiet", "--chunk-size", "12"]
    assert run_cli(["sweep", *one, "--out", tmp_path / "one"])[0] == 0
    for flag in (["--arrival-rate", "0.3"], ["--points", "5"]):
        argv = ["frontier", "--from", tmp_path / "one", "--out", tmp_path / "f", *flag]
        assert_refused(argv, flag[0])
    assert run_cli(["frontier", "--from", tmp_path / "one", "--out", tmp_path / "f"])[0] == 0
    optimal = pd.read_csv(tmp_path / "f" / "frontier_optimal.csv", comment="#")
    uniform = pd.read_csv(tmp_path / "f" / "frontier_uniform.csv")
    assert len(optimal) == 12 and set(optimal["arrival_rate"]) == {0.3}
    w = jt.default_workload().replace(arrival_rate=0.3)
    _, et, _ = jt.sweeps.uniform_curve(w)
    np.testing.assert_allclose(uniform["mean_system_time"], et, rtol=1e-9)  # at the sweep's rate
