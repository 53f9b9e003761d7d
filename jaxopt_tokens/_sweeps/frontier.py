"""Accuracy versus mean system time: the Pareto frontier the optimal budgets trace.

Along alpha (log-spaced) each optimum is the most accurate allocation for its latency
(J is the Lagrangian of that constrained problem), so the points form the Pareto frontier.
Along the arrival rate the same weight gives the operating curve of a server under growing load.
The uniform-budget curve (every task the same budget) shows what heterogeneity buys.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, PRNGKeyArray

from .._errors import InputError
from .._objective import mean_accuracy, mean_system_time
from .._queue.simulation import simulate
from .._validate import check_int, check_memory
from .._workload import Workload
from .dataset import MANIFEST, SweepDirectory, read_sweep
from .sweep import sweep

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["frontier_by_alpha", "frontier_by_arrival_rate", "uniform_curve", "with_simulated_tail"]


FRONTIER_COLUMNS = ("accuracy", "mean_system_time", "objective", "status")


def _from_dataset(path, axis: str, task_names=None):
    """A frontier read from a sweep directory: the columns it needs, sorted along `axis`."""
    manifest = SweepDirectory(path).manifest()
    if manifest is None:
        raise InputError(f"{path}: not a sweep directory (no {MANIFEST})")
    grids = list(manifest["grids"])
    if axis not in grids:
        raise InputError(f"{path}: the sweep has no '{axis}' grid (its grids: {grids})")
    names = task_names or [t["name"] for t in manifest["workload"]["tasks"]]
    columns = [*grids, *(f"l_{n}" for n in names), *FRONTIER_COLUMNS]
    df = read_sweep(path, columns=columns)
    others = [g for g in grids if g != axis]
    return df.sort_values([*others, axis], kind="stable").reset_index(drop=True)


def frontier_by_alpha(
    w: Workload | str | Path,
    points: int = 1000,
    alpha_range: tuple[float, float] = (1e-2, 1e4),
    quiet: bool = True,
) -> pd.DataFrame:
    """Optimal (E[T], accuracy) for `points` log-spaced alphas: a DataFrame (see `sweep`).

    `w` may also be a sweep directory with an `alpha` grid (`sweep(..., out=DIR)`): its points
    are read (only the columns a frontier needs), sorted by alpha within every combination of
    the other grids.

    Args:
        w: the workload, or a sweep directory.
        points: how many alphas.
        alpha_range: the smallest and largest alpha.
        quiet: no progress bar.

    Returns:
        A DataFrame, one row per alpha, with the columns of `sweep`.
    """
    if isinstance(w, (str, Path)):
        return _from_dataset(w, "alpha")
    points = check_int("points", points, 1)
    check_memory(8.0 * 64 * points, f"a frontier of {points:,} points", "use fewer points")
    return sweep(w, alpha=np.geomspace(alpha_range[0], alpha_range[1], points), quiet=quiet)


def frontier_by_arrival_rate(
    w: Workload | str | Path, points: int = 200, quiet: bool = True
) -> pd.DataFrame:
    """Optimal (E[T], accuracy) as the arrival rate grows to 0.98 of the zero-token limit.

    `w` may also be a sweep directory with an `arrival_rate` grid (see `frontier_by_alpha`).

    Args:
        w: the workload, or a sweep directory.
        points: how many arrival rates.
        quiet: no progress bar.

    Returns:
        A DataFrame, one row per arrival rate, with the columns of `sweep`.
    """
    if isinstance(w, (str, Path)):
        return _from_dataset(w, "arrival_rate")
    points = check_int("points", points, 1)
    check_memory(8.0 * 64 * points, f"a frontier of {points:,} points", "use fewer points")
    limit = 1.0 / float(jnp.sum(w.share * w.t0))
    return sweep(w, arrival_rate=np.linspace(0.01 * limit, 0.98 * limit, points), quiet=quiet)


def uniform_curve(
    w: Workload, budgets: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(budget, E[T], accuracy) for the same budget on every task, over the stable range.

    Args:
        w: the workload.
        budgets: the uniform budgets (default: a grid over the stable range).

    Returns:
        `(budgets, mean system time, mean accuracy)` as numpy arrays.
    """
    if budgets is None:
        cap = min(
            float(w.max_tokens),
            (1 / float(w.arrival_rate) - float(jnp.sum(w.share * w.t0)))
            / float(jnp.sum(w.share * w.c)),
        )
        budgets = np.linspace(0.0, 0.999 * cap, 400)
    b = jnp.asarray(budgets, w.dtype)
    tokens = jnp.broadcast_to(b[:, None], (b.shape[0], w.num_tasks))
    acc = jax.vmap(mean_accuracy, in_axes=(0, None))(tokens, w)
    et = jax.vmap(mean_system_time, in_axes=(0, None))(tokens, w)
    return np.asarray(b), np.asarray(et), np.asarray(acc)


def with_simulated_tail(
    frontier: pd.DataFrame,
    w: Workload,
    num_queries: int = 10_000,
    num_replications: int = 10,
    key: PRNGKeyArray | None = None,
    level: float = 0.95,
    **simulate_kwargs: Any,
) -> pd.DataFrame:
    """The frontier with simulated tail latency: every row's budgets through `simulate`.

    Adds `sim_mean_system_time`, `sim_p95_system_time`, `sim_p99_system_time` and the
    confidence bounds of the p95 (`sim_p95_lower`, `sim_p95_upper`), all policies on common
    random numbers. Rows that did not converge get NaN. The PK model gives only the mean; the
    tail is what a latency SLO is usually written against.

    Args:
        frontier: a frontier DataFrame (`frontier_by_alpha`).
        w: its workload.
        num_queries: queries per replication.
        num_replications: replications.
        key: the random key (default: a fixed one).
        level: the confidence level of the p95 bounds.
        **simulate_kwargs: passed to `simulate` (a latency model, noise, ...).

    Returns:
        The frontier with the simulated columns added.
    """

    names = [f"l_{n}" for n in w.task_names]
    tokens = frontier[names].to_numpy(dtype=np.float64)
    ok = np.all(np.isfinite(tokens), axis=1) & (frontier["status"].to_numpy() == "converged")
    out = frontier.copy()
    for col in (
        "sim_mean_system_time",
        "sim_p95_system_time",
        "sim_p99_system_time",
        "sim_p95_lower",
        "sim_p95_upper",
    ):
        out[col] = np.nan
    if ok.any():
        r = simulate(w, tokens[ok], num_queries, num_replications, key, **simulate_kwargs)
        mean_t = r.interval("system_time", level)[0]
        p95, lo, hi = r.interval("system_time_p95", level)
        p99 = r.interval("system_time_p99", level)[0]
        out.loc[ok, "sim_mean_system_time"] = mean_t
        out.loc[ok, "sim_p95_system_time"] = p95
        out.loc[ok, "sim_p99_system_time"] = p99
        out.loc[ok, "sim_p95_lower"] = lo
        out.loc[ok, "sim_p95_upper"] = hi
    return out
