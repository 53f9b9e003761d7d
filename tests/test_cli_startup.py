"""A command answers fast: `--help` and argument errors without loading JAX, the package's
names loaded on first use, and compiled programs kept between commands in a cache that
processes running at once share safely."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import jaxopt_tokens as jt
from jaxopt_tokens import clear
from jaxopt_tokens._lazy import lazy_names
from jaxopt_tokens.cli import _cache
from jaxopt_tokens.cli.budget import POLICY_CHOICES
from jaxopt_tokens.cli.main import SUBCOMMAND_MODULES, build_parser

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("jax", "jaxlib", "equinox", "optax", "matplotlib", "pandas")


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )


def test_help_and_argument_errors_answer_without_loading_jax():
    commands = sorted(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert len(commands) >= len(SUBCOMMAND_MODULES)
    r = _python(
        f"""
        import contextlib, io, sys
        from jaxopt_tokens.cli import main
        codes = []
        for argv in [["--help"], ["solve", "--alhpa", "3"], ["nosuch"],
                     *[[c, "--help"] for c in {commands!r}]]:
            quiet = io.StringIO()
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                try:
                    codes.append(main(argv))
                except SystemExit as e:
                    codes.append(e.code)
        loaded = [m for m in {HEAVY!r} if m in sys.modules]
        print(codes, loaded)
        """
    )
    assert r.returncode == 0, r.stderr
    codes, loaded = r.stdout.strip().rsplit("] ", 1)
    assert loaded == "[]", f"the parser loaded {loaded}"
    assert codes == "[0, 2, 2, " + ", ".join(["0"] * len(commands))


def test_the_package_loads_its_names_on_first_use():
    r = _python(
        f"""
        import sys
        import jaxopt_tokens as jt
        before = [m for m in {HEAVY!r} if m in sys.modules]
        jt.InputError, jt.SOLVER_NAMES, jt.traffic.TRACE_FORMATS, jt.__version__
        light = [m for m in {HEAVY!r} if m in sys.modules]
        jt.solve
        print(before, light, "jax" in sys.modules)
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["[]", "[]", "True"]


def test_every_public_name_resolves_and_unknown_names_fail():
    for name in jt.__all__:
        assert getattr(jt, name) is not None
    assert set(jt.__all__) <= set(dir(jt))
    eager = {"InputError", "WorkloadError", "UnstableQueueWarning", "__version__"}
    lazy = set(lazy_names(Path(jt.__file__)))
    assert lazy | eager == set(jt.__all__), "__all__ and the lazily loaded names differ"
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        jt.no_such_name  # noqa: B018
    from jaxopt_tokens import internal  # a submodule outside __all__ still imports

    assert internal.__name__ == "jaxopt_tokens.internal"


def test_the_lazy_block_refuses_anything_but_relative_imports(tmp_path):
    init = tmp_path / "__init__.py"
    init.write_text("if TYPE_CHECKING:\n    import os\n")
    with pytest.raises(TypeError, match="only `from .x import y`"):
        lazy_names(init)
    init.write_text("if TYPE_CHECKING:\n    from . import sub\n    from .a.b import c as d\n")
    assert lazy_names(init) == {"sub": (".sub", None), "d": (".a.b", "c")}


def test_the_budget_commands_policies_are_the_baselines():
    assert set(POLICY_CHOICES) == {"clear", *clear.BASELINES}


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"JAXOPT_TOKENS_CACHE_DIR": "/c"}, Path("/c")),
        ({"XDG_CACHE_HOME": "/x"}, Path("/x/jaxopt-tokens/jax")),
        ({}, Path.home() / ".cache" / "jaxopt-tokens" / "jax"),
        ({"JAXOPT_TOKENS_CACHE_DIR": "/c", "JAXOPT_TOKENS_NO_CACHE": "1"}, None),
        ({"JAXOPT_TOKENS_CACHE_DIR": "/c", "JAXOPT_TOKENS_NO_CACHE": "0"}, Path("/c")),
        ({"JAX_COMPILATION_CACHE_DIR": "/mine", "XDG_CACHE_HOME": "/x"}, None),
    ],
)
def test_the_cache_directory_follows_the_environment(environ, expected):
    assert _cache.cache_dir(environ) == expected


def _entries(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir() if p.name.endswith("-cache")}


@pytest.mark.slow
def test_commands_running_at_once_share_one_cache_safely(tmp_path):
    """Three cold `solve`s start together on an empty cache (JAX locks each read and write);
    each answers the same, and a fourth, warm run finds every program there and adds none."""
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env["JAXOPT_TOKENS_CACHE_DIR"] = str(cache)
    argv = [sys.executable, "-m", "jaxopt_tokens.cli", "solve", "--format", "json"]
    procs = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e for _, e in outs]
    assert all(e == "" for _, e in outs), outs
    answers = [json.loads(o) for o, _ in outs]
    assert answers[0] == answers[1] == answers[2]
    written = _entries(cache)
    assert written, "nothing was cached"
    warm = subprocess.run(
        argv, env={**env, "JAX_LOG_COMPILES": "1"}, capture_output=True, text=True, timeout=300
    )
    assert warm.returncode == 0 and json.loads(warm.stdout) == answers[0]
    assert _entries(cache) == written, "the warm run compiled a program the cache lacked"
    assert "Persistent compilation cache hit" in warm.stderr
    # the solve was traced and lowered once, kept beside the cache, and loaded warm: the warm
    # run traces none of the package's programs (only JAX's wrapper around a loaded one)
    (kept,) = (cache / "programs").glob("solve-*.jaxexport")
    traced = set(re.findall(r"Finished tracing (\S+) for jit", warm.stderr))
    assert "program" not in traced and "call_exported" in traced, traced
    assert list((cache / "programs").iterdir()) == [kept], "a warm run wrote a program"


def _cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "JAXOPT_TOKENS_PROGRESS"}
    return {**env, **extra}


@pytest.mark.slow  # subprocesses or a fit: the slow step runs it
def test_progress_is_off_in_a_pipe_on_in_a_log_when_asked_and_off_when_quiet():
    argv = [sys.executable, "-m", "jaxopt_tokens.cli", "solve", "--format", "json"]

    def run(*flags, **env):
        r = subprocess.run(
            [*argv, *flags], env=_cli_env(**env), capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 0, r.stderr
        json.loads(r.stdout)  # the data alone on stdout, whatever progress says
        return r.stderr

    assert run() == ""
    log = run(JAXOPT_TOKENS_PROGRESS="1").splitlines()
    assert log[0] == "jaxopt-tokens solve: solving ..."
    assert log[1].startswith("jaxopt-tokens solve: solving: ended after ") and len(log) == 2
    assert run("--quiet", JAXOPT_TOKENS_PROGRESS="1") == ""


def _read_terminal(fd: int, limit_s: float = 300.0, max_reads: int = 100_000) -> bytes:
    """What a command writes to a pseudo-terminal until it closes it: bounded in time (a
    command that hangs fails the test) and in the number of reads."""
    import select
    import time

    deadline, chunks = time.monotonic() + limit_s, []
    for _ in range(max_reads):
        left = deadline - time.monotonic()
        assert left > 0, f"the command kept its terminal open for more than {limit_s:g} s"
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue  # the deadline check above ends the wait
        try:
            data = os.read(fd, 4096)
        except OSError:  # the command ended and closed the terminal
            return b"".join(chunks)
        if not data:
            return b"".join(chunks)
        chunks.append(data)
    raise AssertionError(f"more than {max_reads} reads from the terminal")


def test_a_terminal_sees_what_the_command_is_doing_before_the_result():
    """Under a pseudo-terminal the spinner's text appears on stderr before the table."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jaxopt_tokens.cli", "solve"],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=_cli_env(TERM="xterm", COLUMNS="120"),
        close_fds=True,
    )
    os.close(follower)
    try:
        raw = _read_terminal(leader)
    finally:
        if proc.poll() is None:  # a hung command does not outlive its test
            proc.kill()
    assert proc.wait(timeout=300) == 0
    os.close(leader)
    screen = raw.decode(errors="replace")
    assert "jaxopt-tokens solve: solving" in screen
    assert screen.index("jaxopt-tokens solve: solving") < screen.index("Optimal reasoning-token")


def test_the_sweep_bar_is_on_stderr_and_says_it_compiles_first():
    from jaxopt_tokens._sweeps.sweep import _progress, _solving

    bar = _progress(False, 10)
    assert bar.console.stderr
    assert bar.tasks[0].description.startswith("compiling")
    _solving(bar, 10)
    assert bar.tasks[0].description == "solving 10 points"
    assert _progress(True, 10) is None


def test_threads_that_first_touch_the_package_together_all_get_their_names():
    """The first use of a name imports JAX; twenty threads doing that at once, at the top and
    in the namespaces, must each get their name (one lock serialises every first import)."""
    r = _python(
        """
        import threading
        import jaxopt_tokens as jt
        names = ["solve", "simulate", "FIFO", "Workload", "sweeps.sweep", "objective",
                 "traffic.Trace", "learn.learn_budgets", "deploy.fit", "theory.lambertw"] * 2
        errors, start = [], threading.Barrier(len(names))
        def touch(name):
            start.wait()
            try:
                space, _, attr = name.rpartition(".")
                getattr(getattr(jt, space) if space else jt, attr)
            except BaseException as e:
                errors.append(f"{name}: {e!r}")
        threads = [threading.Thread(target=touch, args=(n,)) for n in names]
        for t in threads: t.start()
        for t in threads: t.join()
        print(errors)
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


def test_a_command_called_from_python_leaves_jax_settings_alone(monkeypatch):
    """Only the command line run as a program turns the compilation cache on: `main([...])`
    from a script or notebook changes neither JAX's settings nor the environment."""
    import jax
    from conftest import run_cli

    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    before_dir = jax.config.jax_compilation_cache_dir
    before_env = dict(os.environ)
    rc, _, err = run_cli(["solve", "--format", "json"])
    assert rc == 0, err
    assert jax.config.jax_compilation_cache_dir == before_dir
    assert dict(os.environ) == before_env


@pytest.mark.slow  # subprocesses or a fit: the slow step runs it
def test_data_printed_while_the_spinner_spins_stays_on_stdout(tmp_path):
    """stderr a terminal (the spinner runs), stdout a file: `tune` prints its result line and
    table to the file, none of it into the spinner's stream."""
    import pty

    leader, follower = pty.openpty()
    out = tmp_path / "out.txt"
    with out.open("w") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jaxopt_tokens.cli", "tune", "--target-latency", "2.5"],
            stdout=stdout,
            stderr=follower,
            env=_cli_env(TERM="xterm"),
        )
        os.close(follower)
        try:
            screen = _read_terminal(leader)
        finally:
            if proc.poll() is None:  # a hung command does not outlive its test
                proc.kill()
        assert proc.wait(timeout=300) == 0
    os.close(leader)
    text = out.read_text()
    assert "target E[T] = 2.5 s" in text and "Optimal reasoning-token" in text
    assert b"jaxopt-tokens tune: tuning" in screen and b"target E[T]" not in screen


def test_every_public_callable_pickles_by_reference():
    """Public functions stay plain module functions (a jit or custom_jvp wrapper bound to the
    public name does not pickle), so they travel to worker processes."""
    import inspect
    import pickle

    spaces = [getattr(jt, n) for n in jt.__all__ if inspect.ismodule(getattr(jt, n))]
    for ns in (jt, *spaces):
        for name in ns.__all__:
            obj = getattr(ns, name)
            if callable(obj) and not inspect.ismodule(obj):
                assert pickle.loads(pickle.dumps(obj)) is obj, f"{ns.__name__}.{name}"


def test_each_namespace_loads_its_names_on_first_use():
    """A namespace (`jt.traffic`, ...) lists its names lazily like the top level: importing it
    loads no JAX, and its `__all__` is exactly its lazy names, each resolving."""
    from jaxopt_tokens._lazy import lazy_names

    spaces = ("traffic", "learn", "deploy", "sweeps", "router", "theory")
    r = _python(
        f"""
        import sys
        import jaxopt_tokens as jt
        for s in {spaces!r}:
            getattr(jt, s)
        print("jax" in sys.modules)
        """
    )
    assert r.returncode == 0 and r.stdout.split() == ["False"], (r.stdout, r.stderr)
    for space in spaces:
        module = getattr(jt, space)
        assert set(lazy_names(Path(module.__file__))) == set(module.__all__), space
        for name in module.__all__:
            assert getattr(module, name) is not None
        with pytest.raises(AttributeError, match="no attribute 'nope'"):
            module.nope  # noqa: B018
