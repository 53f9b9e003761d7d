"""The command line as a whole: the contract every command keeps, tried with arbitrary input.

The contract: a command exits 0 or 2 with one line on stderr (1: `solve`/`tune` printed a
result that did not converge), never a traceback; machine-readable output is strict JSON; no
existing file changes without `--force`. Each command's own behaviour is tested beside its
API (`test_solvers.py` for `solve`, `test_planning.py` for `plan`, ...); the property-based
tests here guard the outputs; `test_fuzz.py` draws arbitrary bytes, text and flags for
every command.
"""

from __future__ import annotations

import errno
import math
import os
import stat
import subprocess
import sys

import numpy as np
from conftest import (
    run_cli,
    strict_loads,
    table1_measurements,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxopt_tokens as jt
from jaxopt_tokens.cli import main


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


def test_solve_json_is_strict_when_the_solve_fails():
    argv = ["solve", "--arrival-rate", "7", "--solver", "fixed-point", "--format", "json"]
    rc, out, _ = run_cli(argv)
    report = strict_loads(out)
    # the report is printed, and the exit code (1) tells a script the solve did not converge
    assert rc == 1 and report["status"] != "converged"


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
        str(table1_measurements(files)) if a == "MEASUREMENTS" else a
        for a in WRITERS[command](files / target if target else "")
    ]
    before = {p: p.read_bytes() for p in files.rglob("*") if p.is_file() and p.name != "m.csv"}
    rc, _, err = run_cli(argv)
    assert rc in (0, 2) and "Traceback" not in err, err
    for p, content in before.items():
        assert p.read_bytes() == content, (command, target, p)
    leftovers = [p for p in files.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]
    assert not leftovers, leftovers


def test_strict_json_helper_turns_non_finite_into_null():
    from jaxopt_tokens.cli._output import strict_json

    text = strict_json({"a": float("nan"), "b": [math.inf, 1.0], "c": np.array([np.nan, 2.0])})
    assert strict_loads(text) == {"a": None, "b": [None, 1.0], "c": [None, 2.0]}


def test_outputs_get_the_umask_mode_and_a_replaced_file_keeps_its_own(tmp_path):
    """S7: outputs were written 0600 (the staging file's mode), even over a 0644 file."""
    old = os.umask(0o022)
    try:
        new = tmp_path / "policy.json"
        assert run_cli(["export", "-o", new])[0] == 0
        assert stat.S_IMODE(new.stat().st_mode) == 0o644
        kept = tmp_path / "kept.json"
        kept.write_text("{}")
        kept.chmod(0o640)
        assert run_cli(["export", "-o", kept, "--force"])[0] == 0
        assert stat.S_IMODE(kept.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_a_failed_write_names_the_output(tmp_path, monkeypatch):
    """U3: a full disk under a writer that does not say which file: the line names it."""
    from jaxopt_tokens.cli import _output

    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_output.Outputs, "commit", full)
    target = tmp_path / "policy.json"
    rc, out, err = run_cli(["export", "-o", target])
    assert rc == 2 and str(target) in err and "No space left" in err and len(err.splitlines()) == 1
    assert not target.exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_a_misspelt_flag_or_command_gets_the_nearest_one():
    from conftest import run_cli

    rc, out, err = run_cli(["learn", "x.csv", "--utilisation", "0.6"])
    assert rc == 2 and "did you mean --utilization?" in err and err.count("\n") == 1
    assert "(see jaxopt-tokens learn --help)" in err  # the help that lists the command's flags
    rc, _, err = run_cli(["solve", "--arival-rate", "2", "--alhpa", "3"])
    assert rc == 2 and "--arrival-rate for --arival-rate" in err and "--alpha for --alhpa" in err
    rc, _, err = run_cli(["solv"])
    assert rc == 2 and "did you mean solve?" in err and "(see jaxopt-tokens --help)" in err
    rc, _, err = run_cli(["solve", "--zzzzzz"])
    assert rc == 2 and "did you mean" not in err  # nothing close: no guess


def test_every_help_has_an_example_and_the_defaults():
    """Each command's `--help` ends with an example, and every option with a default says
    it (serve: every configuration key, described from `GatewayConfig`'s docstring)."""
    import argparse
    import dataclasses

    from jaxopt_tokens import gateway
    from jaxopt_tokens.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        text = command.format_help()
        assert "Example" in text, name
        for action in command._actions:
            default = action.default
            if action.option_strings and default not in (None, False, argparse.SUPPRESS):
                if not isinstance(action, argparse._HelpAction):
                    assert "default" in (command._get_formatter()._expand_help(action)), (
                        name,
                        action.option_strings,
                    )
    serve = sub.choices["serve"]
    helps = {a.dest: a.help or "" for a in serve._actions}
    for f in dataclasses.fields(gateway.GatewayConfig):
        assert len(helps[f.name]) > 20, f.name  # described, not a bare flag
        has_default = f.default not in (dataclasses.MISSING, None, ()) or (
            f.default_factory is not dataclasses.MISSING and f.default_factory() not in ({}, ())
        )
        if has_default and f.name != "upstream":
            assert "(default: " in helps[f.name], f.name


def test_ctrl_c_on_a_sweep_says_what_was_kept_and_how_to_resume(tmp_path, monkeypatch):
    from conftest import run_cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(jt.sweeps, "sweep", interrupted)  # the command looks it up when it runs
    out = tmp_path / "s"
    rc, _, err = run_cli(["sweep", "--alpha", "1,2", "--quiet", "--out", out, "--force"])
    assert rc == 130
    assert "interrupted" in err and "resume with: jaxopt-tokens sweep" in err
    assert "--resume" in err and "--force" not in err and err.count("\n") == 1
