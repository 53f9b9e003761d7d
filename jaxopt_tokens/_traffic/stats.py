r"""How bursty a trace is: rates by window, inter-arrival variability, dispersion of counts.

For counts $N_j$ of requests in consecutive windows of length $w$, the index of dispersion
$I(w) = \mathrm{var}(N_j) / E[N_j]$ is 1 for a Poisson stream at every $w$; a rate that moves
makes it grow with $w$, bursts make it large at short $w$. The squared coefficient of variation
of the inter-arrival times is 1 for Poisson. Which of these a queue feels depends on how long
its busy periods last; the docs page *Real traffic* measures it against replay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .._errors import InputError
from .trace import MAX_WINDOWS, Trace, positive_number

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "ArrivalStats",
    "TrafficWarning",
    "arrival_stats",
    "arrival_scv",
    "dispersion",
    "DISPERSION_WINDOWS",
    "plot_arrivals",
    "rate_warnings",
]

#: window lengths (seconds) at which `arrival_stats` measures the index of dispersion
DISPERSION_WINDOWS = (1.0, 10.0, 60.0, 600.0, 3600.0)
#: fewest whole windows a dispersion or window-rate statistic is computed from
MIN_WINDOWS = 4
#: above this share of requests arriving at the same instant as the one before, a trace is
#: said to arrive in batches
BATCHED_FRACTION = 0.2


class TrafficWarning(UserWarning):
    """One mean arrival rate misrepresents a request log (the rate moves, or arrivals bunch)."""


@dataclass(frozen=True)
class ArrivalStats:
    """Statistics of a trace's arrivals (see `arrival_stats`).

    Attributes:
        num_requests: requests in the trace.
        duration: seconds from the first arrival to the last.
        mean_rate: requests per second over the trace.
        window: the window length (s) of the per-window rates.
        window_rate: the rate per window: its `min`, `median`, `max` and `cv`.
        interarrival_cv: the coefficient of variation of the inter-arrival times.
        dispersion: the index of dispersion of counts, by window length (s).
        simultaneous_fraction: the fraction of requests that arrive with another.
        largest_batch: the most requests arriving at one instant.
        work_correlation: the correlation of the window rate with the work per request (None
            without token counts).
        work_dispersion: the index of dispersion of the work per window (None without token
            counts).
        warnings: what makes the Poisson model doubtful here.
    """

    num_requests: int
    duration: float
    mean_rate: float
    window: float
    window_rate: dict[str, float]
    interarrival_cv: float
    dispersion: dict[float, float]
    simultaneous_fraction: float
    largest_batch: int
    work_correlation: float | None
    work_dispersion: float | None
    warnings: tuple[str, ...]

    def to_dict(self) -> dict:
        """Plain JSON-able values (None for what could not be measured)."""

        def clean(x):
            if isinstance(x, float) and not math.isfinite(x):
                return None
            return x

        return {
            "num_requests": self.num_requests,
            "duration_s": self.duration,
            "mean_rate": self.mean_rate,
            "window_s": self.window,
            "window_rate": {k: clean(v) for k, v in self.window_rate.items()},
            "interarrival_cv": clean(self.interarrival_cv),
            "dispersion": {f"{w:g}": clean(v) for w, v in self.dispersion.items()},
            "simultaneous_fraction": self.simultaneous_fraction,
            "largest_batch": self.largest_batch,
            "work_correlation": clean(self.work_correlation),
            "work_dispersion": clean(self.work_dispersion),
            "warnings": list(self.warnings),
        }


def _whole_window_counts(trace: Trace, window: float) -> np.ndarray:
    """Requests in each whole window of `window` seconds (the partial window at the end is
    left out: counts over windows of one length)."""
    num = trace.num_windows(window)
    if trace.duration < window:
        return np.zeros(0)
    idx = np.floor(trace.arrival_times / window)
    return np.bincount(idx[idx < num].astype(np.int64), minlength=num).astype(np.float64)


def dispersion(trace: Trace, window: float) -> float:
    """Index of dispersion of counts in windows of `window` seconds (NaN with fewer than
    `MIN_WINDOWS` whole windows)."""
    counts = _whole_window_counts(trace, window)
    if counts.size < MIN_WINDOWS or counts.mean() == 0:
        return math.nan
    return float(counts.var(ddof=1) / counts.mean())


def arrival_scv(trace: Trace, window: float | None = None) -> float:
    """The arrival variability $c_a^2$ of `trace` for `Kingman`: the squared coefficient of
    variation of the inter-arrival times (`window=None`), or the index of dispersion of counts
    in windows of `window` seconds (the variability a queue feels over that time; for a
    renewal stream both tend to the same value as the window grows).

    Args:
        trace: the trace.
        window: the window length (s) of the count dispersion; None for the inter-arrival SCV.

    Returns:
        $c_a^2$.
    """
    if not isinstance(trace, Trace):
        raise InputError(f"trace: expected a Trace (read_trace), got {type(trace).__name__}")
    if window is None:
        gaps = np.diff(trace.arrival_times)
        return float(gaps.var() / gaps.mean() ** 2)
    d = dispersion(trace, window)
    if math.isnan(d):
        raise InputError(
            f"window: the trace ({trace.duration:.4g} s) holds fewer than {MIN_WINDOWS} whole "
            f"windows of {window:g} s"
        )
    return d


def rate_warnings(trace: Trace, window: float) -> tuple[str, ...]:
    """Why one mean rate misrepresents `trace` at windows of `window` seconds: the window
    rates' 90th percentile is more than twice their 10th (or than the mean when the 10th is
    0), or the index of dispersion is well above 1 (above 2, and above 1 by more than three
    standard errors of a Poisson stream's)."""
    counts = _whole_window_counts(trace, window)
    out = []
    if trace.duration < window:
        out.append(
            f"{trace.source}: the trace ({trace.duration:.4g} s) is shorter than one {window:g}-s "
            "window: its window rate is the whole trace's"
        )
    gaps = np.diff(trace.arrival_times)
    batched = float(np.mean(gaps == 0)) if gaps.size else 0.0
    if batched > BATCHED_FRACTION:
        out.append(
            f"{trace.source}: requests arrive in batches: {batched:.0%} arrive at the same instant "
            "as the one before (a Poisson stream's share is 0); single-arrival models (PK, "
            "Kingman) misjudge such traffic: replay the trace"
        )
    if counts.size >= MIN_WINDOWS:
        lo, hi = np.percentile(counts, [10, 90]) / window
        ref = lo if lo > 0 else trace.mean_rate / 2
        if hi > 2 * ref:
            out.append(
                f"{trace.source}: the arrival rate moves: per {window:g}-s window it runs from "
                f"{lo:.3g}/s (10th percentile) to {hi:.3g}/s (90th) around a mean of "
                f"{trace.mean_rate:.3g}/s"
            )
        d = dispersion(trace, window)
        if d > 2 and d > 1 + 3 * math.sqrt(2 / (counts.size - 1)):
            out.append(
                f"{trace.source}: arrivals bunch: the index of dispersion of {window:g}-s counts "
                f"is {d:.3g} (a Poisson stream's is 1)"
            )
    return tuple(out)


def _window_work(trace: Trace, window: float):
    work = trace.output_tokens
    if work is None:
        return None, None
    idx = trace.window_index(window)
    num = int(idx.max()) + 1
    counts = np.bincount(idx, minlength=num).astype(np.float64)
    total = np.bincount(idx, weights=work, minlength=num)
    busy = counts > 0
    corr = None
    if busy.sum() >= MIN_WINDOWS:
        per = total[busy] / counts[busy]
        if np.std(per) > 0 and np.std(counts[busy]) > 0:
            corr = float(np.corrcoef(counts[busy], per)[0, 1])
    disp = None
    if num >= MIN_WINDOWS and total.mean() > 0:
        # tokens per window over their mean, as a dispersion in requests of mean work
        disp = float(total.var(ddof=1) / total.mean() / max(work.mean(), 1e-300))
    return corr, disp


def arrival_stats(
    trace: Trace,
    window: float = 60.0,
    windows: Sequence[float] = DISPERSION_WINDOWS,
) -> ArrivalStats:
    """Describe the burstiness of `trace`.

    Args:
        trace: a `Trace` (`read_trace`).
        window: the window (seconds) of the per-window rates, the work correlation and the
            warnings.
        windows: window lengths (seconds) of the index of dispersion; those with fewer than
            `MIN_WINDOWS` whole windows in the trace are left out.

    Returns:
        `ArrivalStats`: the mean rate; the per-window rate's min / median / p95 / max; the
        coefficient of variation of the inter-arrival times; the index of dispersion per window
        length; the fraction of requests that arrive at the same time as the one before and the
        largest such batch; with output tokens, the correlation of a window's request count
        with its mean tokens per request, and the dispersion of tokens per window (in units of
        a mean request); and the warnings of `rate_warnings`.
    """
    if not isinstance(trace, Trace):
        raise InputError(f"trace: expected a Trace (read_trace), got {type(trace).__name__}")
    window = positive_number("window", window)
    if isinstance(windows, (str, bytes)) or not hasattr(windows, "__iter__"):
        raise InputError(f"windows: a sequence of window lengths in seconds, got {windows!r}")
    sizes = sorted({positive_number("windows", w) for w in windows})
    sizes = [w for w in sizes if trace.duration / w <= MAX_WINDOWS]  # too fine for this span
    rates, _ = trace.window_rates(window)
    q = np.percentile(rates, [0, 50, 95, 100])
    gaps = np.diff(trace.arrival_times)
    cv = float(gaps.std() / gaps.mean()) if gaps.size > 1 else math.nan
    same = gaps == 0
    # the largest run of equal times
    largest = 1
    if same.any():
        edges = np.flatnonzero(np.diff(np.concatenate([[0], same.astype(np.int8), [0]])))
        largest = int(np.max(edges[1::2] - edges[::2])) + 1
    disp = {w: dispersion(trace, w) for w in sizes}
    disp = {w: d for w, d in disp.items() if not math.isnan(d)}
    corr, work_disp = _window_work(trace, window)
    return ArrivalStats(
        num_requests=len(trace),
        duration=trace.duration,
        mean_rate=trace.mean_rate,
        window=window,
        window_rate=dict(zip(("min", "median", "p95", "max"), (float(v) for v in q))),
        interarrival_cv=cv,
        dispersion=disp,
        simultaneous_fraction=float(same.mean()) if same.size else 0.0,
        largest_batch=largest,
        work_correlation=corr,
        work_dispersion=work_disp,
        warnings=rate_warnings(trace, window),
    )


def _check_figure_path(path) -> None:
    """Refuse a figure path that is empty, a directory, or in a directory that does not
    exist (matplotlib would add an extension, or fail with a raw error)."""
    if not isinstance(path, (str, Path)) or str(path) == "":
        raise InputError(f"path: a figure file name such as arrivals.png, got {path!r}")
    p = Path(path)
    if p.is_dir():
        raise InputError(f"path: {p} is a directory; give a file name such as {p}/arrivals.png")
    if not p.parent.is_dir():
        raise InputError(f"path: the directory {p.parent} does not exist")
    if not p.suffix:
        raise InputError(f"path: {p} has no extension (.png, .svg, .pdf)")


def plot_arrivals(trace: Trace, path: str | Path | None = None, *, window: float = 60.0) -> Figure:
    """A figure of the rate per window over time and the index of dispersion against the
    window length (saved to `path` when given); returns the matplotlib figure.

    Args:
        trace: the trace.
        path: where to save the figure (not saved when None).
        window: the window length (s) of the rate panel.

    Returns:
        The matplotlib figure.
    """
    if not isinstance(trace, Trace):
        raise InputError(f"trace: expected a Trace (read_trace), got {type(trace).__name__}")
    if path is not None:
        _check_figure_path(path)
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    stats = arrival_stats(trace, window)
    rates, _ = trace.window_rates(window)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    t = (np.arange(rates.size) + 0.5) * window
    ax1.step(t / 60, rates, where="mid", lw=1)
    ax1.axhline(stats.mean_rate, color="k", ls="--", lw=0.8, label="mean rate")
    ax1.set_xlabel("time (min)")
    ax1.set_ylabel(f"requests/s per {window:g}-s window")
    ax1.legend(loc="upper right")
    ws = np.array(list(stats.dispersion))
    if ws.size:
        ax2.loglog(ws, [stats.dispersion[w] for w in ws], "o-", label="trace")
    ax2.axhline(1.0, color="k", ls="--", lw=0.8, label="Poisson")
    ax2.set_xlabel("window (s)")
    ax2.set_ylabel("index of dispersion of counts")
    ax2.legend(loc="upper left")
    fig.suptitle(f"{Path(trace.source).name}: {len(trace):,} requests, {stats.mean_rate:.3g}/s")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
