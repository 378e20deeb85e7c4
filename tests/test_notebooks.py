"""Every notebook of examples/notebooks runs top to bottom without error, with its training shortened (slow)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "examples" / "notebooks").glob("*.ipynb"))
# Top-of-notebook knobs set to tiny values: `max_steps = 20` becomes `max_steps = 2`, and so on.
OVERRIDES = {"max_steps": 2, "n_test": 4}


def shorten(source: str) -> str:
    for name, value in OVERRIDES.items():
        source = re.sub(rf"^{name} = \S+", f"{name} = {value}", source, flags=re.MULTILINE)
    return source


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
    assert all(out.get("output_type") != "error" for cell in nb.cells for out in cell.get("outputs", []))
