r"""Recorded request traces: arrival times and, where the file has them, token counts and labels.

`read_trace` reads the public production traces an operator is likely to have and the
simplest file a gateway or load balancer can write:

- `"azure"`: the Azure LLM inference traces (`TIMESTAMP` a date-time string, `ContextTokens`,
  `GeneratedTokens`);
- `"mooncake"`: Mooncake's JSON Lines traces (`timestamp` in milliseconds, `input_length`,
  `output_length`);
- `"burstgpt"`: BurstGPT's CSV (`Timestamp` in seconds, `Request tokens`, `Response tokens`);
- `"csv"` / `"jsonl"`: any CSV or JSON Lines file with a time column (`arrival_time`,
  `timestamp` or `time`) in seconds, in milliseconds (a column name ending in `_ms`, or
  `time_unit="ms"`) or as ISO 8601 date-times, and optionally `input_tokens`,
  `output_tokens` and `task`.

The sources and commits the formats were confirmed against are on the docs page *Real
traffic*. Every error names the file, the line and the column.
"""

from __future__ import annotations

import array
import csv
import datetime as dt
import io
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .._choices import TIME_UNITS, TRACE_FORMATS
from .._errors import InputError
from .._files import csv_reader, field_limit, parse_number, read_text, text_lines

__all__ = [
    "Trace",
    "read_trace",
    "parse_times",
    "TRACE_FORMATS",
    "TIME_UNITS",
    "TIME_COLUMNS",
    "positive_number",
]


TimeUnit = Literal["auto", "s", "ms", "us", "iso"]

#: the names (lower case) a time column may have, in order of preference
TIME_COLUMNS = ("arrival_time", "arrival_time_ms", "timestamp", "timestamp_ms", "time", "time_ms")
_INPUT_COLUMNS = (
    "input_tokens",
    "prompt_tokens",
    "input_length",
    "contexttokens",
    "request tokens",
)
_OUTPUT_COLUMNS = (
    "output_tokens",
    "completion_tokens",
    "output_length",
    "generatedtokens",
    "response tokens",
)
_LABEL_COLUMNS = ("task", "task_type")


@dataclass(frozen=True)
class Trace:
    """A recorded arrival sequence.

    Attributes:
        arrival_times: seconds from the first request, sorted (float64, shape `(q,)`).
        input_tokens: prompt tokens per request, or None when the file has none.
        output_tokens: generated tokens per request, or None.
        labels: a task name per request (a tuple of strings), or None.
        format: the format the file was read as (`TRACE_FORMATS`).
        source: the file (or `"<arrays>"`).
        dropped: `(reason, rows)` for every kind of row left out.
        start: the first request's absolute time (ISO 8601) when the file has date-times.
    """

    arrival_times: np.ndarray
    input_tokens: np.ndarray | None = None
    output_tokens: np.ndarray | None = None
    labels: tuple[str, ...] | None = None
    format: str = "arrays"
    source: str = "<arrays>"
    dropped: tuple[tuple[str, int], ...] = ()
    start: str | None = field(default=None)

    def __post_init__(self):
        t = _reals(self.source, "arrival_times", self.arrival_times)
        if t.ndim != 1 or t.size < 2:
            raise InputError(
                f"{self.source}: a trace needs at least two requests, got "
                f"{t.size if t.ndim == 1 else t.shape}"
            )
        if not np.all(np.isfinite(t)):
            raise InputError(f"{self.source}: arrival_times must be finite")
        order = np.argsort(t, kind="stable")
        t = t[order] - t[order[0]]
        if not np.isfinite(t[-1]):
            raise InputError(f"{self.source}: arrival_times span more seconds than a double holds")
        if not t[-1] > 0:
            raise InputError(f"{self.source}: every request arrives at the same time; no rate")
        object.__setattr__(self, "arrival_times", t)
        for name in ("input_tokens", "output_tokens"):
            x = getattr(self, name)
            if x is None:
                continue
            x = _reals(self.source, name, x)
            if x.shape != (order.size,):
                raise InputError(f"{self.source}: {name} must have one value per request")
            if not np.all(np.isfinite(x) & (x >= 0)):
                raise InputError(f"{self.source}: {name} must be finite and >= 0")
            object.__setattr__(self, name, x[order])
        if self.labels is not None:
            labels = tuple(str(s) for s in self.labels)
            if len(labels) != order.size:
                raise InputError(f"{self.source}: labels must have one value per request")
            object.__setattr__(self, "labels", tuple(labels[i] for i in order))

    def __len__(self) -> int:
        return int(self.arrival_times.size)

    @property
    def num_requests(self) -> int:
        return len(self)

    @property
    def duration(self) -> float:
        """Seconds from the first request to the last."""
        return float(self.arrival_times[-1])

    @property
    def mean_rate(self) -> float:
        """Requests per second over the trace: (requests - 1) / duration."""
        return (len(self) - 1) / self.duration

    @property
    def gaps(self) -> np.ndarray:
        """Inter-arrival times; `gaps[0]` is 0 (the first request)."""
        return np.diff(self.arrival_times, prepend=0.0)

    def rescaled(self, rate: float) -> Trace:
        """The same sequence with time stretched so that its mean rate is `rate` per second."""
        rate = positive_number("rate", rate)
        return replace(self, arrival_times=self.arrival_times * (self.mean_rate / rate))

    def between(self, start: float, stop: float) -> Trace:
        """The requests that arrive in `[start, stop)` seconds (times from the new first one)."""
        for name, value in (("start", start), ("stop", stop)):
            if isinstance(value, (bool, str, bytes)) or not isinstance(
                value, (int, float, np.integer, np.floating)
            ):
                raise InputError(f"{name}: seconds from the first request, got {value!r}")
        keep = (self.arrival_times >= start) & (self.arrival_times < stop)
        if keep.sum() < 2:
            raise InputError(f"start, stop: fewer than two requests in [{start:g}, {stop:g}) s")
        return self._subset(keep)

    def head(self, num_requests: int) -> Trace:
        """The first `num_requests` requests."""
        if isinstance(num_requests, bool) or not isinstance(num_requests, (int, np.integer)):
            raise InputError(f"num_requests: expected an integer, got {num_requests!r}")
        if num_requests < 2:
            raise InputError(f"num_requests: must be >= 2, got {num_requests}")
        keep = np.arange(len(self)) < num_requests
        return self._subset(keep)

    def _subset(self, keep: np.ndarray) -> Trace:
        def pick(x):
            return None if x is None else x[keep]

        labels = None
        if self.labels is not None:
            labels = tuple(s for s, k in zip(self.labels, keep) if k)
        return replace(
            self,
            arrival_times=self.arrival_times[keep],
            input_tokens=pick(self.input_tokens),
            output_tokens=pick(self.output_tokens),
            labels=labels,
        )

    def labelled(self, bands: dict[str, float], column: str = "output_tokens") -> Trace:
        """Task labels from bands of a token column: `{"short": 256, "medium": 2048,
        "long": math.inf}` labels a request by the first band whose upper bound (inclusive)
        holds its count."""
        if column not in ("input_tokens", "output_tokens"):
            raise InputError(f"column: 'input_tokens' or 'output_tokens', got {column!r}")
        values = getattr(self, column)
        if values is None:
            why = "; ".join(r for r, _ in self.dropped if "left out" in r)
            raise InputError(
                f"column: the trace {self.source} has no {column}" + (f" ({why})" if why else "")
            )
        if not isinstance(bands, dict) or not bands:
            raise InputError("bands: a non-empty mapping of label to upper bound")
        names = list(bands)
        try:
            bounds = np.asarray(
                [parse_number(bands[k], f"bands[{k!r}]", finite=False) for k in names]
            )
        except InputError as e:
            raise InputError(f"bands: upper bounds are numbers ({e})") from None
        if np.any(np.isnan(bounds)) or np.any(np.diff(bounds) <= 0):
            raise InputError(f"bands: upper bounds must increase, got {dict(bands)}")
        index = np.searchsorted(bounds, values, side="left")
        if np.any(index >= len(names)):
            worst = float(np.max(values))
            raise InputError(
                f"bands: {column} = {worst:g} is above every band (the last bound is "
                f"{bounds[-1]:g}; use math.inf)"
            )
        return replace(self, labels=tuple(names[int(i)] for i in np.atleast_1d(index)))

    def num_windows(self, window: float) -> int:
        """The whole windows of `window` seconds the trace spans (at least one: a trace
        shorter than the window is one window as long as the trace). Refused above
        `MAX_WINDOWS`, with the estimate (a stray timestamp years away would otherwise ask
        for gigabytes of counts)."""
        window = positive_number("window", window)
        span = self.duration / window
        if not span <= MAX_WINDOWS:
            raise InputError(
                f"window: the trace spans {self.duration:.4g} s, {span:.3g} windows of "
                f"{window:g} s (at most {MAX_WINDOWS:,}); check its time column for a stray "
                "timestamp, or use a longer window"
            )
        return max(int(math.floor(span)), 1)

    def window_lengths(self, window: float) -> np.ndarray:
        """Seconds each window of `window_index` covers: `window`, except the last, which
        absorbs the partial window after it (and is the whole trace when it is shorter than
        one window)."""
        window = positive_number("window", window)
        num = self.num_windows(window)
        lengths = np.full(num, window)
        lengths[-1] = self.duration - window * (num - 1)
        return lengths

    def window_counts(self, window: float) -> np.ndarray:
        """Requests in each window of `window_index`."""
        num = self.num_windows(window)
        return np.bincount(self.window_index(window), minlength=num).astype(np.float64)

    def window_index(self, window: float) -> np.ndarray:
        """The window each request arrives in (the last partial window joins the one before)."""
        window = positive_number("window", window)
        num = self.num_windows(window)
        idx = np.floor(self.arrival_times / window)
        return np.minimum(idx, num - 1).astype(np.int64)

    def window_rates(self, window: float) -> tuple[np.ndarray, np.ndarray]:
        """(requests per second, share of the trace's requests) in each window of
        `window_index`, each over the time its window covers (`window_lengths`)."""
        counts = self.window_counts(window)
        return counts / self.window_lengths(window), counts / counts.sum()


#: the most windows a trace statistic counts over (8 bytes each)
MAX_WINDOWS = 10_000_000


def _reals(source: str, name: str, value: Any) -> np.ndarray:
    """`value` as a float64 array of real numbers; `InputError` naming `name` otherwise."""
    arr = np.asarray(value) if not isinstance(value, np.ndarray) else value
    if arr.dtype.kind not in "iuf":
        raise InputError(
            f"{source}: {name}: expected real numbers, got {arr.dtype.name} values "
            f"({str(value)[:40]})"
        )
    return np.asarray(arr, dtype=np.float64)


def positive_number(name: str, value: Any) -> float:
    """`value` (a real number: not a string or a boolean) as a finite float > 0;
    `InputError` naming `name` otherwise."""
    if isinstance(value, (str, bytes, bool, np.bool_)):
        raise InputError(f"{name}: expected a positive number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{name}: expected a positive number, got {value!r}") from None
    if isinstance(value, bool) or not (math.isfinite(x) and x > 0):
        raise InputError(f"{name}: must be finite and > 0, got {value!r}")
    return x


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _iso_seconds(text: str) -> tuple[int, int, dt.datetime]:
    """(whole seconds, microseconds) since the epoch of an ISO 8601 date-time, exactly (the
    instant in UTC, so an offset with fractional seconds moves the microseconds too), and the
    date-time itself; a naive one is taken as UTC."""
    s = text.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    if re.search(r"[+-]\d{2}:?\d{2}:?\d{2}\.\d+$", s):
        # valid ISO 8601, but Python 3.11 drops the offset's fraction: never a silent shift
        raise ValueError("a UTC offset with fractional seconds")
    t = dt.datetime.fromisoformat(s)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    delta = t - _EPOCH  # exact: timedelta arithmetic in microseconds
    return delta.days * 86400 + delta.seconds, delta.microseconds, t


def parse_times(values: list[str], unit: TimeUnit, where) -> tuple[np.ndarray, str | None]:
    """Seconds (float64) of time fields, and the first one's ISO 8601 form for date-times.

    `unit`: `"s"`, `"ms"`, `"us"`, `"iso"` (date-times) or `"auto"` (numbers as seconds,
    anything else as a date-time). `where(i)` names the field `values[i]` (file, line,
    column) in the error a bad value raises. Date-times keep microseconds: the difference of
    two is exact to 1 us.
    """
    if unit not in ("auto", "iso", *TIME_UNITS):
        raise InputError(f"time_unit: one of auto, s, ms, us, iso; got {unit!r}")
    if unit != "iso":
        try:  # one float at a time: an array of strings first would cost ~30x the file
            x = np.fromiter((float(v) for v in values), dtype=np.float64, count=len(values))
            numeric = True
        except (ValueError, TypeError):
            numeric = False
        if numeric:
            bad = np.flatnonzero(~np.isfinite(x))
            if bad.size:
                raise InputError(f"{where(int(bad[0]))}: {values[bad[0]]!r} is not a finite time")
            return np.asarray(x * TIME_UNITS.get(unit, 1.0), dtype=np.float64), None
        if unit != "auto":
            for i, v in enumerate(values):
                try:
                    float(v)
                except ValueError:
                    raise InputError(
                        f"{where(i)}: {v!r} is not a number of {unit} (time_unit={unit!r})"
                    ) from None
    # date-times: whole seconds since the first one plus microseconds, so nothing is lost
    out = np.empty(len(values), dtype=np.float64)
    first = None
    base = 0.0
    for i, v in enumerate(values):
        try:
            whole, micro, t = _iso_seconds(str(v))
        except ValueError as e:
            if "fractional" in str(e):
                raise InputError(f"{where(i)}: {v!r}: {e} is not supported") from None
            raise InputError(
                f"{where(i)}: {v!r} is not a time (seconds, or an ISO 8601 date-time such as "
                "2023-11-16 18:15:46.68)"
            ) from None
        except (OverflowError, OSError):
            raise InputError(
                f"{where(i)}: {v!r} is not a time (seconds, or an ISO 8601 date-time such as "
                "2023-11-16 18:15:46.68)"
            ) from None
        if first is None:
            first, base = t, whole
        out[i] = (whole - base) + micro * 1e-6
    return out, None if first is None else first.isoformat()


def _column(header: list[str], names: tuple[str, ...]) -> str | None:
    return next((c for c in names if c in header), None)


def _detect(path: Path, text: str) -> str:
    first = next((line for line in text_lines(text) if line.strip()), "")
    if first.lstrip().startswith("{"):
        try:
            keys = set(json.loads(first))
        except (json.JSONDecodeError, TypeError, RecursionError):
            return "jsonl"
        return "mooncake" if {"timestamp", "input_length", "output_length"} <= keys else "jsonl"
    header = {h.strip().lower() for h in next(iter(csv_reader([first])), [])}
    if {"timestamp", "contexttokens", "generatedtokens"} <= header:
        return "azure"
    if {"timestamp", "request tokens", "response tokens"} <= header:
        return "burstgpt"
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    return "csv"


def _numbers(values: list[str], where, name: str) -> np.ndarray:
    try:
        x = np.fromiter((float(v) for v in values), dtype=np.float64, count=len(values))
    except (ValueError, TypeError):
        x = None
    if x is not None:
        bad = np.flatnonzero(~(np.isfinite(x) & (x >= 0)))
        if not bad.size:
            return x
        i = int(bad[0])
        raise InputError(f"{where(i)}: {name} must be a finite count >= 0, got {values[i]!r}")
    for i, v in enumerate(values):
        try:
            float(v)
        except (TypeError, ValueError):
            raise InputError(f"{where(i)}: {v!r} is not a number") from None
    raise AssertionError("unreachable")


def _from_columns(
    source: str,
    fmt: str,
    lines: Sequence[int],
    columns: dict[str, list[Any]],
    names: dict[str, str | None],
    unit: TimeUnit,
    dropped: dict[str, int],
) -> Trace:
    def where_of(role):
        col = names[role]
        return lambda i: f"{source}, line {lines[i]}, column {col!r}"

    times, start = parse_times(columns["time"], unit, where_of("time"))
    for role in ("input", "output", "label"):  # an arrival is kept without its count or label
        empty = sum(v is None for v in columns[role]) if names[role] is not None else 0
        if empty:
            reason = (
                f"column {names[role]!r}: {empty} of {len(times)} requests lack it (the column "
                "is left out; every arrival is kept)"
            )
            dropped[reason] = empty
            names = {**names, role: None}
    tokens = {}
    for role in ("input", "output"):
        if names[role] is not None:
            tokens[role] = _numbers(columns[role], where_of(role), f"column {names[role]!r}")
    labels = tuple(str(v) for v in columns["label"]) if names["label"] is not None else None
    if len(times) < 2:
        raise InputError(f"{source}: a trace needs at least two requests, got {len(times)}")
    return Trace(
        arrival_times=times,
        input_tokens=tokens.get("input"),
        output_tokens=tokens.get("output"),
        labels=labels,
        format=fmt,
        source=source,
        dropped=tuple(sorted(dropped.items())),
        start=start,
    )


def _data_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of each line that is neither blank nor a comment, lazily: split
    at `\\n` only (a `\\r` before it dropped), as an editor counts lines."""
    for i, line in enumerate(io.StringIO(text, newline="\n")):
        line = line[:-1] if line.endswith("\n") else line
        line = line[:-1] if line.endswith("\r") else line
        if line.strip() and not line.lstrip().startswith("#"):
            yield i + 1, line


def _read_csv(source: str, text: str, fmt: str, unit: TimeUnit) -> Trace:
    """The CSV trace in `text`, read row by row (no list of every line or row is held: the
    memory is the columns kept, not a multiple of the file)."""
    numbered = _data_lines(text)
    current = [0]

    def lines_only():
        for n, line in numbered:
            current[0] = n
            yield line

    parsed = csv.reader(lines_only())
    with field_limit():
        try:
            first = next(parsed, None)
        except csv.Error as e:
            raise InputError(f"{source}: not valid CSV ({e})") from None
        if first is None:
            raise InputError(f"{source}: the file is empty (no header row)")
        header_line = current[0]
        header = [h.strip().lower() for h in first]
        return _csv_columns(source, fmt, unit, parsed, header, header_line, current)


def _csv_columns(source, fmt, unit, parsed, header, header_line, current) -> Trace:
    if len(set(header)) != len(header):
        raise InputError(f"{source}, line {header_line}: duplicate column names in {header}")
    names = {
        "time": _column(header, TIME_COLUMNS),
        "input": _column(header, _INPUT_COLUMNS),
        "output": _column(header, _OUTPUT_COLUMNS),
        "label": _column(header, _LABEL_COLUMNS),
    }
    if names["time"] is None:
        raise InputError(
            f"{source}, line {header_line}: no time column (one of {', '.join(TIME_COLUMNS)}); "
            f"header: {', '.join(header)}"
        )
    if unit == "auto" and names["time"].endswith("_ms"):
        unit = "ms"
    index = {role: header.index(c) for role, c in names.items() if c is not None}
    columns: dict[str, list[Any]] = {role: [] for role in names}
    lines = array.array("q")  # 8 bytes a row, not a Python int each
    dropped: dict[str, int] = {}
    while True:
        try:
            values = next(parsed, None)
        except csv.Error as e:
            raise InputError(f"{source}, line {current[0]}: not valid CSV ({e})") from None
        if values is None:
            break
        lineno = current[0]
        if len(values) != len(header):
            raise InputError(
                f"{source}, line {lineno}: expected {len(header)} fields ({', '.join(header)}), "
                f"got {len(values)}"
            )
        if not values[index["time"]].strip():
            reason = f"empty {names['time']!r}"
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        lines.append(lineno)
        for role, i in index.items():
            columns[role].append(values[i].strip() or None)
    return _from_columns(source, fmt, lines, columns, names, unit, dropped)


_MOONCAKE = {"time": "timestamp", "input": "input_length", "output": "output_length", "label": None}


def _read_jsonl(source: str, text: str, fmt: str, unit: TimeUnit) -> Trace:
    records = []
    for i, line in enumerate(text_lines(text)):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            msg = getattr(e, "msg", "nested too deeply")
            raise InputError(f"{source}, line {i + 1}: not valid JSON ({msg})") from None
        if not isinstance(rec, dict):
            raise InputError(f"{source}, line {i + 1}: expected a JSON object per line")
        records.append((i + 1, {str(k).lower(): v for k, v in rec.items()}))
    if not records:
        raise InputError(f"{source}: the file is empty (no JSON lines)")
    if fmt == "mooncake":
        names = dict(_MOONCAKE)
        unit = "ms" if unit == "auto" else unit
    else:
        keys = set().union(*(r.keys() for _, r in records[:100]))
        names = {
            "time": _column(sorted(keys), TIME_COLUMNS),
            "input": _column(sorted(keys), _INPUT_COLUMNS),
            "output": _column(sorted(keys), _OUTPUT_COLUMNS),
            "label": _column(sorted(keys), _LABEL_COLUMNS),
        }
        if names["time"] is None:
            raise InputError(
                f"{source}, line {records[0][0]}: no time field (one of {', '.join(TIME_COLUMNS)})"
            )
        if unit == "auto" and names["time"].endswith("_ms"):
            unit = "ms"
    columns: dict[str, list[Any]] = {role: [] for role in names}
    lines: list[int] = []
    dropped: dict[str, int] = {}
    for lineno, rec in records:
        if rec.get(names["time"]) is None:
            reason = f"no {names['time']!r}"
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        for role, c in names.items():
            if c is None:
                continue
            v = rec.get(c)
            if v is None:  # kept: the arrival stands; `_from_columns` leaves the column out
                columns[role].append(None)
                continue
            if isinstance(v, bool) or isinstance(v, (list, dict)):
                raise InputError(
                    f"{source}, line {lineno}, field {c!r}: expected a value, got {v!r}"
                )
            columns[role].append(str(v))
        lines.append(lineno)
    return _from_columns(source, fmt, lines, columns, names, unit, dropped)


#: peak memory of reading a trace, in multiples of its file (measured: CSV 15x, JSON Lines
#: about 50x, each with room to spare)
_READ_COST = {"csv": 20, "jsonl": 60}


def _read_within_memory(path) -> str:
    """The trace file's text, refused before it is read when reading it would not fit in
    memory (with the estimate)."""
    import os

    from .._validate import check_memory

    if isinstance(path, (str, os.PathLike)) and Path(path).is_file():
        size = Path(path).stat().st_size
        json_lines = Path(path).suffix.lower() in (".jsonl", ".json", ".ndjson")
        check_memory(
            size * _READ_COST["jsonl" if json_lines else "csv"],
            f"reading the {size / 2**20:,.0f}-MiB trace {path}",
            "cut the file (read_trace reads all of it)",
        )
    return read_text(path, "trace")


def read_trace(path: str | Path, format: str = "auto", *, time_unit: TimeUnit = "auto") -> Trace:
    """Read a request trace (formats in the module docstring; `"auto"` detects them).

    Args:
        path: the file.
        format: one of `TRACE_FORMATS` or `"auto"` (from the header or first record).
        time_unit: how the time column is read: `"auto"` (numbers in seconds, or in
            milliseconds for Mooncake and for columns named `*_ms`; anything else as an ISO 8601
            date-time), `"s"`, `"ms"`, `"us"` or `"iso"`.

    Returns:
        a `Trace`, sorted by arrival time, its times in seconds from the first request. Rows
        with an empty time or token field are left out and counted in `Trace.dropped`.

    Raises:
        InputError: naming the file, line and column of a value that is not a time or a
            count, or the missing column.
    """
    if format not in ("auto", *TRACE_FORMATS):
        raise InputError(f"format: one of auto, {', '.join(TRACE_FORMATS)}; got {format!r}")
    text = _read_within_memory(path)
    p = Path(path)
    fmt = _detect(p, text) if format == "auto" else format
    if fmt in ("mooncake", "jsonl"):
        return _read_jsonl(str(p), text, fmt, time_unit)
    return _read_csv(str(p), text, fmt, time_unit)
