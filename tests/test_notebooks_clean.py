"""The committed notebooks are clean, parameterized, on the facetransfer kernel, and lint-free."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = ["01_explore.ipynb", "02_search.ipynb", "03_finetune.ipynb", "04_compare.ipynb"]
# Names the study runner passes to each notebook (papermill parameters).
PARAMETERS = {
    "01_explore.ipynb": {"data", "task", "out_dir", "results_root"},
    "02_search.ipynb": {"search", "base_params", "out_dir", "results_root"},
    "03_finetune.ipynb": {"params", "run_id", "run_dir", "results_root"},
    "04_compare.ipynb": {"study_dir"},
}


def read(path: Path):
    return nbformat.read(path, as_version=4)


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_the_four_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_valid_and_clean(path):
    nb = read(path)
    nbformat.validate(nb)
    for cell in code_cells(nb):
        assert cell.outputs == [], f"{path.name}: a code cell has outputs; clear them before committing"
        assert cell.execution_count is None, f"{path.name}: a code cell has an execution count"
    assert "papermill" not in nb.metadata, f"{path.name}: papermill metadata left in"
    for cell in nb.cells:
        assert "papermill" not in cell.metadata and "execution" not in cell.metadata


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_is_the_tagged_parameters_cell(path):
    nb = read(path)
    cells = code_cells(nb)
    assert "parameters" in cells[0].metadata.get("tags", []), f"{path.name}: first code cell is not tagged 'parameters'"
    assert all("parameters" not in c.metadata.get("tags", []) for c in cells[1:])
    tree = ast.parse(cells[0].source)
    assigned = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets}
    assert all(isinstance(node, ast.Assign) for node in tree.body), "the parameters cell holds assignments only"
    assert PARAMETERS[path.name] <= assigned, f"{path.name}: missing parameters {PARAMETERS[path.name] - assigned}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_kernelspec_is_facetransfer(path):
    assert read(path).metadata["kernelspec"]["name"] == "facetransfer"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_thin_and_imports_the_library_as_ft(path):
    nb = read(path)
    source = "\n".join(c.source for c in code_cells(nb))
    assert "import facetransfer as ft" in source
    assert not re.search(r"^\s*(def|class) ", source, re.M), f"{path.name}: define functions in the library, not the notebook"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


def test_ruff_passes_on_the_notebooks():
    ruff = Path(sys.executable).with_name("ruff")
    cmd = [str(ruff)] if ruff.exists() else [sys.executable, "-m", "ruff"]
    proc = subprocess.run([*cmd, "check", *map(str, NOTEBOOKS)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_papermill_reads_every_parameter(path):
    import papermill

    inferred = papermill.inspect_notebook(str(path))
    assigned = {t.id for node in ast.parse(code_cells(read(path))[0].source).body for t in node.targets}
    assert set(inferred) == assigned, f"{path.name}: papermill could not parse {assigned - set(inferred)} (no '=' in comments)"
