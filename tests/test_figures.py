"""Figures a reader can trust: budget axes and colour scales start at zero, a replica axis
counts whole replicas and says which line is which, and dense heatmaps stay small as SVG."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jaxopt_tokens as jt  # noqa: E402

SHIPPED = Path(jt.__file__).parent / "data" / "synthetic_measurements_table1.csv"


def test_heatmap_budget_scales_start_at_zero_and_the_cells_are_one_image(table1, tmp_path):
    fig = jt.sweeps.figure_heatmaps(
        table1, arrival_rates=np.linspace(0.01, 0.5, 40), alphas=[1, 3, 10]
    )
    panels = [ax for ax in fig.axes if ax.collections and ax.get_label() != "<colorbar>"]
    meshes = [ax.collections[0] for ax in panels]
    titles = [ax.get_title() for ax in panels]
    assert len(meshes) == table1.num_tasks + 1
    for mesh, title in zip(meshes, titles):
        low, high = mesh.get_clim()
        assert mesh.get_rasterized(), title
        if title != "J*":  # a budget: never below 0, at least one token wide
            assert low == 0.0 and high >= 1.0, (title, low, high)
    aime = titles.index("AIME budget (tokens)")
    assert np.all(np.asarray(meshes[aime].get_array()) == 0)  # the all-zero panel reads 0..1
    assert meshes[aime].get_clim() == (0.0, 1.0)
    fig.savefig(tmp_path / "h.svg")
    assert (tmp_path / "h.svg").stat().st_size < 1_000_000
    plt.close(fig)


@pytest.mark.slow  # subprocesses or a fit: the slow step runs it
def test_fit_plot_budget_axes_start_at_zero():
    result = jt.deploy.fit(jt.deploy.read_measurements(SHIPPED))
    fig = jt.deploy.plot_fit(result)
    for ax in fig.axes:
        assert ax.get_xlim()[0] == 0.0, ax.get_title()
    plt.close(fig)


def test_the_replica_plot_counts_whole_replicas_with_a_legend(tmp_path, monkeypatch):
    from jaxopt_tokens.cli.server import _figure

    kept = []
    monkeypatch.setattr(plt, "close", kept.append)
    rows = [
        {"replicas": r, "accuracy": a, "mean_system_time": t}
        for r, a, t in [(1, 0.5, 30.0), (2, 0.6, 12.0), (3, 0.62, 9.0)]
    ]
    args = argparse.Namespace(target_latency=10.0, routing="random")
    _figure(rows, args, tmp_path / "plan.png")
    (fig,) = kept
    ax = fig.axes[0]
    ax.figure.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("accuracy" in x for x in labels) and any("target" in x for x in labels)
