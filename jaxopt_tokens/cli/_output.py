"""Everything a command writes: checked first, staged, then put in place together.

`Outputs` is the one way a command writes files. Each target is checked before any work is
done (an existing file or a non-empty directory is refused unless `--force`; a path under a
file, an unwritable directory or a directory given as a file is refused, naming the flag).
Files are written to temporary names in their target directories, and `commit()` renames
them into place only once every output has been written, so a command leaves all its
outputs or none, and a half-written file is never seen under its real name. Stale outputs a
command owns (say a `sweep.parquet` from an earlier run beside a new `sweep.csv`) are
removed when the directory is replaced.

`emit_json` prints strict JSON: non-finite numbers become `null` (the status beside them
says why). `console` is the one way a command prints for people: as wide as the terminal, and
never cut to 80 columns in a pipe, a file or a CI log. `working` shows what a command is
doing while it works (loading JAX and compiling included) on standard error: a spinner on a
terminal; in a log, with `JAXOPT_TOKENS_PROGRESS=1`, a line when it starts and one when it
ends; nothing with `--quiet` or `JAXOPT_TOKENS_PROGRESS=0`. Printing a result ends it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from .. import InputError

__all__ = [
    "Outputs",
    "emit_json",
    "strict_json",
    "finite_or_none",
    "check_figure_format",
]


def finite_or_none(x: Any) -> Any:
    """`x` with every non-finite float (also inside numpy arrays, lists, dicts) as `None`."""
    if isinstance(x, dict):
        return {k: finite_or_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite_or_none(v) for v in x]
    if isinstance(x, np.ndarray):
        return finite_or_none(x.tolist())
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def strict_json(obj: Any, indent: int | None = 2) -> str:
    """`obj` as JSON that any strict parser reads (no NaN or Infinity)."""
    return json.dumps(finite_or_none(obj), indent=indent, allow_nan=False)


#: the width of a console that is not a terminal: wide enough that no table is cut
_UNCUT_WIDTH = 1000


#: the environment variable that turns progress on in a log ("1") or off everywhere ("0")
PROGRESS_ENV = "JAXOPT_TOKENS_PROGRESS"


class _Working:
    """What a command is doing, on standard error, until its result is printed."""

    def __init__(self) -> None:
        self._spinner: Any = None
        self._text: str | None = None
        self._start = 0.0

    def start(self, text: str) -> None:
        self.stop()
        mode = os.environ.get(PROGRESS_ENV, "")
        if mode == "0":
            return
        if sys.stderr.isatty():
            from rich.live import Live
            from rich.spinner import Spinner

            # standard output is never redirected into the spinner's stream: data printed
            # while it spins stays on stdout
            self._spinner = Live(
                Spinner("dots", text),
                console=Console(stderr=True),
                transient=True,
                redirect_stdout=False,
            )
            self._spinner.start()
        elif mode == "1":  # a log: a plain line now and one at the end
            print(f"{text} ...", file=sys.stderr, flush=True)
            self._text, self._start = text, time.perf_counter()

    def stop(self) -> None:
        if self._spinner is not None:
            self._spinner.stop()
            self._spinner = None
        if self._text is not None:
            elapsed = time.perf_counter() - self._start
            print(f"{self._text}: ended after {elapsed:.1f} s", file=sys.stderr, flush=True)
            self._text = None


#: the one indicator of what the running command is doing
working = _Working()


def console(*, stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr) for tables and messages: the terminal's width
    on a terminal; elsewhere (a pipe, a file, a CI log) plain text that is never cut. The
    command's progress indicator ends first, so a result never mixes with it."""
    working.stop()
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=_UNCUT_WIDTH)


def emit_json(obj: Any) -> None:
    """Print `obj` as strict JSON on standard output."""
    working.stop()
    print(strict_json(obj))


def _check_parent(path: Path, flag: str) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    for p in [parent, *parent.parents]:
        if p.exists():
            if not p.is_dir():
                raise InputError(f"{flag} {path}: {p} is a file, not a directory")
            break
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: cannot write in {parent}")


def _mode_for(target: Path) -> int:
    """The permission bits an output written to `target` gets: the replaced file's, or those
    a new file gets under the process's umask (the staging file's own are 0600)."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


class Outputs:
    """The files of one command (module docstring). Use as a context manager."""

    def __init__(self, force: bool = False):
        self.force = force
        self._files: list[tuple[Path, Path]] = []  # (temporary, target)
        self._dirs: list[tuple[Path, Path, tuple[str, ...]]] = []  # (temporary, target, owned)

    def file(self, path: str | Path, flag: str) -> Path:
        """Check the target file `path` (given with `flag`); return the temporary path to write."""
        if str(path) == "":
            raise InputError(f"{flag}: the path is empty")
        path = Path(path)
        if path.is_dir():
            raise InputError(f"{flag} {path}: is a directory; give a file name")
        if path.exists() and not self.force:
            raise InputError(f"{flag} {path}: the file exists; pass --force to replace it")
        _check_parent(path, flag)
        if not path.parent.is_dir():
            raise InputError(f"{flag} {path}: the directory {path.parent} does not exist")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp).with_suffix(path.suffix) if path.suffix else Path(tmp)
        if tmp_path != Path(tmp):
            os.replace(tmp, tmp_path)  # keep the extension: writers choose formats by it
        self._files.append((tmp_path, path))
        return tmp_path

    def directory(self, path: str | Path, flag: str, owned: Iterable[str] = ()) -> Path:
        """Check the output directory `path`; return a temporary directory to write into.

        `owned`: the file names this command may write there; on commit, those it did not
        write this time are removed, so no stale output survives beside fresh ones.
        """
        if str(path) == "":
            raise InputError(f"{flag}: the path is empty")
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise InputError(f"{flag} {path}: is a file, not a directory")
        if path.is_dir() and any(path.iterdir()) and not self.force:
            raise InputError(
                f"{flag} {path}: the directory is not empty; pass --force to write into it"
            )
        _check_parent(path / "x", flag)
        base = next(p for p in [path, *path.parents] if p.exists())  # stage on the same disk
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=base))
        self._dirs.append((tmp, path, tuple(owned)))
        return tmp

    def commit(self) -> list[Path]:
        """Put every staged output in place; return the paths written. A new file gets the
        mode the umask gives; a replaced file keeps its mode."""
        written = []
        for tmp, target in self._files:
            os.chmod(tmp, _mode_for(target))
            os.replace(tmp, target)
            written.append(target)
        for tmp, target, owned in self._dirs:
            target.mkdir(parents=True, exist_ok=True)
            fresh = {p.name for p in tmp.iterdir()}
            for name in owned:
                stale = target / name
                if name not in fresh and stale.is_file():
                    stale.unlink()
            for p in sorted(tmp.iterdir()):
                os.replace(p, target / p.name)
                written.append(target / p.name)
            tmp.rmdir()
        self._files, self._dirs = [], []
        return written

    def abort(self) -> None:
        """Remove every staged output; the targets are left as they were."""
        for tmp, _ in self._files:
            tmp.unlink(missing_ok=True)
        for tmp, _, _ in self._dirs:
            shutil.rmtree(tmp, ignore_errors=True)
        self._files, self._dirs = [], []

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, kind, value, tb) -> None:
        """Remove whatever is staged and not committed (all of it when the block failed)."""
        targets = ", ".join(str(staged[1]) for staged in (*self._files, *self._dirs))
        self.abort()
        if isinstance(value, OSError) and not value.filename and targets:
            # a writer that does not say which file failed (a full disk under pyarrow or
            # matplotlib): name the outputs
            raise InputError(f"writing {targets}: {value.strerror or value}") from None


def check_figure_format(path: str | Path, flag: str) -> None:
    """`InputError` unless matplotlib can write a figure with `path`'s extension."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in formats:
        raise InputError(
            f"{flag} {path}: unknown figure format {ext!r}; use one of {', '.join(sorted(formats))}"
        )
