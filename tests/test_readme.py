"""Every example of the README runs as written, in order, in a fresh directory that sees the
repository's shipped files (`jaxopt_tokens/data`, `benchmarks/data`) as a clone does.

`bash` blocks run line by line in bash (`set -e`; `jaxopt-tokens` is this interpreter's
command line); `python` blocks run one after another in one interpreter, so a later block
uses what an earlier one made, as in a session. A block marked
`<!-- not run by tests/test_readme.py: WHY -->` is skipped for that reason (the test command
itself, a running engine, a cluster); the set-up line's `pip install` is what CI itself runs.
The 2e7-point sweep's grids are made 10,000 times smaller (the README says so).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP = re.compile(r"<!-- not run by tests/test_readme\.py: (.+?) -->\s*$")
#: the README's big sizes and the ones the test runs (stated in the README)
SMALLER = {
    "--arrival-rate 0.01:0.5:4000 --alpha 1:100:5000 --out big_cli": (
        "--arrival-rate 0.01:0.5:40 --alpha 1:100:50 --out big_cli"
    ),
    "np.linspace(0.01, 0.5, 4000), alpha=np.geomspace(1, 100, 5000)": (
        "np.linspace(0.01, 0.5, 40), alpha=np.geomspace(1, 100, 50)"
    ),
}


def readme_blocks(text: str) -> list[tuple[str, str, str | None, int]]:
    """`(language, code, reason it is not run or None, line)` of every fenced block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, language = i, m.group(1)
        j = i + 1
        while not lines[j].startswith("```"):
            j += 1
        skip = SKIP.match(lines[start - 1]) if start else None
        blocks.append(
            (language, "\n".join(lines[i + 1 : j]), skip.group(1) if skip else None, start + 1)
        )
        i = j + 1
    return blocks


def _smaller(code: str) -> str:
    for big, small in SMALLER.items():
        code = code.replace(big, small)
    return code


def _workspace(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A fresh directory that sees the shipped files where a clone has them, and an
    environment whose `jaxopt-tokens` is this interpreter's."""
    work = tmp_path / "clone"
    (work / "jaxopt_tokens").mkdir(parents=True)
    (work / "benchmarks").mkdir()
    (work / "jaxopt_tokens" / "data").symlink_to(ROOT / "jaxopt_tokens" / "data")
    (work / "benchmarks" / "data").symlink_to(ROOT / "benchmarks" / "data")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "jaxopt-tokens"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m jaxopt_tokens.cli "$@"\n')
    shim.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "MPLBACKEND": "Agg",
        "PYTHONPATH": str(ROOT),
    }
    return work, env


def test_the_readme_s_blocks_are_found_and_few_are_skipped():
    blocks = readme_blocks((ROOT / "README.md").read_text())
    runnable = [b for b in blocks if b[0] in ("bash", "python") and b[2] is None]
    skipped = [b for b in blocks if b[2] is not None]
    assert len(runnable) >= 14
    assert len(skipped) <= 3, [b[3] for b in skipped]
    assert all(b[0] in ("bash", "python", "text") for b in blocks), "a block without a language"
    setup = [b for b in blocks if "pip install" in b[1]]
    assert len(setup) == 2, "the README holds exactly two set-up commands"
    for big in SMALLER:
        assert any(big in b[1] for b in runnable), f"{big!r} is no longer in the README"


def _bash_commands(code: str) -> list[str]:
    """The block's commands: continuation lines joined, the set-up `pip install` left to CI."""
    joined = code.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = re.sub(r"^python -m pip install [^&]+&&\s*", "", line)
        out.append(line)
    return out


#: runs the README's python blocks one at a time in one interpreter, in README order between
#: the bash commands: a block's output goes to stderr, and "ok" or "failed" to stdout
_WORKER = textwrap.dedent(
    """
    import contextlib, json, sys, traceback
    namespace = {"__name__": "__main__"}
    answer = sys.stdout
    for request in sys.stdin:
        line, code = json.loads(request)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                exec(compile(code, f"README.md:{line}", "exec"), namespace)
        except BaseException:
            print(f"README line {line}:", file=sys.stderr)
            traceback.print_exc()
            answer.write("failed\\n")
        else:
            answer.write("ok\\n")
        answer.flush()
    """
)


@pytest.mark.slow
def test_every_readme_example_runs_as_written(tmp_path):
    work, env = _workspace(tmp_path)
    log = (tmp_path / "python.log").open("w")
    worker = subprocess.Popen(
        [sys.executable, "-c", _WORKER],
        cwd=work,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        for language, code, reason, line in readme_blocks((ROOT / "README.md").read_text()):
            if reason is not None or language not in ("bash", "python"):
                continue
            code = _smaller(code)
            if language == "python":
                assert worker.stdin is not None and worker.stdout is not None
                worker.stdin.write(json.dumps([line, code]) + "\n")
                worker.stdin.flush()
                answer = worker.stdout.readline().strip()
                log.flush()
                assert answer == "ok", (tmp_path / "python.log").read_text()[-3000:]
                continue
            for command in _bash_commands(code):
                r = subprocess.run(
                    ["bash", "-e", "-o", "pipefail", "-c", command],
                    cwd=work,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=900,
                )
                assert r.returncode == 0, f"README line {line}: {command}\n{r.stderr[-2000:]}"
    finally:
        worker.kill()
        worker.wait()
        log.close()
    for made in ("workload.toml", "policy.json", "learned.json", "fig2.png", "replicas.png"):
        assert (work / made).is_file(), made
