"""Sweeps streamed to a Parquet dataset: same table, resumable after a kill, several processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import (
    assert_refused,
    run_cli,
)

import jaxopt_tokens as jt
from jaxopt_tokens._sweeps.dataset import SweepDirectory

GRIDS = dict(arrival_rate=np.linspace(0.02, 0.4, 7), alpha=np.geomspace(2, 80, 9))
CLI_GRID = ["--arrival-rate", "0.02:0.4:30", "--alpha", "1:100:40", "--quiet"]


def _same_rows(streamed: pd.DataFrame, in_memory: pd.DataFrame) -> None:
    streamed = streamed.drop(columns="point")
    assert list(streamed.columns) == list(in_memory.columns)
    pd.testing.assert_frame_equal(
        streamed.astype({"status": str}), in_memory.astype({"status": str}), check_exact=True
    )


def test_streamed_sweep_is_the_in_memory_table(table1, tmp_path):
    df = jt.sweeps.sweep(table1, quiet=True, chunk_size=10, **GRIDS)
    run = jt.sweeps.sweep(table1, quiet=True, chunk_size=10, out=tmp_path / "s", **GRIDS)
    assert run.complete and run.parts == 7 and sorted(run.computed) == list(range(7))
    back = jt.sweeps.read_sweep(tmp_path / "s")
    _same_rows(back, df)
    manifest = back.attrs["sweep"]
    assert manifest["points"] == 63 and manifest["grids"]["alpha"]["values"] == list(GRIDS["alpha"])
    assert manifest["versions"]["jax"] and manifest["dtype"] == "float64"
    # only the columns asked for (and the point index) are read
    some = jt.sweeps.read_sweep(tmp_path / "s", columns=["alpha", "objective"])
    assert list(some.columns) == ["point", "alpha", "objective"]
    assert len(jt.sweeps.read_sweep(tmp_path / "s", lazy=True).to_table()) == 63
    # other readers see one table
    assert len(pd.read_parquet(tmp_path / "s")) == 63


def test_same_sweep_again_needs_resume_or_force_and_another_sweep_needs_force(table1, tmp_path):
    out = tmp_path / "s"
    jt.sweeps.sweep(table1, quiet=True, chunk_size=10, out=out, **GRIDS)
    with pytest.raises(jt.InputError, match="already holds this sweep.*--resume"):
        jt.sweeps.sweep(table1, quiet=True, chunk_size=10, out=out, **GRIDS)
    again = jt.sweeps.sweep(table1, quiet=True, chunk_size=10, out=out, resume=True, **GRIDS)
    assert again.computed == () and again.skipped == 7
    other = dict(GRIDS, alpha=GRIDS["alpha"][:3])
    with pytest.raises(jt.InputError, match="different sweep.*--force"):
        jt.sweeps.sweep(table1, quiet=True, chunk_size=10, out=out, resume=True, **other)
    with pytest.raises(jt.InputError, match="in parts of 10 points"):  # another chunking: named
        jt.sweeps.sweep(table1, quiet=True, chunk_size=9, out=out, resume=True, **GRIDS)
    jt.sweeps.sweep(table1, quiet=True, chunk_size=10, out=out, force=True, **other)
    assert len(jt.sweeps.read_sweep(out)) == 21 and len(SweepDirectory(out).parts()) == 3
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(jt.InputError, match="not a sweep"):
        jt.sweeps.sweep(table1, quiet=True, out=tmp_path / "mine", **GRIDS)
    with pytest.raises(jt.InputError, match="is a file"):
        jt.sweeps.sweep(table1, quiet=True, out=tmp_path / "mine" / "notes.txt", **GRIDS)


def test_a_failure_keeps_finished_parts_and_resume_completes_them(table1, tmp_path, monkeypatch):
    out = tmp_path / "s"
    original = SweepDirectory.write_part
    calls = {"n": 0}

    def failing(self, index, columns, fp):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(28, "No space left on device")
        return original(self, index, columns, fp)

    monkeypatch.setattr(SweepDirectory, "write_part", failing)
    with pytest.raises(OSError) as info:
        jt.sweeps.sweep(table1, quiet=True, chunk_size=10, out=out, **GRIDS)
    assert any("resume" in note and "3 of its 7 parts" in note for note in info.value.__notes__)
    assert SweepDirectory(out).parts() == {0, 1, 2}
    with pytest.raises(jt.InputError, match="incomplete: 4 of 7 parts missing.*--resume"):
        jt.sweeps.read_sweep(out)
    monkeypatch.setattr(SweepDirectory, "write_part", original)
    run = jt.sweeps.sweep(table1, quiet=True, chunk_size=10, out=out, resume=True, **GRIDS)
    assert sorted(run.computed) == [3, 4, 5, 6] and run.skipped == 3
    _same_rows(
        jt.sweeps.read_sweep(out), jt.sweeps.sweep(table1, quiet=True, chunk_size=10, **GRIDS)
    )


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "jaxopt_tokens.cli.main", "sweep", *args]


def _env() -> dict:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}


def test_a_killed_sweep_resumes_to_exactly_the_uninterrupted_table(tmp_path):
    """SIGKILL at an arbitrary moment (after a few parts), plus a temporary file such as a kill
    in the middle of a write leaves; the resumed table equals an uninterrupted run."""
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    args = [*CLI_GRID, "--chunk-size", "8"]  # 150 parts
    proc = subprocess.Popen(
        _cli(*args, "--out", str(killed)),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while len(SweepDirectory(killed).parts()) < 3 and proc.poll() is None:
        assert time.monotonic() < deadline, "the sweep wrote no parts"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = SweepDirectory(killed).parts()
    assert 3 <= len(before) < 150, len(before)  # interrupted, not finished
    (killed / ".part-00149.parquet.0123456789ab.tmp").write_bytes(b"half a part")
    done = subprocess.run(
        _cli(*args, "--out", str(killed), "--resume"), env=_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert f"{len(before)} already done" in done.stderr  # a message, not data
    assert not list(killed.glob(".part-*"))
    full = subprocess.run(
        _cli(*args, "--out", str(whole)), env=_env(), capture_output=True, text=True
    )
    assert full.returncode == 0, full.stderr
    a, b = jt.sweeps.read_sweep(killed), jt.sweeps.read_sweep(whole)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert len(a) == 1200 and a["point"].tolist() == list(range(1200))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed(out: Path, n: int, args: list[str]) -> list[subprocess.CompletedProcess]:
    for attempt in range(3):  # the free port can be taken between bind and use: retry
        port = _free_port()
        procs = [
            subprocess.Popen(
                _cli(
                    *args,
                    "--out",
                    str(out),
                    "--coordinator",
                    f"127.0.0.1:{port}",
                    "--num-processes",
                    str(n),
                    "--process-id",
                    str(i),
                ),
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(n)
        ]
        results = []
        try:
            for p in procs:
                stdout, stderr = p.communicate(timeout=240)
                results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        if not any("Failed to add port" in r.stderr for r in results):
            return results
    return results


DISTRIBUTED_ARGS = [*CLI_GRID, "--chunk-size", "100"]  # 12 parts dealt over the processes


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "sweep"
    single = subprocess.run(
        _cli(*DISTRIBUTED_ARGS, "--out", str(out)), env=_env(), capture_output=True, text=True
    )
    assert single.returncode == 0, single.stderr
    return jt.sweeps.read_sweep(out)


@pytest.mark.parametrize("n", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_jax_distributed_processes_write_the_one_process_table(tmp_path, n, one_process):
    """n local CPU processes under jax.distributed (4 is marked slow: ~1 min on 2 cores)."""
    args = DISTRIBUTED_ARGS
    results = _distributed(tmp_path / "many", n, args)
    report = "\n".join(
        f"[{i}] rc={r.returncode}\n{r.stderr[-2000:]}" for i, r in enumerate(results)
    )
    assert all(r.returncode == 0 for r in results), report
    manifest = json.loads((tmp_path / "many" / "_manifest.json").read_text())
    assert manifest["processes"] == n
    pd.testing.assert_frame_equal(
        jt.sweeps.read_sweep(tmp_path / "many"), one_process, check_exact=True
    )


@pytest.mark.slow  # two sweeps and two figures
def test_frontier_and_heatmaps_read_a_sweep_directory(table1, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from jaxopt_tokens._sweeps.figures import figure_heatmaps

    out = tmp_path / "s"
    jt.sweeps.sweep(table1, quiet=True, out=out, **GRIDS)
    f = jt.sweeps.frontier_by_alpha(out)
    assert {"alpha", "accuracy", "mean_system_time", "status"} <= set(f.columns)
    assert "mean_wait" not in f.columns  # only what a frontier needs is read
    one_rate = f[f["arrival_rate"] == GRIDS["arrival_rate"][0]]
    assert np.all(np.diff(one_rate["alpha"]) > 0)
    solved = jt.sweeps.sweep(
        table1.replace(arrival_rate=GRIDS["arrival_rate"][0]), alpha=GRIDS["alpha"], quiet=True
    )
    np.testing.assert_array_equal(one_rate["accuracy"], solved["accuracy"])
    fig = figure_heatmaps(table1, sweep_dir=out)
    assert len(fig.axes) >= 7
    alpha_only = tmp_path / "a"
    jt.sweeps.sweep(table1, quiet=True, out=alpha_only, alpha=GRIDS["alpha"])
    with pytest.raises(jt.InputError, match="no 'arrival_rate' grid"):
        jt.sweeps.frontier_by_arrival_rate(alpha_only)
    with pytest.raises(jt.InputError, match="exactly arrival_rate and alpha"):
        figure_heatmaps(table1, sweep_dir=alpha_only)


def test_sweep_cli_outputs(files, tmp_path):
    out = tmp_path / "s"
    rc, _, _ = run_cli(["sweep", "--alpha", "1,2", "--out", out, "--quiet"])
    assert rc == 0 and (out / "_manifest.json").exists() and (out / "part-00000.parquet").exists()
    assert_refused(["sweep", "--alpha", "1,2", "--out", out, "--quiet"], "--resume")
    assert_refused(["sweep", "--alpha", "1,2,3", "--out", out, "--quiet"], "--force")
    (out / "part-00007.parquet").write_text("stale")  # a stale part of an older sweep
    rc, _, _ = run_cli(["sweep", "--alpha", "1,2,3", "--out", out, "--quiet", "--force"])
    assert rc == 0 and not (out / "part-00007.parquet").exists()
    assert len(jt.sweeps.read_sweep(out)) == 3
    assert_refused(["sweep", "--alpha", "1", "--out", files / "keep.txt"], "not a directory")


# ------------------------------------------------ regressions of the second reliability trial


@pytest.fixture
def finished(table1, tmp_path):
    """A finished 63-point sweep in 7 parts, and another sweep of the same shape."""
    ref = tmp_path / "ref"
    jt.sweeps.sweep(table1, quiet=True, chunk_size=10, out=ref, **GRIDS)
    other = tmp_path / "other"
    jt.sweeps.sweep(table1.replace(alpha=7.0), quiet=True, chunk_size=10, out=other, **GRIDS)
    return ref, other


def _resume(table1, out):
    return jt.sweeps.sweep(table1, quiet=True, chunk_size=10, out=out, resume=True, **GRIDS)


@pytest.mark.parametrize(
    "damage",
    [
        lambda part, other: part.write_bytes(part.read_bytes()[: part.stat().st_size // 2]),
        lambda part, other: part.write_text("ROWS!\n"),
        lambda part, other: part.write_bytes(b""),
        lambda part, other: part.write_bytes((other / part.name).read_bytes()),  # L3: foreign
        lambda part, other: part.write_bytes((other / "part-00004.parquet").read_bytes()),
    ],
    ids=["truncated", "text", "empty", "another-sweeps", "another-part"],
)
def test_a_damaged_or_foreign_part_is_refused_by_readers_and_recomputed_by_resume(
    table1, finished, damage
):
    """L2, L3: a truncated part counted as done (resume wrote nothing, then a traceback); a
    foreign part was read silently."""
    ref, other = finished
    before = jt.sweeps.read_sweep(ref)
    part = ref / "part-00003.parquet"
    damage(part, other)
    with pytest.raises(jt.InputError, match="part-00003.parquet: not part 3 of this sweep"):
        jt.sweeps.read_sweep(ref)
    run = _resume(table1, ref)
    assert run.computed == (3,)
    pd.testing.assert_frame_equal(jt.sweeps.read_sweep(ref), before)


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda m: m.pop("fingerprint"), "fingerprint"),  # T3
        (lambda m: m.pop("grids"), "grids"),
        (lambda m: m.pop("workload"), "workload"),
        (lambda m: m.update(parts="7"), "parts"),
        (lambda m: m.update(parts=-1), "parts"),
        (lambda m: m.update(parts=10**9), "parts"),  # H3: was an out-of-memory kill
        (lambda m: m.update(parts=3), "parts"),  # L3: 27 of 63 rows returned as the sweep
        (lambda m: m.update(points=7), "points"),
    ],
)
def test_a_manifest_that_does_not_hold_together_is_refused_in_one_line(
    table1, finished, edit, words
):
    ref, _ = finished
    manifest = json.loads((ref / "_manifest.json").read_text())
    edit(manifest)
    (ref / "_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(jt.InputError, match=f"not a valid sweep manifest.*{words}"):
        jt.sweeps.read_sweep(ref)
    with pytest.raises(jt.InputError, match="not a valid sweep manifest"):
        _resume(table1, ref)
    assert_refused(["frontier", "--from", ref, "--out", ref.parent / "f"], "manifest")


def test_resume_removes_the_packages_own_temporaries(table1, finished):
    """L4: a leftover temporary manifest blocked --resume."""
    ref, _ = finished
    (ref / "part-00005.parquet").unlink()
    (ref / "._manifest.json.0123456789ab.tmp").write_text("{}")
    assert _resume(table1, ref).computed == (5,)
    assert not list(ref.glob("*.tmp"))


def test_a_different_chunk_size_is_named(table1, finished):
    """U9: 'holds a different sweep' for the same grid in other parts."""
    ref, _ = finished
    with pytest.raises(jt.InputError, match="parts of 10 points.*--chunk-size 10"):
        jt.sweeps.sweep(table1, quiet=True, chunk_size=20, out=ref, resume=True, **GRIDS)


def test_a_second_writer_is_refused_naming_the_first(table1, tmp_path):
    """L1: two writers in one directory both succeeded and mixed their parts."""
    out = tmp_path / "d"
    with SweepDirectory(out).lock():  # another process writing here
        with pytest.raises(jt.InputError, match=rf"another process \(pid {os.getpid()}\)"):
            jt.sweeps.sweep(table1, quiet=True, chunk_size=10, out=out, force=True, **GRIDS)
    jt.sweeps.sweep(table1, quiet=True, chunk_size=10, out=out, force=True, **GRIDS)  # free again
    assert len(jt.sweeps.read_sweep(out)) == 63


def test_an_empty_out_path_is_refused():
    """U7: '' was taken for the current directory."""
    assert_refused(["sweep", "--alpha", "1:100:40", "--out", ""], "empty")


def _three_tasks(table1):
    return jt.make_workload(
        A=np.asarray(table1.A)[:3],
        b=np.asarray(table1.b)[:3],
        D=np.asarray(table1.D)[:3],
        t0=np.asarray(table1.t0)[:3],
        c=np.asarray(table1.c)[:3],
        share=np.full(3, 1 / 3),
        arrival_rate=0.1,
        alpha=30.0,
        max_tokens=32768.0,
        names=("P", "Q", "R"),
    )


@pytest.mark.slow  # subprocesses or a fit: the slow step runs it
def test_figures_from_a_sweep_refuse_what_cannot_be_drawn_before_drawing(table1, tmp_path):
    from conftest import assert_refused

    from jaxopt_tokens._sweeps.figures import check_heatmap_sweep

    three = _three_tasks(table1)
    sweep, flat = tmp_path / "three", tmp_path / "flat"
    jt.sweeps.sweep(three, quiet=True, out=sweep, arrival_rate=[0.05, 0.1], alpha=[10.0, 30.0])
    jt.sweeps.sweep(three, quiet=True, out=flat, alpha=[10.0, 30.0])
    check_heatmap_sweep(sweep, three)
    with pytest.raises(jt.InputError, match="exactly arrival_rate and alpha"):
        jt.sweeps.all_figures(three, tmp_path / "figs", sweep_dir=flat)  # refused before drawing
    with pytest.raises(jt.InputError, match="tasks"):
        jt.sweeps.all_figures(table1, tmp_path / "figs", sweep_dir=sweep)
    assert not (tmp_path / "figs").exists()
    assert_refused(["figures", "--from", flat, "--out", tmp_path / "a"], "exactly arrival_rate")
    assert_refused(["figures", "--from", sweep, "--alpha", "3", "--out", tmp_path / "b"], "--alpha")
    assert_refused(["figures", "--from", tmp_path / "none", "--out", tmp_path / "c"], "not a")


@pytest.mark.slow  # draws every figure
def test_figures_from_a_three_task_sweep_draw_its_own_workload(table1, tmp_path):
    """`figures --from` takes the sweep's workload: its tasks are the heatmap's columns."""
    from conftest import run_cli

    sweep = tmp_path / "three"
    jt.sweeps.sweep(
        _three_tasks(table1), quiet=True, out=sweep, arrival_rate=[0.05, 0.1], alpha=[10, 30]
    )
    rc, _, err = run_cli(["figures", "--from", sweep, "--out", tmp_path / "figs"])
    assert rc == 0, err
    assert (tmp_path / "figs" / "heatmaps.png").is_file()
    assert (tmp_path / "figs" / "fig4_budget_sensitivity.png").is_file()


def test_the_datasets_format_name_never_changes():
    """Every dataset on disk carries the format name in its manifest and a reader refuses any
    other: renaming it (a namespace move once did) would orphan every sweep already written."""
    from jaxopt_tokens._sweeps.dataset import FORMAT

    assert FORMAT == "jaxopt_tokens.sweep/1"
