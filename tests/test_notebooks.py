"""Every notebook executes top to bottom (tiny configs), as a user would run it."""

import pathlib

import pytest

nbformat = pytest.importorskip("nbformat", reason="notebook runner not installed (test extra)")
nbclient = pytest.importorskip("nbclient", reason="notebook runner not installed (test extra)")
pytest.importorskip("ipykernel", reason="ipykernel not installed (test extra)")

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_notebooks_exist():
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(1, len(NOTEBOOKS) + 1)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_notebook_is_executed(path):
    """A viewer shows the tables and plots: every code cell stored with its run
    (python notebooks/execute.py regenerates them)."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code)
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1))
    assert sum(bool(c.get("outputs")) for c in code) >= len(code) // 2
