"""The command line: JSON output, exit codes and one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import TABLE1_J, TABLE1_TOKENS

from jaxopt_tokens.cli import main


def test_solve_json(capsys):
    assert main(["solve", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in (
        "tasks",
        "tokens",
        "tokens_int",
        "objective",
        "accuracy",
        "mean_wait",
        "mean_system_time",
        "utilization",
        "status",
        "residual",
        "iterations",
        "method",
    ):
        assert key in out
    np.testing.assert_allclose(out["tokens"], TABLE1_TOKENS, atol=1e-2)
    assert abs(out["objective"] - TABLE1_J) < 1e-6
    assert out["tokens_int"] == [0, 341, 0, 0, 346, 30]
    assert out["status"] == "converged"


@pytest.mark.parametrize("method", ["fixed-point", "pga"])
def test_solve_methods(capsys, method):
    assert main(["solve", "--format", "json", "--solver", method]) == 0
    out = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(out["tokens"], TABLE1_TOKENS, atol=1e-2)


def test_solve_table(capsys):
    assert main(["solve", "--arrival-rate", "0.2", "--alpha", "50"]) == 0
    out = capsys.readouterr().out
    assert "GSM8K" in out and "certificate" in out and "converged" in out


def test_bad_input_exit_2_one_line(tmp_path):
    bad = tmp_path / "w.toml"
    bad.write_text(
        "arrival_rate = 0.1\nalpha = 1\nmax_tokens = 10\n"
        "[[tasks]]\nname='x'\nA=0.5\nb=-1\nD=0\nt0=0.1\nc=0.01\n"
    )
    for args in (
        ["solve", "--workload", str(bad)],
        ["solve", "--arrival-rate", "-1"],
        ["solve", "--workload", "nope.toml"],
    ):
        r = subprocess.run(
            [sys.executable, "-m", "jaxopt_tokens.cli", *args], capture_output=True, text=True
        )
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run(
        [sys.executable, "-m", "jaxopt_tokens.cli", "solve", "--workload", str(bad)],
        capture_output=True,
        text=True,
    )
    assert "'b'" in r.stderr and "task 'x'" in r.stderr and "line 4" in r.stderr


def test_missing_optional_package_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    import builtins

    from jaxopt_tokens.cli import main

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    csv = tmp_path / "m.csv"
    csv.write_text(
        "task,budget,n_correct,n_total,latency\n"
        + "".join(
            f"x,{l},{c},100,{0.1 + 0.01 * l}\n"
            for l, c in [(0, 10), (100, 40), (400, 60), (1600, 70)]
        )
    )
    assert (
        main(["fit", str(csv), "-o", str(tmp_path / "w.toml"), "--plot", str(tmp_path / "f.png")])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "jaxopt_tokens[plots]" in err and "\n" not in err
