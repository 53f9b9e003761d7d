r"""Fitting a batching server's step time $\tau_0 + \tau_1 n$ from serving benchmarks.

Operators already measure this: vLLM's serving benchmark (`vllm bench serve --save-result`,
`vllm/benchmarks/serve.py`, function `main_async` writing the dict that `benchmark()`
returns) saves one JSON file per run with the run's concurrency limit `max_concurrency`
(the observed peak is `max_concurrent_requests`) and the time per output token in
milliseconds, `mean_tpot_ms` / `median_tpot_ms` (per request: (latency - TTFT) / (output
tokens - 1)). At concurrency n, a decode step runs n requests, so TPOT is the step time at
batch size n (the version read is named on the docs page *Continuous batching*).

SGLang's `python -m sglang.bench_serving --output-file F` appends one JSON line per run
(`sglang/benchmark/serving.py` in sglang 0.5.23): `max_concurrency`, `duration`,
`completed`, `request_rate`, `mean_e2e_latency_ms`, the achieved mean `concurrency`, and
`median_itl_ms` / `median_tpot_ms` (older files have ITL only). A request-rate run (no
`max_concurrency`) has no fixed batch size: its mean concurrency is estimated (see
`read_step_times`), and a run that could not keep up with its offered rate is left out.

`fit_step_time` takes such files or a CSV with columns `concurrency, tpot` (seconds; or
`tpot_ms`), and fits the line by least squares, with standard errors from the residual
variance and Student-t intervals. A `FitWarning` says when the step time bends (the rule of
`_bends`, which has power from 3 points: the largest concurrency more than 10% above the line
through the others), when a quadratic term is significant (4 or more points), or when the
slope is not clearly positive. Docs: *Continuous batching*.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from .._errors import InputError
from .._files import csv_rows, parse_number, read_text, text_lines
from .._queue.batching import ContinuousBatching
from .._stats import student_t_quantile
from .fit import FitWarning

__all__ = ["StepTimeFit", "fit_step_time", "read_step_times"]


#: a decode step longer than this is not a measurement of one (units gone wrong)
MAX_STEP_SECONDS = 1e4


@dataclass(frozen=True)
class StepTimeFit:
    """The fitted step time `tau0 + tau1 * n` with standard errors and diagnostics."""

    tau0: float
    tau1: float
    se_tau0: float
    se_tau1: float
    dof: int
    concurrency: np.ndarray
    step_time: np.ndarray
    warnings: tuple[str, ...] = ()
    #: how each kept run's concurrency was obtained (files only)
    methods: tuple[str, ...] = ()
    #: the runs left out of the fit, with why (overloaded request-rate runs)
    excluded: tuple[str, ...] = ()

    def interval(self, name: str, level: float = 0.95) -> tuple[float, float]:
        """Student-t interval for `tau0` or `tau1` at confidence `level` in (0, 1)."""
        params = {"tau0": (self.tau0, self.se_tau0), "tau1": (self.tau1, self.se_tau1)}
        if name not in params:
            raise InputError(f"name: 'tau0' or 'tau1', got {name!r}")
        if isinstance(level, bool) or not (isinstance(level, (int, float)) and 0 < level < 1):
            raise InputError(f"level: a confidence level in (0, 1), got {level!r}")
        value, se = params[name]
        with jax.enable_x64(True):
            q = float(student_t_quantile(0.5 + level / 2, max(self.dof, 1)))
        return value - q * se, value + q * se

    def model(self, **kwargs) -> ContinuousBatching:
        """A `ContinuousBatching` server with this step time (other settings as keywords)."""
        return ContinuousBatching(step_time=(self.tau0, self.tau1), **kwargs)


def _json_records(path: Path, text: str) -> list[tuple[str, object]]:
    """The JSON value of `text`, or of each line of a JSON Lines file, with where it is."""
    try:
        return [(str(path), json.loads(text))]
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply to be a benchmark result") from None
    except json.JSONDecodeError as e:
        lines = [(i + 1, line) for i, line in enumerate(text_lines(text)) if line.strip()]
        if e.msg != "Extra data" or len(lines) < 2:
            raise InputError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    records = []  # JSON Lines: one result a line
    for lineno, line in lines:
        where = f"{path}, line {lineno}"
        try:
            records.append((where, json.loads(line)))
        except RecursionError:
            raise InputError(f"{where}: JSON nested too deeply") from None
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: not valid JSON ({e.msg}; a JSON Lines file)") from None
    return records


@dataclass(frozen=True)
class _Run:
    """One benchmark run: its concurrency, step time, how the concurrency was obtained, and
    why it is left out of the fit (None when it is kept)."""

    concurrency: float
    step_time: float
    method: str
    overloaded: str | None = None


#: a request-rate run completes fewer requests per second than this fraction of its rate:
#: the server could not keep up (the queue grew during the run)
OVERLOAD_FRACTION = 0.9


def _optional(data: dict, where: str, *keys: str) -> tuple[str, float] | None:
    """The first of `keys` present with a non-null value, as a number."""
    for key in keys:
        if data.get(key) is not None:
            return key, parse_number(data[key], f"{where}: field '{key}'", minimum=0)
    return None


def _from_benchmark_result(path: str, data) -> _Run:
    """A run of `vllm bench serve --save-result` or `sglang.bench_serving --output-file`."""
    if not isinstance(data, dict):
        raise InputError(
            f"{path}: expected the JSON object of a vLLM or SGLang serving benchmark result"
        )
    step = _optional(data, path, "median_tpot_ms", "mean_tpot_ms", "median_itl_ms", "mean_itl_ms")
    if step is None:
        raise InputError(
            f"{path}: no 'median_tpot_ms' or 'mean_tpot_ms' (vLLM) value, nor "
            "'median_itl_ms' / 'mean_itl_ms' (SGLang)"
        )
    if not step[1] > 0:
        raise InputError(f"{path}: field '{step[0]}': must be > 0, got {data[step[0]]!r}")
    tpot = step[1] / 1000.0
    n = data.get("max_concurrency")
    if n is not None:
        n = parse_number(n, f"{path}: field 'max_concurrency'", minimum=1)
        return _Run(n, tpot, "max_concurrency")
    # a request-rate run: the mean number in flight, by Little's law or as reported
    duration = _optional(data, path, "duration")
    completed = _optional(data, path, "completed")
    e2e = _optional(data, path, "mean_e2el_ms", "mean_e2e_latency_ms")
    reported = _optional(data, path, "concurrency")  # SGLang: sum of latencies / duration
    throughput = _optional(data, path, "output_throughput")
    if reported is not None and reported[1] > 0:
        n, method = reported[1], "concurrency (reported)"
    elif duration and completed and e2e and duration[1] > 0:
        n = completed[1] / duration[1] * e2e[1] / 1000.0
        method = "Little's law: completed / duration x mean end-to-end latency"
    elif throughput is not None and step[0].endswith("tpot_ms"):
        n, method = throughput[1] * tpot, "output throughput x TPOT"
    else:
        raise InputError(
            f"{path}: no 'max_concurrency': a request-rate run needs 'duration', 'completed' and "
            "a mean end-to-end latency ('mean_e2el_ms' or 'mean_e2e_latency_ms'), or "
            "'concurrency', to estimate its batch size; or run the benchmark with "
            "--max-concurrency N"
        )
    if not n >= 1:
        raise InputError(f"{path}: the estimated concurrency {n:.3g} is below 1 request")
    overloaded = None
    rate = data.get("request_rate")
    if isinstance(rate, (int, float)) and not isinstance(rate, bool) and math.isfinite(rate):
        if duration and completed and duration[1] > 0 and rate > 0:
            achieved = completed[1] / duration[1]
            if achieved < OVERLOAD_FRACTION * rate:
                overloaded = (
                    f"{path}: overloaded: {achieved:.3g} requests/s completed of {rate:g}/s "
                    "offered (the queue grew during the run); left out of the fit"
                )
    return _Run(n, tpot, method, overloaded)


def _from_csv(path: Path, text: str) -> list[tuple[float, float]]:
    header_line, header, rows = csv_rows(text, str(path))
    if "concurrency" not in header or not ({"tpot", "tpot_ms"} & set(header)):
        raise InputError(
            f"{path}, line {header_line}: need columns 'concurrency' and 'tpot' (seconds) or "
            f"'tpot_ms' (header: {', '.join(header)})"
        )
    if {"tpot", "tpot_ms"} <= set(header):
        raise InputError(
            f"{path}, line {header_line}: both 'tpot' and 'tpot_ms' columns; keep one (which "
            "one holds the measurement is ambiguous)"
        )
    col = "tpot" if "tpot" in header else "tpot_ms"
    scale = 1.0 if col == "tpot" else 1e-3
    out = []
    for lineno, values in rows:
        where = f"{path}, line {lineno}: column"
        n = parse_number(values["concurrency"], f"{where} 'concurrency'", minimum=1)
        t = parse_number(values[col], f"{where} '{col}'", positive=True)
        out.append((n, t * scale))
    if not out:
        raise InputError(f"{path}: no data rows")
    return out


def _read_runs(*paths: str | Path) -> list[_Run]:
    if not paths:
        raise InputError("give at least one benchmark JSON or CSV file")
    runs: list[_Run] = []
    for p in paths:
        path = Path(p)
        text = read_text(p, "step-time measurements")
        if path.suffix.lower() in (".json", ".jsonl") or text.lstrip().startswith("{"):
            for where, record in _json_records(path, text):
                runs.append(_from_benchmark_result(where, record))
        else:
            runs.extend(_Run(a, b, "csv") for a, b in _from_csv(path, text))
    return runs


def read_step_times(*paths: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(concurrency, step time in seconds) from benchmark result files and/or CSV files.

    Reads `vllm bench serve --save-result` output (one JSON object, or JSON Lines with
    `--append-result`), SGLang `bench_serving --output-file` JSON Lines, and CSV files with
    `concurrency, tpot` (seconds) or `tpot_ms`. A run with `max_concurrency` gives its batch
    size; a request-rate run's is estimated (SGLang's reported `concurrency`, else Little's
    law from `completed`, `duration` and the mean end-to-end latency, else output throughput
    x TPOT). The step time is the median (else mean) TPOT, or for SGLang files without TPOT the
    median (else mean) ITL. Request-rate runs that completed fewer than `OVERLOAD_FRACTION` of
    their offered requests per second were overloaded: they are left out, with a
    `FitWarning`.
    """
    runs = _read_runs(*paths)
    for run in runs:
        if run.overloaded:
            warnings.warn(run.overloaded, FitWarning, stacklevel=2)
    kept = [r for r in runs if not r.overloaded]
    if not kept:
        raise InputError("every run was overloaded: no step time can be fitted from them")
    return (
        np.asarray([r.concurrency for r in kept], dtype=np.float64),
        np.asarray([r.step_time for r in kept], dtype=np.float64),
    )


def fit_step_time(*sources, concurrency=None, step_time=None) -> StepTimeFit:
    r"""Fit $\tau_0 + \tau_1 n$ to step times measured at concurrencies $n$.

    Give files (`fit_step_time("c1.json", "c8.json", ...)`, `fit_step_time("tpot.csv")`) or
    arrays (`concurrency=..., step_time=...` in seconds). Needs at least 3 distinct
    concurrencies. Emits a `FitWarning` when a quadratic term is significant (p < 0.01: the
    step time is not linear in the batch size over the measured range) or when $\tau_1$ is
    not clearly positive.
    """
    if sources and (concurrency is not None or step_time is not None):
        raise InputError("give files or concurrency/step_time arrays, not both")
    methods: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()
    if sources:
        runs = _read_runs(*sources)
        excluded = tuple(r.overloaded for r in runs if r.overloaded)
        kept = [r for r in runs if not r.overloaded]
        for note in excluded:
            warnings.warn(note, FitWarning, stacklevel=2)
        if not kept:
            raise InputError("every run was overloaded: no step time can be fitted from them")
        n = np.asarray([r.concurrency for r in kept], dtype=np.float64)
        t = np.asarray([r.step_time for r in kept], dtype=np.float64)
        methods = tuple(r.method for r in kept)
        where = ", ".join(str(s) for s in sources)
    else:
        if concurrency is None or step_time is None:
            raise InputError("give files, or both concurrency and step_time")
        try:
            n = np.asarray(concurrency, dtype=np.float64).ravel()
            t = np.asarray(step_time, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            raise InputError("concurrency, step_time: expected sequences of numbers") from None
        where = "measurements"
        if n.shape != t.shape:
            raise InputError(f"concurrency and step_time differ in length: {n.size} vs {t.size}")
        if not (np.all(np.isfinite(n)) and np.all(n >= 1)):
            raise InputError("concurrency: every value must be finite and >= 1")
        if not (np.all(np.isfinite(t)) and np.all(t > 0)):
            raise InputError("step_time: every value must be finite and > 0 seconds")
    if np.any(t > MAX_STEP_SECONDS):
        raise InputError(
            f"{where}: a step time of {float(np.max(t)):.3g} s is not a decode step (at most "
            f"{MAX_STEP_SECONDS:g} s); check the units (tpot_ms is milliseconds)"
        )
    if np.unique(n).size < 3:
        raise InputError(
            f"{where}: need step times at 3 or more distinct concurrencies to fit tau0, tau1 "
            f"with standard errors (got {np.unique(n).size})"
        )
    X = np.stack([np.ones_like(n), n], 1)
    beta, *_ = np.linalg.lstsq(X, t, rcond=None)
    r = t - X @ beta
    dof = n.size - 2
    sigma2 = float(r @ r) / max(dof, 1)
    cov = sigma2 * np.linalg.inv(X.T @ X)
    se = np.sqrt(np.clip(np.diag(cov), 0, None))
    notes = []
    bend = _bends(n, t)
    if bend is not None:
        notes.append(
            f"{where}: the step time bends upward: at concurrency {n.max():g} it is {bend:.0%} "
            "above the line through the smaller concurrencies (the server saturates, or "
            "attention cost grows with the batch); the fitted line overstates capacity there"
        )
    elif np.unique(n).size >= 4:
        X2 = np.stack([np.ones_like(n), n, n * n], 1)
        b2, *_ = np.linalg.lstsq(X2, t, rcond=None)
        r2 = t - X2 @ b2
        dof2 = n.size - 3
        s2 = float(r2 @ r2) / max(dof2, 1)
        se2 = math.sqrt(max(s2 * np.linalg.inv(X2.T @ X2)[2, 2], 0.0))
        z = abs(b2[2]) / se2 if se2 > 0 else (math.inf if b2[2] != 0 else 0.0)
        with jax.enable_x64(True):
            crit = float(student_t_quantile(0.995, max(dof2, 1)))
        if z > crit and float(np.ptp(X2 @ b2 - X @ beta)) > 1e-3 * float(np.mean(t)):
            notes.append(
                f"{where}: the step time is not linear in the batch size (quadratic term "
                f"{b2[2]:.3g} s per request^2, {z:.1f} standard errors): the fitted line is "
                f"an approximation over concurrencies {n.min():g}-{n.max():g}"
            )
    with jax.enable_x64(True):
        q95 = float(student_t_quantile(0.975, max(dof, 1)))
    if not beta[1] > q95 * se[1]:  # the reported 95% interval of tau1 holds 0
        notes.append(
            f"{where}: the step time does not clearly grow with the batch size (tau1 = "
            f"{beta[1]:.3g} s, 95% interval [{beta[1] - q95 * se[1]:.3g}, "
            f"{beta[1] + q95 * se[1]:.3g}]): a batching model with this slope may have almost "
            "unlimited capacity; check the measurements"
        )
    for note in notes:
        warnings.warn(note, FitWarning, stacklevel=2)
    if not (beta[0] >= 0 or beta[0] > -3 * se[0]):
        raise InputError(
            f"{where}: fitted tau0 = {beta[0]:.3g} s < 0: the step time line does not fit"
        )
    if not beta[1] > 0:
        raise InputError(f"{where}: fitted tau1 = {beta[1]:.3g} s <= 0: no batching model fits")
    return StepTimeFit(
        tau0=max(float(beta[0]), 0.0),
        tau1=float(beta[1]),
        se_tau0=float(se[0]),
        se_tau1=float(se[1]),
        dof=dof,
        concurrency=n,
        step_time=t,
        warnings=tuple(notes),
        methods=methods,
        excluded=excluded,
    )


#: the step time at the largest concurrency exceeds the line through the others by more than
#: this fraction (and more than three times their relative residual): it bends
BEND_FRACTION = 0.1


def _bends(n: np.ndarray, t: np.ndarray) -> float | None:
    """How far above the line through the smaller concurrencies the largest one's step time
    lies (a fraction), when that is more than `BEND_FRACTION` and beyond the noise; else None.
    Needs 3 distinct concurrencies (2 to draw the line, 1 to test)."""
    top = n == n.max()
    if np.unique(n[~top]).size < 2:
        return None
    X = np.stack([np.ones_like(n[~top]), n[~top]], 1)
    beta, *_ = np.linalg.lstsq(X, t[~top], rcond=None)
    r = t[~top] - X @ beta
    noise = float(np.sqrt(np.mean((r / t[~top]) ** 2))) if r.size > 2 else 0.0
    predicted = beta[0] + beta[1] * n.max()
    if not predicted > 0:
        return None
    excess = float(np.mean(t[top]) / predicted - 1)
    return excess if excess > max(BEND_FRACTION, 3 * noise) else None
