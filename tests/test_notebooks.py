"""Every notebook in notebooks/ executes top to bottom (at small sizes) and draws the figures
its stored copy shows: a cell that stored an image must emit one again."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
#: executed by the README's test command (none: a kernel each, minutes together); all run in
#: CI's slow step. Every notebook's imports are checked in the fast suite
#: (tests/test_architecture.py).
FAST: tuple[str, ...] = ()


@pytest.mark.parametrize(
    "path",
    [p if p.name in FAST else pytest.param(p, marks=pytest.mark.slow) for p in NOTEBOOKS],
    ids=[p.name for p in NOTEBOOKS],
)
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXOPT_TOKENS_NB_SMALL", "1")
    # the kernel's inline backend, as in Jupyter: figures become outputs the test can count
    # (CI exports MPLBACKEND=Agg, under which a notebook that stops drawing would still pass)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    should_draw = _drawing_cells(nb)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors
    drawn = _drawing_cells(nb)
    assert should_draw <= drawn, f"cells {sorted(should_draw - drawn)} no longer draw a figure"


def _drawing_cells(nb) -> set[int]:
    """Indices of the code cells with an image among their outputs."""
    return {
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code"
        and any("image/png" in o.get("data", {}) for o in c.get("outputs", []))
    }


def test_every_notebook_that_draws_has_its_figures_stored():
    """The expectation the execution test checks against: each cell that draws (calls
    matplotlib or a figure function) has its image stored."""
    import re

    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        drawing = {
            i
            for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and re.search(r"plt\.|figure_|plot_|subplots", c.source)
        }
        assert drawing <= _drawing_cells(nb), (path.name, sorted(drawing - _drawing_cells(nb)))
