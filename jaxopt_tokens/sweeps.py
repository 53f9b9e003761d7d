"""Whole sensitivity surfaces at once: sweeps over (arrival rate, alpha, ...) grids written as
resumable datasets, Pareto frontiers and the figures. Docs: *Sweeps*.
"""

from typing import TYPE_CHECKING

from ._lazy import attach

if TYPE_CHECKING:
    from ._sweeps.dataset import read_sweep
    from ._sweeps.figures import (
        all_figures,
        converged_optimum,
        figure_budget_sensitivity,
        figure_frontier,
        figure_heatmaps,
        figure_names,
        figure_uniform_vs_optimal,
        save_figure,
    )
    from ._sweeps.frontier import (
        frontier_by_alpha,
        frontier_by_arrival_rate,
        uniform_curve,
        with_simulated_tail,
    )
    from ._sweeps.sweep import SweepRun, read_sweep_metadata, sweep, write_sweep

__all__ = [
    "sweep",
    "SweepRun",
    "read_sweep",
    "write_sweep",
    "read_sweep_metadata",
    "frontier_by_alpha",
    "frontier_by_arrival_rate",
    "uniform_curve",
    "with_simulated_tail",
    "all_figures",
    "figure_names",
    "save_figure",
    "converged_optimum",
    "figure_budget_sensitivity",
    "figure_frontier",
    "figure_heatmaps",
    "figure_uniform_vs_optimal",
]

__getattr__, __dir__ = attach(__name__, __file__)
