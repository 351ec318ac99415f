"""docs/tutorial.ipynb runs from top to bottom, and its pictures show inline."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parent.parent / "docs" / "tutorial.ipynb"


def test_tutorial_runs_and_shows_its_pictures(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    kinds = [set(o.get("data", {})) for c in nb.cells if c.cell_type == "code"
             for o in c.get("outputs", ())]
    assert not any(o.get("output_type") == "error" for c in nb.cells
                   if c.cell_type == "code" for o in c.get("outputs", ()))
    svgs = sum("image/svg+xml" in k for k in kinds)
    assert svgs >= 3, kinds  # folded, unrolled and gradient-flow pictures, inline
    assert any("image/png" in k for k in kinds)  # the training curves
