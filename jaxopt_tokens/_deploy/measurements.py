"""Measurement tables for model fitting: reading, checking, and a synthetic Table I set.

A measurement file is a CSV with a header row and one row per (task, budget) cell or per
request. Columns (order free, names case-insensitive; lines starting with `#` are comments):

- `task` (text) and `budget` (reasoning-token budget, >= 0) -- required;
- accuracy, one of: `n_correct` and `n_total` (counts, `0 <= n_correct <= n_total`), or
  `accuracy` in [0, 1] with an optional `n_total` (default 1: one graded request per row);
- `latency` (seconds, > 0), optional: the mean latency of the row's requests, weighted by
  `n_latency` if given, else by `n_total`, else 1.

A request log (`--shares`) is a CSV with `task` and either `share`, `count`, or one row per
request (shares are then the empirical frequencies); an optional time column
(`arrival_time`, `timestamp` or `time`: seconds, milliseconds or ISO 8601 date-times) also
gives the arrival rate, (requests - 1) / (last - first arrival). Without a `task` column a
request log is one task's, or is labelled by bands of a token column (`read_request_log`).
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from .._errors import InputError
from .._files import csv_rows, parse_number, read_text
from .._objective import task_accuracy
from .._traffic.stats import TrafficWarning, rate_warnings
from .._traffic.trace import TIME_COLUMNS, Trace, read_trace
from .._workload import Workload

__all__ = [
    "Measurements",
    "read_measurements",
    "parse_measurements",
    "read_request_log",
    "synthetic_measurements",
    "SYNTHETIC_BUDGETS",
]

SYNTHETIC_BUDGETS = (0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


@dataclass(frozen=True)
class Measurements:
    """Rows of a measurement table, as numpy arrays (one entry per row), and the task order.

    Attributes:
        tasks: the task names, in the order of first appearance.
        task_index: each row's task, an index into `tasks`.
        budget: each row's budget (tokens).
        n_correct: each row's correct answers.
        n_total: each row's graded answers.
        latency: each row's mean latency (s; NaN without one).
        latency_weight: each row's weight in the latency fit (its requests; 0 without latency).
        source: the file the rows came from.
    """

    tasks: tuple[str, ...]
    task_index: np.ndarray  # (rows,) int: position of the row's task in `tasks`
    budget: np.ndarray
    n_correct: np.ndarray  # may be fractional when given as accuracy * n_total
    n_total: np.ndarray
    latency: np.ndarray  # NaN where the row has no latency
    latency_weight: np.ndarray
    source: str = "<table>"

    def rows_of(self, k: int) -> np.ndarray:
        return np.flatnonzero(self.task_index == k)


def _float(row: dict, column: str, lineno: int, source: str) -> float:
    return parse_number(row[column], f"{source}, line {lineno}: column '{column}'")


def parse_measurements(text: str, source: str = "<text>") -> Measurements:
    """Parse and check a measurement CSV (see the module docstring); errors name the line.

    Args:
        text: the CSV text.
        source: the name errors give for it.

    Returns:
        The `Measurements`.
    """
    header_line, header, rows = csv_rows(text, source)
    where0 = f"{source}, line {header_line}"
    for col in ("task", "budget"):
        if col not in header:
            raise InputError(f"{where0}: missing column '{col}' (header: {', '.join(header)})")
    counts = "n_correct" in header
    if counts and "n_total" not in header:
        raise InputError(f"{where0}: column 'n_correct' needs 'n_total'")
    if not counts and "accuracy" not in header:
        raise InputError(
            f"{where0}: missing accuracy: give 'n_correct' and 'n_total', or 'accuracy'"
        )
    if not rows:
        raise InputError(f"{source}: no data rows")
    tasks: list[str] = []
    idx, budget, n_correct, n_total, latency, lat_w = [], [], [], [], [], []
    for lineno, row in rows:
        where = f"{source}, line {lineno}"
        name = row["task"]
        if not name:
            raise InputError(f"{where}: column 'task' is empty")
        if name not in tasks:
            tasks.append(name)
        idx.append(tasks.index(name))
        l = _float(row, "budget", lineno, source)
        if l < 0:
            raise InputError(f"{where}: column 'budget' must be >= 0, got {row['budget']}")
        budget.append(l)
        n = _float(row, "n_total", lineno, source) if "n_total" in header else 1.0
        if n <= 0:
            raise InputError(f"{where}: column 'n_total' must be > 0, got {row['n_total']}")
        if counts:
            c = _float(row, "n_correct", lineno, source)
            if c < 0:
                raise InputError(
                    f"{where}: column 'n_correct' must be >= 0, got {row['n_correct']}"
                )
            if c > n:
                raise InputError(
                    f"{where}: n_correct ({row['n_correct']}) > n_total ({row['n_total']})"
                )
        else:
            a = _float(row, "accuracy", lineno, source)
            if not 0 <= a <= 1:
                raise InputError(
                    f"{where}: column 'accuracy' must be in [0, 1], got {row['accuracy']}"
                )
            c = a * n
        n_correct.append(c)
        n_total.append(n)
        if "latency" in header and row["latency"] != "":
            t = _float(row, "latency", lineno, source)
            if t <= 0:
                raise InputError(
                    f"{where}: column 'latency' must be > 0 seconds, got {row['latency']}"
                )
            wt = _float(row, "n_latency", lineno, source) if "n_latency" in header else n
            if wt <= 0:
                raise InputError(f"{where}: column 'n_latency' must be > 0, got {row['n_latency']}")
        else:
            t, wt = math.nan, 0.0
        latency.append(t)
        lat_w.append(wt)
    return Measurements(
        tasks=tuple(tasks),
        task_index=np.asarray(idx),
        budget=np.asarray(budget),
        n_correct=np.asarray(n_correct),
        n_total=np.asarray(n_total),
        latency=np.asarray(latency),
        latency_weight=np.asarray(lat_w),
        source=source,
    )


def read_measurements(path: str | Path) -> Measurements:
    """Read a measurement CSV file; raises `InputError` naming the file, line and column.

    Args:
        path: the CSV file.

    Returns:
        The `Measurements`.
    """
    text = read_text(path, "measurements")
    return parse_measurements(text, str(path))


def read_request_log(
    path: str | Path,
    tasks: tuple[str, ...],
    *,
    bands: dict[str, float] | None = None,
    band_column: str = "output_tokens",
    window: float = 60.0,
) -> tuple[np.ndarray, float | None]:
    """Task shares (in the order of `tasks`) and, if the log has arrival times, the mean
    arrival rate.

    The log is a CSV with `task` and `share` or `count` (a share table), or one row per
    request. A request log's time column (`arrival_time`, `timestamp` or `time`) may hold
    seconds, milliseconds (a name ending in `_ms`) or ISO 8601 date-times, as `read_trace`
    reads them. Without a `task` column the requests are one task's (when `tasks` has one),
    or are labelled by `bands` of `band_column` (`Trace.labelled`, e.g. `{"short": 512,
    "long": math.inf}` on `output_tokens`). A `TrafficWarning` says when one mean rate
    misrepresents the log (`rate_warnings` at `window` seconds).

    Args:
        path: the CSV file.
        tasks: the workload's task names, in order.
        bands: task name -> largest `band_column` value of the band, for logs without a `task`
            column.
        band_column: the column the bands are read from.
        window: the window length (s) at which the rate is checked for a warning.

    Returns:
        `(shares in task order, mean arrival rate or None)`.
    """
    text = read_text(path, "request log")
    source = str(path)
    header_line, header, rows = csv_rows(text, source)
    time_col = next((c for c in TIME_COLUMNS if c in header), None)
    if "task" not in header:
        if bands is None and len(tasks) != 1:
            raise InputError(
                f"{source}, line {header_line}: missing column 'task' (a log without one is "
                f"one task's, or labelled by bands of a token column; {len(tasks)} tasks "
                "measured)"
            )
    elif bands is not None:
        raise InputError(f"{source}: bands label a log without a 'task' column; this one has it")
    column = "share" if "share" in header else "count" if "count" in header else None
    names, weights = [], []
    seen: dict[str, int] = {}
    for lineno, row in rows if "task" in header else ():
        if column is not None and row["task"] in seen:  # a share table: one row a task
            raise InputError(
                f"{source}, line {lineno}: task {row['task']!r} again (first on line "
                f"{seen[row['task']]}): a share table has one row per task"
            )
        seen[row["task"]] = lineno
        if not row["task"]:
            raise InputError(
                f"{source}, line {lineno}: no task: the shares need a task on every request "
                "(label it, or remove the row)"
            )
        if row["task"] not in tasks:
            raise InputError(
                f"{source}, line {lineno}: task {row['task']!r} is not in the measurements "
                f"({', '.join(tasks)})"
            )
        value = 1.0 if column is None else _float(row, column, lineno, source)
        if value < 0:
            raise InputError(
                f"{source}, line {lineno}: column '{column}' must be >= 0, got {row[column]}"
            )
        names.append(row["task"])
        weights.append(value)
    if "task" in header and time_col is None:  # a share table, or requests without times
        return _shares(tuple(names), tasks, source, np.asarray(weights)), None
    if "task" in header and column is not None:
        raise InputError(
            f"{source}, line {header_line}: a share table ('{column}') has no arrival times; "
            f"drop column '{time_col}' or give one row per request"
        )
    # one row per request with arrival times: the shares and the rate from the same requests
    # (`read_trace` drops rows without a time, and reads a 'task' column as the labels)
    trace = read_trace(path, "csv")
    if bands is not None:
        trace = trace.labelled(bands, band_column)
    elif "task" not in header:
        trace = replace(trace, labels=(tasks[0],) * len(trace))
    if trace.labels is None:  # a 'task' column some requests lack
        why = "; ".join(r for r, _ in trace.dropped)
        raise InputError(
            f"{source}: the shares need a task on every request ({why}): label them, or "
            "remove the rows (the rate would then leave those requests out too)"
        )
    _warn_rates(trace, window)
    return _shares(trace.labels, tasks, source, None), trace.mean_rate


def _warn_rates(trace: Trace, window: float) -> None:
    for note in rate_warnings(trace, window):
        warnings.warn(
            f"{note}: the mean rate {trace.mean_rate:.4g}/s misrepresents it (see "
            "`jaxopt-tokens trace`, plan_windows)",
            TrafficWarning,
            stacklevel=3,
        )


def _shares(labels, tasks: tuple[str, ...], source: str, weights) -> np.ndarray:
    weight = np.zeros(len(tasks))
    index = {t: k for k, t in enumerate(tasks)}
    for i, name in enumerate(labels):
        if name not in index:
            raise InputError(
                f"{source}: task {name!r} is not in the measurements ({', '.join(tasks)})"
            )
        weight[index[name]] += 1.0 if weights is None else weights[i]
    if not np.any(weight > 0):
        raise InputError(f"{source}: no requests (all shares or counts are zero)")
    missing = [t for t, x in zip(tasks, weight) if x == 0]
    if missing:
        raise InputError(
            f"{source}: no requests for task(s) {missing}; every measured task needs a share > 0"
        )
    weight = weight / weight.max()  # first, so that huge counts cannot overflow the sum
    return weight / weight.sum()


def synthetic_measurements(
    workload: Workload,
    key: PRNGKeyArray,
    budgets: Sequence[float] = SYNTHETIC_BUDGETS,
    *,
    questions: int = 250,
    runs: int = 3,
    latency_cv: float = 0.25,
) -> str:
    """A synthetic measurement CSV drawn from a workload's curves, the way the paper measured.

    For every task and budget: `questions * runs` graded requests, each correct with
    probability $p_k(l)$ (eq. (2)) independently (so `n_correct ~ Binomial`), and their mean
    latency, each request taking $t_k(l) = t_{0k} + c_k l$ (eq. (1)) times a log-normal
    factor of mean 1 and coefficient of variation `latency_cv`. Returns the CSV text, with a
    comment header saying it is synthetic.

    Args:
        workload: the workload whose curves are drawn from.
        key: the random key.
        budgets: the budgets measured.
        questions: questions per budget.
        runs: runs per question.
        latency_cv: the coefficient of variation of a request's latency.

    Returns:
        The CSV text.
    """
    w = workload
    n = questions * runs
    l = jnp.asarray(budgets, w.dtype)
    grid = jnp.broadcast_to(l[:, None], (len(budgets), w.num_tasks))
    p = task_accuracy(grid, w)
    k_acc, k_lat = jax.random.split(key)
    correct = jax.random.binomial(k_acc, n, p, shape=p.shape)
    sigma2 = math.log1p(latency_cv**2)
    z = jax.random.normal(k_lat, (len(budgets), w.num_tasks, n), w.dtype)
    factors = jnp.exp(math.sqrt(sigma2) * z - sigma2 / 2)
    latency = jnp.mean((w.t0 + w.c * grid)[..., None] * factors, axis=-1)
    out = io.StringIO()
    out.write(
        "# SYNTHETIC measurements (not real model runs), generated by "
        "jaxopt_tokens.deploy.synthetic_measurements\n"
        f"# from the curves of the paper's Table I: {questions} questions x {runs} runs per "
        "task and budget,\n"
        "# correctness Bernoulli(p_k(l)), latency = (t0 + c l) x lognormal(mean 1, cv "
        f"{latency_cv}),\n"
        "# `latency` is the mean over the row's requests.\n"
    )
    out.write("task,budget,n_correct,n_total,latency\n")
    for k, name in enumerate(w.task_names):
        for j, b in enumerate(budgets):
            out.write(f"{name},{b},{int(correct[j, k])},{n},{float(latency[j, k]):.6f}\n")
    return out.getvalue()
