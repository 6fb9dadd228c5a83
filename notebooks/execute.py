"""Execute every notebook in place, storing its outputs (tables, plots) for viewers:

    python notebooks/execute.py [NOTEBOOK ...]

Run from anywhere; each notebook runs in a scratch directory (the files it writes are not
kept). tests/test_notebooks.py executes them again on every test run and checks the stored
copies are executed.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import nbclient
import nbformat

HERE = Path(__file__).resolve().parent


def execute(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as tmp:
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": tmp}}).execute()
    nbformat.write(nb, path)


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted(HERE.glob("*.ipynb"))
    for p in paths:
        execute(p)
        print(f"executed {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
