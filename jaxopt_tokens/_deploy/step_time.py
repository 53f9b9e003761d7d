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
from dataclasses import dataclass, replace
from pathlib import Path

import jax
import numpy as np
from jaxtyping import ArrayLike

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
    """The fitted step time `tau0 + tau1 * n` with standard errors and diagnostics.

    Attributes:
        tau0: seconds per step with no request running.
        tau1: seconds per step per running request.
        se_tau0: standard error of `tau0`.
        se_tau1: standard error of `tau1`.
        dof: residual degrees of freedom.
        concurrency: the concurrencies fitted.
        step_time: the step times fitted (s).
        warnings: what the fit flags.
        methods: how each run's step time was read.
        excluded: the runs left out (overloaded), and why.
    """

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
    """One benchmark run: its concurrency, step time, how the concurrency was obtained,
    where it is, what sets its step time (`group`), and why it is left out of the fit
    (None when it is kept)."""

    concurrency: float
    step_time: float
    method: str
    where: str = ""
    group: tuple = ()
    overloaded: str | None = None


#: while requests arrived, a request-rate run completed fewer requests per second than
#: this fraction of its rate: the server could not keep up (the queue grew during the run)
OVERLOAD_FRACTION = 0.9
#: the physical range of a batch size (requests decoding together)
MAX_CONCURRENCY = 1e7
#: a decode step shorter than this is not a measurement of one (units gone wrong)
MIN_STEP_SECONDS = 1e-7
#: two runs' mean tokens per request within this factor are the same workload
SAME_WORKLOAD = 1.25


def _optional(data: dict, where: str, *keys: str) -> tuple[str, float] | None:
    """The first of `keys` present with a non-null value, as a number."""
    for key in keys:
        if data.get(key) is not None:
            return key, parse_number(data[key], f"{where}: field '{key}'", minimum=0)
    return None


def _rate(data: dict, where: str) -> float | None:
    """The offered request rate: a number, `inf` (written "inf", Infinity or null by the
    benchmarks), or None when the file has none."""
    rate = data.get("request_rate")
    if rate is None or (isinstance(rate, str) and rate.strip().lower() in ("inf", "infinity")):
        return math.inf if "request_rate" in data else None
    return parse_number(rate, f"{where}: field 'request_rate'", finite=False, minimum=0)


def _keys(data: dict) -> str:
    names = sorted(map(str, data))
    return ", ".join(names[:25]) + (f", ... ({len(names)} keys)" if len(names) > 25 else "")


def _from_benchmark_result(where: str, data) -> _Run:
    """A run of `vllm bench serve --save-result`, `sglang.bench_serving --output-file`, an
    aiperf / genai-perf profile export, or an InferenceX result."""
    if not isinstance(data, dict):
        raise InputError(
            f"{where}: expected the JSON object of a vLLM or SGLang serving benchmark result"
        )
    if isinstance(data.get("inter_token_latency"), dict):
        return _from_profile_export(where, data)
    if "median_tpot" in data or "mean_tpot" in data:
        return _from_inferencex(where, data)
    step = _optional(data, where, "median_tpot_ms", "mean_tpot_ms", "median_itl_ms", "mean_itl_ms")
    if step is None:
        raise InputError(
            f"{where}: not a serving-benchmark result this reader knows: no 'median_tpot_ms' or "
            "'mean_tpot_ms' (vLLM), 'median_itl_ms' (SGLang), 'inter_token_latency' (aiperf, "
            f"genai-perf) or 'median_tpot' (InferenceX); the file has: {_keys(data)}"
        )
    if not step[1] > 0:
        raise InputError(f"{where}: field '{step[0]}': must be > 0, got {data[step[0]]!r}")
    tpot = step[1] / 1000.0
    rate = _rate(data, where)
    completed = _optional(data, where, "completed")
    group = _group(data, completed[1] if completed else None)
    n = data.get("max_concurrency")
    if n is not None:
        n = parse_number(n, f"{where}: field 'max_concurrency'", minimum=1)
        return _Run(n, tpot, "max_concurrency", where, group)
    n, method = _batch(data, where, step[0], tpot)
    return _Run(n, tpot, method, where, group, _overloaded(data, where, rate, completed))


def _batch(data: dict, where: str, step_key: str, tpot: float) -> tuple[float, str]:
    """A request-rate (or unlimited) run's mean decode batch: output throughput x the step
    time (tokens per second x seconds per token of one request), else the reported mean
    concurrency, else Little's law; the last two count queued requests too."""
    throughput = _optional(data, where, "output_throughput")
    duration = _optional(data, where, "duration")
    completed = _optional(data, where, "completed")
    e2e = _optional(data, where, "mean_e2el_ms", "mean_e2e_latency_ms", "mean_latency_ms")
    reported = _optional(data, where, "concurrency")  # SGLang: sum of latencies / duration
    unit = "TPOT" if step_key.endswith("tpot_ms") else "ITL"
    if throughput is not None and throughput[1] > 0:
        n, method = throughput[1] * tpot, f"output throughput x {unit} (the mean decode batch)"
    elif reported is not None and reported[1] > 0:
        n, method = reported[1], "concurrency (reported; counts queued requests too)"
    elif duration and completed and e2e and duration[1] > 0:
        n = completed[1] / duration[1] * e2e[1] / 1000.0
        method = "Little's law: completed / duration x mean end-to-end latency (counts queued too)"
    else:
        raise InputError(
            f"{where}: no 'max_concurrency': a request-rate run needs 'output_throughput' (or "
            "'concurrency', or 'duration', 'completed' and a mean end-to-end latency) to "
            "estimate its batch size; or run the benchmark with --max-concurrency N; the "
            f"file has: {_keys(data)}"
        )
    if not math.isfinite(n):
        raise InputError(f"{where}: the estimated concurrency is not finite ({method})")
    if not n >= 1:
        raise InputError(f"{where}: the estimated concurrency {n:.3g} is below 1 request")
    return n, method


def _overloaded(data: dict, where: str, rate: float | None, completed) -> str | None:
    """Why a request-rate run could not keep up, judged while requests arrived: the
    requests completed per second of the sending phase (the run's duration less the drain
    after the last arrival, about one mean latency) against the offered rate."""
    duration = _optional(data, where, "duration")
    if rate is None or not math.isfinite(rate) or rate <= 0 or not (duration and completed):
        return None
    e2e = _optional(data, where, "mean_e2el_ms", "mean_e2e_latency_ms", "mean_latency_ms")
    if e2e is not None:
        drain = e2e[1] / 1000.0
    else:  # one request's latency: its first token, then its output tokens at the TPOT
        ttft = _optional(data, where, "mean_ttft_ms", "median_ttft_ms")
        tpot = _optional(data, where, "median_tpot_ms", "mean_tpot_ms", "median_itl_ms")
        tokens = _optional(data, where, "total_output_tokens")
        drain = (ttft[1] / 1000.0 if ttft else 0.0) + (
            tokens[1] / completed[1] * tpot[1] / 1000.0 if tokens and tpot and completed[1] else 0.0
        )
    sending = duration[1] - drain
    offered = _optional(data, where, "num_prompts")
    if offered is not None and completed[1] < OVERLOAD_FRACTION * offered[1]:
        return (
            f"{where}: overloaded: {completed[1]:g} of {offered[1]:g} requests completed; "
            "left out of the fit"
        )
    achieved = completed[1] / sending if sending > 0 else 0.0
    if achieved < OVERLOAD_FRACTION * rate:
        return (
            f"{where}: overloaded: {achieved:.3g} requests/s completed while requests arrived "
            f"(completed / (duration - mean latency)) of {rate:g}/s offered; left out of the fit"
        )
    return None


#: string fields of a benchmark result that vary from run to run of one deployment
_RUN_FIELDS = {"date", "timestamp", "start_time", "end_time", "request_rate", "run_id", "label"}


def _group(data: dict, completed: float | None) -> tuple:
    """What sets a run's step time besides the batch: the result's descriptive fields (model,
    engine, dataset, deployment labels: every string or boolean field but the run's own),
    the configured lengths, and the mean tokens per request (compared by `_split`)."""
    fixed = tuple(
        sorted(
            (str(k), v)
            for k, v in data.items()
            if isinstance(v, (str, bool)) and str(k).lower() not in _RUN_FIELDS
        )
    )
    fixed += tuple(
        (k, data[k]) for k in ("random_input_len", "random_output_len") if data.get(k) is not None
    )
    means = []
    for key in ("total_input_tokens", "total_output_tokens"):
        v = data.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and completed:
            means.append(float(v) / completed if math.isfinite(v) else None)
        else:
            means.append(None)
    return fixed + (("means", tuple(means)),)


def _stat(data: dict, key: str, where: str) -> tuple[float, str] | None:
    """(value, unit) of an aiperf / genai-perf metric: `{"unit", "p50", "avg", ...}`."""
    metric = data.get(key)
    if not isinstance(metric, dict):
        return None
    for stat in ("p50", "avg"):
        if metric.get(stat) is not None:
            value = parse_number(metric[stat], f"{where}: field '{key}.{stat}'", minimum=0)
            return value, str(metric.get("unit", ""))
    return None


_SECONDS = {"ms": 1e-3, "s": 1.0, "sec": 1.0, "us": 1e-6, "ns": 1e-9}


def _from_profile_export(where: str, data: dict) -> _Run:
    """An aiperf (`profile_export_aiperf.json`) or genai-perf (`profile_export_genai_perf.json`)
    run: the median inter-token latency at the run's concurrency (`input_config`'s load
    phase or `concurrency`), else output token throughput x ITL."""
    itl = _stat(data, "inter_token_latency", where)
    if itl is None or itl[1] not in _SECONDS:
        raise InputError(
            f"{where}: field 'inter_token_latency': needs p50 or avg in ms, s or us (got "
            f"{data.get('inter_token_latency')!r:.80})"
        )
    step = itl[0] * _SECONDS[itl[1]]
    if not step > 0:
        raise InputError(f"{where}: field 'inter_token_latency': must be > 0")
    raw = data.get("input_config")
    config: dict = raw if isinstance(raw, dict) else {}
    n = None
    phases = config.get("phases")
    if isinstance(phases, list):
        for phase in phases:
            if isinstance(phase, dict) and phase.get("concurrency") is not None:
                n = parse_number(
                    phase["concurrency"], f"{where}: field 'phases.concurrency'", minimum=1
                )
    if n is None and config.get("concurrency") is not None:
        n = parse_number(
            config["concurrency"], f"{where}: field 'input_config.concurrency'", minimum=1
        )
    model = config.get("model_names") or config.get("model")
    group = (("model", json.dumps(model, sort_keys=True)),)
    if n is not None:
        return _Run(n, step, "concurrency (load generator)", where, group)
    throughput = _stat(data, "output_token_throughput", where)
    if throughput is None:
        raise InputError(
            f"{where}: no concurrency in 'input_config' and no 'output_token_throughput' to "
            f"estimate it from; the file has: {_keys(data)}"
        )
    return _Run(
        throughput[0] * step, step, "output throughput x ITL (the mean decode batch)", where, group
    )


def _from_inferencex(where: str, data: dict) -> _Run:
    """An InferenceX (InferenceMAX) aggregated result: `conc` and `median_tpot` in seconds."""
    key = "median_tpot" if data.get("median_tpot") is not None else "mean_tpot"
    step = parse_number(data.get(key), f"{where}: field '{key}' (seconds)", positive=True)
    if data.get("conc") is None:
        raise InputError(f"{where}: no 'conc' (the run's concurrency); the file has: {_keys(data)}")
    n = parse_number(data["conc"], f"{where}: field 'conc'", minimum=1)
    group = tuple(
        (k, data.get(k))
        for k in ("model", "framework", "hw", "isl", "osl", "tp", "precision")
        if data.get(k) is not None
    )
    return _Run(n, step, "conc", where, group)


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
    seen: dict[str, str] = {}
    for p in paths:
        path = Path(p)
        text = read_text(p, "step-time measurements")
        if path.suffix.lower() in (".json", ".jsonl") or text.lstrip().startswith("{"):
            for where, record in _json_records(path, text):
                key = json.dumps(record, sort_keys=True, default=str)
                if key in seen:
                    raise InputError(
                        f"{where}: the same run as {seen[key]} (a file given twice, or a run "
                        "appended twice): it would count twice in the fit"
                    )
                seen[key] = where
                runs.append(_from_benchmark_result(where, record))
        else:
            runs.extend(
                _Run(a, b, "csv", f"{path}, row {i + 1}")
                for i, (a, b) in enumerate(_from_csv(path, text))
            )
    return runs


def _split(runs: list[_Run]) -> list[list[_Run]]:
    """The runs in groups of one deployment and workload: same model, engine and dataset,
    and mean tokens per request within `SAME_WORKLOAD` of the group's first run."""
    groups: list[list[_Run]] = []
    for run in runs:
        fixed = run.group[:-1] if run.group and run.group[-1][0] == "means" else run.group
        means = run.group[-1][1] if run.group and run.group[-1][0] == "means" else ()
        for g in groups:
            first = g[0].group
            g_fixed = first[:-1] if first and first[-1][0] == "means" else first
            g_means = first[-1][1] if first and first[-1][0] == "means" else ()
            close = all(
                a is None or b is None or max(a, b) <= SAME_WORKLOAD * max(min(a, b), 1e-9)
                for a, b in zip(means, g_means)
            )
            if fixed == g_fixed and close:
                g.append(run)
                break
        else:
            groups.append([run])
    return groups


def _describe_group(i: int, runs: list[_Run]) -> str:
    parts = []
    for key, value in runs[0].group:
        if key == "means":
            names = ("input", "output")
            parts += [f"{n} {v:.0f} tokens/request" for n, v in zip(names, value) if v is not None]
        else:
            parts.append(f"{key} {str(value)[-40:]}")  # a model path's tail names it
    return (
        f"group {i}: {', '.join(parts) or 'no description'} ({len(runs)} runs: {runs[0].where}...)"
    )


def _select(runs: list[_Run], group: int | None) -> list[_Run]:
    """The runs of one group: the only one, or the `group`-th (from 1) of a mixed input."""
    groups = _split(runs)
    if group is None:
        if len(groups) == 1:
            return groups[0]
        listing = "; ".join(_describe_group(i + 1, g) for i, g in enumerate(groups))
        raise InputError(
            f"the runs come from {len(groups)} deployments or workloads (what sets the step "
            f"time differs): {listing}. Fit one: --group N (group=N)"
        )
    if isinstance(group, bool) or not isinstance(group, int) or not 1 <= group <= len(groups):
        raise InputError(f"group: a group number from 1 to {len(groups)}, got {group!r}")
    return groups[group - 1]


def read_step_times(*paths: str | Path, group: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(concurrency, step time in seconds) from benchmark result files and/or CSV files.

    Reads `vllm bench serve --save-result` output (one JSON object, or JSON Lines with
    `--append-result`), SGLang `bench_serving --output-file` JSON Lines, aiperf and
    genai-perf profile exports, InferenceX results, and CSV files with `concurrency, tpot`
    (seconds) or `tpot_ms`. A run with `max_concurrency` (or a load generator's concurrency)
    gives its batch size; a request-rate or unlimited run's is its mean decode batch, output
    throughput x TPOT (or ITL), else SGLang's reported `concurrency`, else Little's law. The
    step time is the median (else mean) TPOT, or ITL where a file has no TPOT. Request-rate
    runs that completed fewer than `OVERLOAD_FRACTION` of their offered rate while requests
    arrived are left out, with a `FitWarning`. Runs of different deployments or workloads are
    refused unless `group` picks one (numbered from 1 in the refusal); the same run given
    twice is refused.

    Args:
        *paths: benchmark result files or CSV files.
        group: the deployment to read from a mixed input.

    Returns:
        `(concurrency, step time in seconds)` as numpy arrays.
    """
    runs = _select(_read_runs(*paths), group)
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


def fit_step_time(
    *sources: str | Path,
    concurrency: ArrayLike | None = None,
    step_time: ArrayLike | None = None,
    group: int | None = None,
) -> StepTimeFit:
    r"""Fit $\tau_0 + \tau_1 n$ to step times measured at concurrencies $n$.

    Give files (`fit_step_time("c1.json", "c8.json", ...)`, `fit_step_time("tpot.csv")`; the
    formats of `read_step_times`, whose `group` picks one deployment of a mixed input) or
    arrays (`concurrency=..., step_time=...` in seconds). Needs at least 3 distinct
    concurrencies. Emits a `FitWarning` for each run left out (overloaded), when a quadratic
    term is significant (p < 0.01: the step time is not linear in the batch size over the
    measured range) or when $\tau_1$ is not clearly positive. A refusal names the runs that
    were left out.

    Args:
        *sources: benchmark result files or CSV files.
        concurrency: concurrencies, instead of files.
        step_time: step times (s) at those concurrencies.
        group: the deployment to fit from a mixed input.

    Returns:
        The `StepTimeFit`.
    """
    if sources and (concurrency is not None or step_time is not None):
        raise InputError("give files or concurrency/step_time arrays, not both")
    methods: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()
    if sources:
        runs = _select(_read_runs(*sources), group)
        excluded = tuple(r.overloaded for r in runs if r.overloaded)
        kept = [r for r in runs if not r.overloaded]
        for note in excluded:
            warnings.warn(note, FitWarning, stacklevel=2)
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
        except (TypeError, ValueError, OverflowError):
            raise InputError("concurrency, step_time: expected sequences of numbers") from None
        where = "measurements"
        if n.shape != t.shape:
            raise InputError(f"concurrency and step_time differ in length: {n.size} vs {t.size}")
    try:
        out = _fit_line(n, t, where)
    except InputError as e:
        if not excluded:
            raise
        left = "; ".join(excluded)
        raise InputError(f"{e} ({len(excluded)} run(s) left out: {left})") from None
    return replace(out, methods=methods, excluded=excluded)


def _fit_line(n: np.ndarray, t: np.ndarray, where: str) -> StepTimeFit:
    """The least-squares line through (n, t), its standard errors and warnings; refuses
    concurrencies or step times outside their physical range, or too close to fit."""
    if n.size == 0:
        raise InputError(f"{where}: every run was overloaded: no step time can be fitted")
    if not (np.all(np.isfinite(n)) and np.all(n >= 1) and np.all(n <= MAX_CONCURRENCY)):
        raise InputError(
            f"{where}: concurrency: every value must be finite, >= 1 and at most "
            f"{MAX_CONCURRENCY:g} requests"
        )
    if not (np.all(np.isfinite(t)) and np.all(t > 0)):
        raise InputError("step_time: every value must be finite and > 0 seconds")
    if np.any(t < MIN_STEP_SECONDS):
        raise InputError(
            f"{where}: a step time of {float(np.min(t)):.3g} s is not a decode step (at least "
            f"{MIN_STEP_SECONDS:g} s); check the units"
        )
    if np.any(t > MAX_STEP_SECONDS):
        raise InputError(
            f"{where}: a step time of {float(np.max(t)):.3g} s is not a decode step (at most "
            f"{MAX_STEP_SECONDS:g} s); check the units (tpot_ms is milliseconds)"
        )
    distinct = np.unique(np.round(n / n.max(), 9)).size  # closer than 1e-9: the same
    if distinct < 3:
        raise InputError(
            f"{where}: need step times at 3 or more distinct concurrencies to fit tau0, tau1 "
            f"with standard errors (got {distinct}; concurrencies closer than a relative 1e-9 "
            "count as one)"
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
