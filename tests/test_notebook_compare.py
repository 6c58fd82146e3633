"""notebooks/compare_sweep.ipynb runs headless on a real sweep and on the default path."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO
from tests.test_compare import tiny_sweep, write_run

NOTEBOOK = REPO / "notebooks" / "compare_sweep.ipynb"


def execute(cwd: Path) -> nbformat.NotebookNode:
    """Run the notebook top to bottom in a fresh kernel started in ``cwd``."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    ).execute()
    return nb


def outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def text(nb: nbformat.NotebookNode, mime: str | None = None) -> str:
    """Everything printed (``mime=None``) or displayed as ``mime``."""
    if mime is None:
        return "".join(o.get("text", "") for o in outputs(nb) if o.output_type == "stream")
    return "".join(o.get("data", {}).get(mime, "") for o in outputs(nb))


def images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs(nb))


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert any("parameters" in c.metadata.get("tags", []) for c in code)


@pytest.mark.slow
def test_compare_sweep_notebook_on_a_real_sweep(tmp_path_factory, tmp_path, monkeypatch):
    sweep = tiny_sweep(tmp_path_factory)
    # the kernel inherits this environment: the parameter cell reads GENLAB_SWEEP_DIR
    monkeypatch.setenv("GENLAB_SWEEP_DIR", str(sweep))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = execute(tmp_path)
    assert not [o for o in outputs(nb) if o.output_type == "error"]
    printed = text(nb)
    assert f"4 runs in {sweep}\n" in printed
    assert "keys that differ: model.optimizer_g.lr, seed\n" in printed
    table = text(nb, "text/markdown").splitlines()
    assert table[0] == "| model.optimizer_g.lr | n | val/swd final | val/swd best (min) | runs |"
    assert [row.split(" | ")[:2] for row in table[2:]] == [["| 0.0001", "2"], ["| 0.0002", "2"]]
    assert text(nb, "text/html").count("<tr") == 5  # per-run frame: header + 4 runs
    assert images(nb) == 1


def test_compare_sweep_notebook_finds_the_newest_sweep(tmp_path, monkeypatch):
    monkeypatch.delenv("GENLAB_SWEEP_DIR", raising=False)
    for day, betas in [("2024-01-01", (1, 2)), ("2024-01-02", (3, 4, 5))]:
        for job, beta in enumerate(betas):
            run = tmp_path / "multirun" / day / "09-00-00" / str(job)
            model = {"_target_": "genlab.vae.VAE", "beta": float(beta)}
            write_run(run, [f"model.beta={beta}"], {"val/elbo": [-9.0, -beta]}, {"model": model})
    nb = execute(tmp_path)
    assert not [o for o in outputs(nb) if o.output_type == "error"]
    assert "3 runs in multirun/2024-01-02/09-00-00\n" in text(nb)
    table = text(nb, "text/markdown").splitlines()
    assert table[0] == "| model.beta | n | val/elbo final | val/elbo best (max) | runs |"
    assert table[2:] == [
        "| 3.0 | 1 | -3 | -3 | 0 |",
        "| 4.0 | 1 | -4 | -4 | 1 |",
        "| 5.0 | 1 | -5 | -5 | 2 |",
    ]
    assert images(nb) == 1
