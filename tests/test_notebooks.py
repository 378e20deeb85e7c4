"""Every notebook of examples/notebooks runs top to bottom without error, with its training shortened (slow): no
warning and no printed log dict in its outputs, and at least one figure (the training curves and accuracy bars).

Each takes 30-60 s here (2 CPU cores), most of it the kernel's imports and the shortened sampling."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "examples" / "notebooks").glob("*.ipynb"))
# Top-of-notebook knobs set to tiny values: `max_steps = 20` becomes `max_steps = 2`, and so on.
OVERRIDES = {"max_steps": 2, "n_test": 4}
# What a clean notebook never prints: Python warnings (FutureWarning, TqdmWarning, ...), logged warnings
# (transformers' "[transformers] ... deprecated", DeepSpeed's "[WARNING]"), and the Trainer's printed log dicts.
NOISE = re.compile(r"Warning|\[WARNING\]|deprecated|\{'loss'")


def shorten(source: str) -> str:
    for name, value in OVERRIDES.items():
        source = re.sub(rf"^{name} = \S+", f"{name} = {value}", source, flags=re.MULTILINE)
    return source


def test_notebooks_are_found_and_committed_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    assert {p.stem for p in NOTEBOOKS} == {"brts", "cotd_po", "gen_ssd", "tsd_kd", "vcrd"}
    for path in NOTEBOOKS:  # the repository's convention: outputs are made by running them, not committed
        cells = nbformat.read(path, as_version=4).cells
        assert all(not c.get("outputs") for c in cells if c.cell_type == "code"), path.name
        assert any(re.search(r"^max_steps = \d+", c.source, re.MULTILINE) for c in cells), path.name
        assert any(re.search(r"^n_test = \d+", c.source, re.MULTILINE) for c in cells), path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    monkeypatch.setenv("HOME", str(tmp_path))  # nothing written to the real home (caches, runtime files)
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = shorten(cell.source)
    # The "python3" kernel is started with this interpreter (jupyter_client swaps a bare `python` for sys.executable).
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert all(out.get("output_type") != "error" for out in outputs)
    printed = "".join(out.get("text", "") for out in outputs if out.get("output_type") == "stream")
    assert not NOISE.search(printed), printed
    assert any("image/png" in out.get("data", {}) for out in outputs), "no figure"
