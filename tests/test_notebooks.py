"""Runs every notebooks/*.ipynb top to bottom in a fresh Jupyter kernel (nbclient).

The kernel is ``python3`` (jupyter_client starts it with this very Python interpreter),
its working directory is ``notebooks/`` and it inherits this process's environment, so
``tests/run_both.sh`` runs the notebooks under Keras 3 and then under Keras 2
(``TF_USE_LEGACY_KERAS=1``). Each notebook gets ``SAMTONE_TF_NOTEBOOK_TIMEOUT`` seconds in
all (default 600); a cell that raises fails the test with that cell's source and error.
The notebooks end with assertion cells, so a wrong result fails here too.

The committed notebooks carry no outputs or execution counts (checked below). To look at
the outputs of a run, set ``SAMTONE_TF_NOTEBOOK_OUTPUT_DIR``: the executed notebooks are
written there (also when a cell fails).
"""

import glob
import os
import time

import pytest

from tests._requirements import require_package

nbformat = require_package("nbformat")
nbclient = require_package("nbclient")
require_package("ipykernel")

NOTEBOOK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "notebooks")
NOTEBOOKS = sorted(glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb")))
TIMEOUT = float(os.environ.get("SAMTONE_TF_NOTEBOOK_TIMEOUT", "600"))
OUTPUT_DIR = os.environ.get("SAMTONE_TF_NOTEBOOK_OUTPUT_DIR")


def _name(path):
    return os.path.basename(path)


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 4, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs, f"{_name(path)} cell {index} has outputs: strip them"
            assert cell.execution_count is None, f"{_name(path)} cell {index} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_notebook_runs(path):
    nb = nbformat.read(path, as_version=4)
    deadline = time.monotonic() + TIMEOUT

    def remaining(cell):  # each cell may use what is left of the notebook's budget
        return max(1, int(deadline - time.monotonic()))

    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=int(TIMEOUT),
        timeout_func=remaining,
        resources={"metadata": {"path": os.path.abspath(NOTEBOOK_DIR)}},
    )
    started = time.monotonic()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"{_name(path)} failed:\n{error}", pytrace=False)
    except nbclient.exceptions.CellTimeoutError as error:
        pytest.fail(f"{_name(path)} exceeded {TIMEOUT:.0f} s:\n{error}", pytrace=False)
    finally:
        if OUTPUT_DIR:
            os.makedirs(OUTPUT_DIR, exist_ok=True)
            nbformat.write(nb, os.path.join(OUTPUT_DIR, _name(path)))
    seconds = time.monotonic() - started
    keras = "Keras 2" if os.environ.get("TF_USE_LEGACY_KERAS") in ("1", "true", "True") else "Keras 3"
    print(f"\n{_name(path)} ({keras}): {seconds:.0f} s")
