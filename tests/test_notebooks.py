"""The lessons as files: complete series, clean metadata, stored outputs from a top-to-bottom run.

nbval (``make test``) executes them; these checks catch what execution does not: a notebook stored
without outputs or with an error, dirty metadata, a missing badge, setup cell or exercise check.
"""

import json
import re
from pathlib import Path

import pytest
from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
LESSONS = [
    "00_setup_and_data",
    "01_perlin_noise_masks",
    "02_foreground_masks",
    "03_texture_and_structure_anomalies",
    "04_memory_bank",
    "05_coordinate_attention",
    "06_msff_and_spatial_attention",
    "07_decoder_and_losses",
    "08_training",
    "09_evaluation_and_inference",
]


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_the_series_is_complete_and_listed_in_the_readme():
    assert [p.stem for p in NOTEBOOKS] == LESSONS
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for lesson in LESSONS:
        assert f"notebooks/{lesson}.ipynb" in readme, f"README does not link {lesson}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_structure(path: Path):
    notebook = _load(path)
    assert set(notebook["metadata"]) <= {"kernelspec", "language_info"}, "run tools/clean_notebooks.py"
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    cells = notebook["cells"]
    first = cells[0]
    assert first["cell_type"] == "markdown"
    assert f"blob/main/notebooks/{path.name}" in _source(first), "Colab badge must point at this file"
    code = [c for c in cells if c["cell_type"] == "code"]
    setup = _source(code[0])
    assert "setup_notebook(" in setup and "google.colab" in setup
    assert "torch" not in re.findall(r'"pip", "install"[^\]]*\]', setup, flags=re.S)[0]
    sources = [_source(c) for c in code]
    assert any("# Solution" in s for s in sources), "each lesson ships an exercise solution"
    assert any("Correct!" in s for s in sources), "each lesson has a check cell"
    for cell in cells:
        assert not set(cell.get("metadata", {})) & {"execution", "ExecuteTime"}, "execution timestamps"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_outputs_come_from_one_clean_run(path: Path):
    code = [c for c in _load(path)["cells"] if c["cell_type"] == "code"]
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), "re-execute top to bottom (make notebooks)"
    for cell in code:
        assert all(o["output_type"] != "error" for o in cell["outputs"]), "stored error output"
        assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in cell["outputs"]), (
            "a stored progress bar shows 0 % without its widget state: run tools/clean_notebooks.py")
        if "NBVAL_CHECK_OUTPUT" in _source(cell):
            assert cell["outputs"], "a checked cell must store the output nbval compares"
    assert path.stat().st_size < 3_000_000, "keep stored figures small"


def test_cleaning_drops_widget_outputs_and_execution_metadata_and_keeps_the_rest(tmp_path):
    import importlib.util

    import nbformat

    spec = importlib.util.spec_from_file_location("clean_notebooks", ROOT / "tools" / "clean_notebooks.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    bar = nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "x", "version_major": 2, "version_minor": 0},
        "text/plain": "train:   0%|          | 0/24"})
    printed = nbformat.v4.new_output("stream", name="stdout", text="24 steps\n")
    cell = nbformat.v4.new_code_cell("fit()", outputs=[bar, printed], execution_count=1)
    cell.metadata["execution"] = {"iopub.status.busy": "2026-01-01"}
    notebook = nbformat.v4.new_notebook(cells=[cell, nbformat.v4.new_markdown_cell("# text")])
    notebook.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {}}
    path = tmp_path / "lesson.ipynb"
    nbformat.write(notebook, path)
    tool.clean(str(path))
    cleaned = nbformat.read(path, as_version=4)
    assert set(cleaned.metadata) == {"kernelspec", "language_info"}
    assert cleaned.cells[0].outputs == [printed] and cleaned.cells[0].metadata == {}
    assert cleaned.cells[0].execution_count == 1 and cleaned.cells[1].source == "# text"


def test_setup_asks_for_a_restart_when_the_install_changed_numpy(monkeypatch):
    import importlib.metadata

    import numpy as np

    from memseg_tutorial.notebook import setup_notebook

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.0.0" if name == "numpy" else "0")
    with pytest.raises(RuntimeError, match=rf"numpy {np.__version__} is loaded but .* numpy 1.0.0 .* restart"):
        setup_notebook("quick")
    monkeypatch.setattr(importlib.metadata, "version", lambda name: np.__version__)
    assert setup_notebook("quick").preset == "quick"


def test_setup_defaults_to_the_quick_preset_and_seeds_torch_and_numpy(monkeypatch):
    """Lessons run on a laptop CPU unless told otherwise, and a lesson cell's own torch.rand or
    np.random draw repeats from one run of the notebook to the next."""
    import matplotlib
    import numpy as np
    import torch

    from memseg_tutorial.notebook import setup_notebook

    monkeypatch.delenv("MEMSEG_PRESET", raising=False)
    with matplotlib.rc_context():  # setup_notebook sets figure defaults for the whole process
        assert setup_notebook().preset == "quick"
        first = torch.rand(3), np.random.rand(3)
        setup_notebook()
        again = torch.rand(3), np.random.rand(3)
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])


def test_refusing_replaces_every_name_of_a_function_and_puts_them_back():
    """An exercise's check runs the student's function inside refusing(): the package's own
    function, under any name it has (the package's modules, the notebook's globals), raises."""
    import memseg_tutorial
    from memseg_tutorial import losses
    from memseg_tutorial.notebook import refusing

    original = losses.focal_loss
    namespace = {"focal_loss": original, "alias": original, "other": len}
    with refusing(original, namespace, "write it yourself"):
        for call in (namespace["focal_loss"], namespace["alias"], losses.focal_loss,
                     memseg_tutorial.losses.focal_loss):
            with pytest.raises(AssertionError, match="write it yourself"):
                call(None, None, 2.0)
        assert namespace["other"] is len
    assert losses.focal_loss is original and namespace == {"focal_loss": original, "alias": original, "other": len}
    with pytest.raises(ValueError, match="boom"), refusing(original, namespace, "x"):
        raise ValueError("boom")
    assert losses.focal_loss is original and namespace["alias"] is original  # put back after an error too

