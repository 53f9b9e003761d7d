"""The figures of the queueing paper and the sensitivity pictures, with matplotlib (PNG and SVG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike

from .._errors import InputError
from .._integer import integer_lower_bound, paper_integer_lower_bound
from .._objective import objective
from .._solver.solve import solve
from .._validate import check_int
from .._workload import Workload
from .dataset import SweepDirectory, read_sweep
from .frontier import frontier_by_alpha, uniform_curve
from .sweep import sweep

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from .._solver.solution import Solution

__all__ = [
    "figure_uniform_vs_optimal",
    "figure_budget_sensitivity",
    "figure_heatmaps",
    "figure_frontier",
    "all_figures",
    "converged_optimum",
    "figure_names",
]


def converged_optimum(w: Workload) -> Solution:
    """`solve(w)`, or an `InputError` saying why there is no optimum to draw.

    Args:
        w: the workload.

    Returns:
        The converged `Solution`.
    """
    sol = solve(w)
    if not bool(sol.converged):
        raise InputError(
            f"the workload's optimum was not found ({sol.messages().item()}); no figure is drawn "
            "from it"
        )
    return sol


def figure_names(w: Workload) -> tuple[str, ...]:
    """The file names `all_figures` writes for `w` (PNG and SVG of each figure).

    Args:
        w: the workload.

    Returns:
        The file names.
    """
    fig4 = "fig4_gsm8k_sensitivity" if "GSM8K" in w.task_names else "fig4_budget_sensitivity"
    stems = ("fig3_uniform_vs_optimal", fig4, "frontier", "heatmaps")
    return tuple(f"{stem}.{ext}" for stem in stems for ext in ("png", "svg"))


def save_figure(fig: Figure, out: Path, name: str) -> list[Path]:
    """Save a figure as PNG (130 dpi) and SVG, creating `out` if needed.

    Args:
        fig: the matplotlib figure.
        out: the directory.
        name: the file name without its suffix.

    Returns:
        The two paths written.
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    fig.savefig(paths[0], dpi=130, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths


def figure_uniform_vs_optimal(w: Workload, budgets: Sequence[float] = (0, 100, 500)) -> Figure:
    """The paper's Fig. 3: J at uniform budgets against J at the optimum l*.

    Args:
        w: the workload.
        budgets: the uniform budgets compared.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    sol = converged_optimum(w)
    labels = [f"uniform {b}" for b in budgets] + ["optimal l*"]
    values = [float(objective(jnp.full(w.num_tasks, float(b), w.dtype), w)) for b in budgets] + [
        float(sol.objective)
    ]
    fig, ax = plt.subplots(figsize=(6, 4))
    bars = ax.bar(labels, values, color=["#9aa5b1"] * len(budgets) + ["#2b7bba"])
    ax.bar_label(bars, fmt="%.3f")
    ax.set(
        ylabel="objective J (accuracy-weighted, minus seconds)",
        title=f"Uniform budgets vs the optimum (lambda={float(w.arrival_rate):g}/s, "
        f"alpha={float(w.alpha):g})",
    )
    return fig


def figure_budget_sensitivity(w: Workload, task: str = "GSM8K", upto: float = 1000.0) -> Figure:
    """The paper's Fig. 4: J as one task's budget varies, the others held at l*; with J(l*) and the
    integer lower bound (41) as printed and in its rigorous form.

    Args:
        w: the workload.
        task: the task whose budget varies.
        upto: the largest budget drawn.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    sol = converged_optimum(w)
    k = w.task_names.index(task)
    grid = jnp.linspace(0.0, upto, 1001, dtype=w.dtype)
    tokens = jnp.broadcast_to(sol.tokens, (grid.shape[0], w.num_tasks)).at[:, k].set(grid)
    J = jax.vmap(objective, in_axes=(0, None))(tokens, w)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(grid, J, label=f"J with l_{task} varied, others at l*")
    ax.axhline(float(sol.objective), color="k", ls=":", label=f"J(l*) = {float(sol.objective):.4f}")
    ax.axhline(
        float(paper_integer_lower_bound(sol.tokens, w)),
        color="r",
        ls="--",
        label="lower bound (41), as printed",
    )
    ax.axhline(
        float(integer_lower_bound(sol.tokens, w)),
        color="m",
        ls="-.",
        label="rigorous integer lower bound",
    )
    ax.axvline(float(sol.tokens[k]), color="gray", lw=0.8)
    ax.set(
        xlabel=f"{task} reasoning-token budget (tokens)",
        ylabel="objective J",
        title=f"Sensitivity to the {task} budget (peak at l* = {float(sol.tokens[k]):.1f})",
    )
    ax.legend(fontsize=8)
    return fig


def check_heatmap_sweep(sweep_dir: str | Path, w: Workload) -> None:
    """`InputError` (one line, before anything is drawn) unless `sweep_dir` is a sweep over
    exactly `arrival_rate` and `alpha` of a workload with `w`'s tasks."""
    manifest = SweepDirectory(sweep_dir).manifest()
    if manifest is None or sorted(manifest["grids"]) != ["alpha", "arrival_rate"]:
        raise InputError(
            f"{sweep_dir}: heatmaps need a sweep over exactly arrival_rate and alpha"
            + ("" if manifest is None else f" (this one: {list(manifest['grids'])})")
        )
    entries = manifest["workload"].get("tasks", [])
    tasks = [str(t.get("name", f"task{k}")) for k, t in enumerate(entries)]
    if tasks != list(w.task_names):
        raise InputError(
            f"{sweep_dir}: the sweep's tasks {tasks} are not the workload's {list(w.task_names)}"
        )


def figure_heatmaps(
    w: Workload,
    arrival_rates: ArrayLike | None = None,
    alphas: ArrayLike | None = None,
    quiet: bool = True,
    sweep_dir: str | Path | None = None,
) -> Figure:
    """l*_k of every task and J over a grid of (arrival rate, alpha).

    With `sweep_dir` (a directory from `sweep(w, arrival_rate=..., alpha=..., out=DIR)`) the
    surfaces are read from the dataset (only the columns drawn) instead of solved.

    Args:
        w: the workload.
        arrival_rates: the arrival-rate grid (default 60 points on [0.01, 0.5]).
        alphas: the alpha grid (default 60 log-spaced points on [1, 100]).
        quiet: no progress bar.
        sweep_dir: a sweep directory to read instead of solving.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    panels = [f"l_{n}" for n in w.task_names] + ["objective"]
    if sweep_dir is not None:
        check_heatmap_sweep(sweep_dir, w)
        df = read_sweep(sweep_dir, columns=["arrival_rate", "alpha", *panels])
        df = df.sort_values(["arrival_rate", "alpha"], kind="stable")
        arrival_rates = np.unique(df["arrival_rate"].to_numpy())
        alphas = np.unique(df["alpha"].to_numpy())
        if len(df) != arrival_rates.size * alphas.size:
            raise InputError(f"{sweep_dir}: the (arrival_rate, alpha) grid has repeated values")
    else:
        arrival_rates = (
            np.linspace(0.01, 0.5, 60) if arrival_rates is None else np.asarray(arrival_rates)
        )
        alphas = np.geomspace(1, 100, 60) if alphas is None else np.asarray(alphas)
        df = sweep(w, arrival_rate=arrival_rates, alpha=alphas, quiet=quiet)
    cols = 4
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.3 * rows), squeeze=False)
    for ax, col in zip(axes.ravel(), panels):
        z = df[col].to_numpy().reshape(len(arrival_rates), len(alphas))
        # budgets are never negative: their scale starts at 0 (and spans at least a token,
        # so a panel of zeros reads 0..1, not -0.1..0.1); the cells are drawn as one image
        # in the SVG (a vector cell per point made files of megabytes)
        scale = {}
        if col != "objective":
            top = np.nanmax(z) if np.isfinite(z).any() else 1.0
            scale = {"vmin": 0.0, "vmax": max(float(top), 1.0)}
        im = ax.pcolormesh(
            alphas, arrival_rates, z, shading="nearest", cmap="viridis", rasterized=True, **scale
        )
        ax.set_xscale("log")
        ax.set(
            xlabel="alpha",
            ylabel="arrival rate (queries/s)",
            title=("J*" if col == "objective" else f"{col[2:]} budget (tokens)"),
        )
        fig.colorbar(im, ax=ax)
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    fig.suptitle("Optimal budgets and objective over (arrival rate, alpha)")
    fig.tight_layout()
    return fig


def figure_frontier(
    w: Workload,
    points: int = 1000,
    frontier: pd.DataFrame | None = None,
    uniform: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> Figure:
    """Accuracy vs mean system time: optimal (alpha-traced) against uniform budgets.

    `frontier` (from `frontier_by_alpha`) and `uniform` (from `uniform_curve`) are computed
    when not given.

    Args:
        w: the workload.
        points: alphas on the optimal frontier.
        frontier: a precomputed `frontier_by_alpha` table.
        uniform: a precomputed `uniform_curve`.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    points = check_int("points", points, 2)
    df = frontier_by_alpha(w, points) if frontier is None else frontier
    ok = df["status"] == "converged"
    _, et_u, acc_u = uniform_curve(w) if uniform is None else uniform
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(
        df.loc[ok, "mean_system_time"],
        df.loc[ok, "accuracy"],
        label="optimal per-task budgets (alpha swept)",
    )
    ax.plot(et_u, acc_u, "--", label="uniform budget on every task")
    ax.set_xscale("log")
    ax.set(
        xlabel="mean system time E[T] (s, log scale)",
        ylabel="mean accuracy",
        title=f"Accuracy / latency frontier (lambda={float(w.arrival_rate):g}/s)",
    )
    ax.legend()
    return fig


def all_figures(
    w: Workload, out: str | Path, quiet: bool = True, sweep_dir: str | Path | None = None
) -> list[Path]:
    """Write every figure for a workload to `out` (PNG and SVG); returns the paths.

    `sweep_dir`: draw the heatmaps from this (arrival_rate, alpha) sweep directory.

    Args:
        w: the workload.
        out: the directory.
        quiet: no progress bar.
        sweep_dir: a sweep directory over `arrival_rate` and `alpha` to draw the heatmaps from.

    Returns:
        The paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    if sweep_dir is not None:  # refused before anything is drawn
        check_heatmap_sweep(sweep_dir, w)
    converged_optimum(w)
    paths = []
    makers = [
        ("fig3_uniform_vs_optimal", lambda: figure_uniform_vs_optimal(w)),
        ("frontier", lambda: figure_frontier(w)),
        ("heatmaps", lambda: figure_heatmaps(w, quiet=quiet, sweep_dir=sweep_dir)),
    ]
    if "GSM8K" in w.task_names:
        makers.insert(1, ("fig4_gsm8k_sensitivity", lambda: figure_budget_sensitivity(w, "GSM8K")))
    else:
        k = int(np.argmax(np.asarray(converged_optimum(w).tokens)))
        makers.insert(
            1, ("fig4_budget_sensitivity", lambda: figure_budget_sensitivity(w, w.task_names[k]))
        )
    for name, make in makers:
        fig = make()
        paths += save_figure(fig, out, name)
        plt.close(fig)
    return paths
