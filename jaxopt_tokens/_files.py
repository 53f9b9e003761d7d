"""Reading the user's text files: one place that turns every way a read can fail into an
`InputError` naming the file (missing, a directory, unreadable, not UTF-8, empty path)."""

from __future__ import annotations

import contextlib
import csv
import math
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import InputError

__all__ = [
    "read_text",
    "csv_rows",
    "csv_reader",
    "field_limit",
    "text_lines",
    "parse_number",
    "MAX_TEXT_BYTES",
]


def parse_number(
    value: Any,
    where: str,
    *,
    finite: bool = True,
    minimum: float | None = None,
    positive: bool = False,
    error: type[InputError] = InputError,
) -> float:
    """`value` as a float: a number from a JSON or TOML file, or the text of a CSV field.

    Raises `error` (an `InputError`) whose message starts with `where` (the file, line,
    column or field) when the value is not a number (booleans are not numbers), is too large
    for a float, is not finite (unless `finite=False`), is below `minimum`, or is not above
    zero with `positive`.
    """
    if isinstance(value, str):
        try:
            x = float(value)
        except ValueError:
            raise error(f"{where}: {value!r} is not a number") from None
    elif isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise error(f"{where}: expected a number, got {value!r}")
    else:
        try:
            x = float(value)
        except OverflowError:
            raise error(f"{where}: {str(value)[:20]}... is too large for a float") from None
    if finite and not math.isfinite(x):
        raise error(f"{where}: must be finite, got {value!r}")
    if positive and not x > 0:
        raise error(f"{where}: must be > 0, got {value!r}")
    if minimum is not None and not x >= minimum:
        raise error(f"{where}: must be >= {minimum:g}, got {value!r}")
    return x


#: the largest text file a reader takes (a workload, measurements, a benchmark result)
MAX_TEXT_BYTES = 256 << 20


def read_text(path: str | os.PathLike, what: str, error: type[InputError] = InputError) -> str:
    """The UTF-8 text of `path` (a byte-order mark is dropped); `error` (an `InputError`)
    naming the file and `what` it holds when it is missing, not a regular file (a
    directory, a device, a FIFO), larger than `MAX_TEXT_BYTES`, unreadable or not UTF-8.

    Args:
        path: the file.
        what: what the file holds, for the message ("workload file", "trace", ...).
        error: the `InputError` subclass to raise.

    Returns:
        The file's text.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise error(f"{what}: a file path, got {type(path).__name__} {path!r:.40}")
    if str(path) == "":
        raise error(f"{what}: the file name is empty")
    p = Path(path)
    if p.is_dir():
        raise error(f"{p}: is a directory, expected a {what} file")
    try:
        info = p.stat()
    except OSError as e:
        raise error(f"{p}: cannot read {what} file ({e.strerror or e})") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{p}: is not a regular file, expected a {what} file")
    if info.st_size > MAX_TEXT_BYTES:
        raise error(
            f"{p}: {info.st_size / 2**20:,.0f} MiB is too large for a {what} file (at most "
            f"{MAX_TEXT_BYTES >> 20} MiB)"
        )
    try:
        with p.open("rb") as f:  # by chunks: one read of the cap would allocate the cap
            chunks, size = [], 0
            while size <= MAX_TEXT_BYTES and (chunk := f.read(1 << 20)):
                chunks.append(chunk)
                size += len(chunk)
        data = b"".join(chunks)
        if len(data) > MAX_TEXT_BYTES:  # it grew since the check
            raise error(f"{p}: too large for a {what} file (at most {MAX_TEXT_BYTES >> 20} MiB)")
        return data.decode("utf-8-sig")
    except OSError as e:
        raise error(f"{p}: cannot read {what} file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise error(
            f"{p}: the {what} file is not UTF-8 text (byte {e.start}: {e.reason})"
        ) from None


def text_lines(text: str) -> list[str]:
    """The lines of `text` as an editor counts them: split at `\\n` (a `\\r` before it is
    dropped) and nowhere else, so a field holding U+2028, NEL or a form feed stays whole."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


@contextlib.contextmanager
def field_limit() -> Iterator[None]:
    """csv's per-field limit raised to the largest file a reader takes, then restored."""
    old = csv.field_size_limit()
    csv.field_size_limit(max(old, MAX_TEXT_BYTES))
    try:
        yield
    finally:
        csv.field_size_limit(old)


def csv_reader(lines: Iterable[str]) -> list[list[str]]:
    """Every row of the CSV `lines` (one row a line), with no per-field size limit below
    the file cap (a 200 KB prompt column is a field like any other)."""
    with field_limit():
        try:
            return list(csv.reader(lines))
        except csv.Error as e:
            raise InputError(f"not valid CSV ({e})") from None


def csv_rows(text: str, source: str):
    """`(header line, header, rows)` of a CSV text: `rows` holds (line number, row dict) for each
    data row; comment (`#`) and blank lines are skipped, and errors name the line."""
    lines = [
        (i + 1, line)
        for i, line in enumerate(text_lines(text))
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise InputError(f"{source}: no header row (the file is empty)")
    try:
        parsed = csv_reader(line for _, line in lines)
    except InputError as e:
        raise InputError(f"{source}: {e}") from None
    reader = iter(parsed)
    header = [h.strip().lower() for h in next(reader)]
    if len(set(header)) != len(header):
        raise InputError(f"{source}, line {lines[0][0]}: duplicate column names in header {header}")
    out = []
    for (lineno, _), values in zip(lines[1:], reader):
        if len(values) != len(header):
            raise InputError(
                f"{source}, line {lineno}: expected {len(header)} fields ({', '.join(header)}), "
                f"got {len(values)}"
            )
        out.append((lineno, dict(zip(header, (v.strip() for v in values)))))
    return lines[0][0], header, out
