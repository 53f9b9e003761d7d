"""Reading the user's text files: one place that turns every way a read can fail into an
`InputError` naming the file (missing, a directory, unreadable, not UTF-8, empty path)."""

from __future__ import annotations

from pathlib import Path

from ._errors import InputError

__all__ = ["read_text"]


def read_text(path: str | Path, what: str, error: type[InputError] = InputError) -> str:
    """The UTF-8 text of `path`; `error` (an `InputError`) naming the file and `what` it holds."""
    if str(path) == "":
        raise error(f"{what}: the file name is empty")
    p = Path(path)
    if p.is_dir():
        raise error(f"{p}: is a directory, expected a {what} file")
    try:
        return p.read_bytes().decode("utf-8")
    except OSError as e:
        raise error(f"{p}: cannot read {what} file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise error(
            f"{p}: the {what} file is not UTF-8 text (byte {e.start}: {e.reason})"
        ) from None
