"""Every notebook in notebooks/ executes top to bottom (at small sizes)."""

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
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
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
