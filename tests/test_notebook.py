"""notebooks/ run headless, top to bottom, against a checkpoint trained here."""

import nbformat
import pytest
from nbclient import NotebookClient

from genlab.training import build
from tests.conftest import REPO, compose_train, fit_built

NOTEBOOK = REPO / "notebooks" / "explore_checkpoint.ipynb"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert any("parameters" in c.metadata.get("tags", []) for c in code)


def _outputs(nb) -> list:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "images"),
    [("cvae", 5), ("gan_mlp", 3)],  # samples, lerp, slerp (+ classes, reconstructions)
)
def test_explore_checkpoint_runs(model, images, tmp_path, monkeypatch):
    cfg = compose_train(
        ["debug=tiny", "logger=csv", "callbacks=none", "metrics=none", "data=synthetic",
         f"model={model}"],
        tmp_path,
    )  # fmt: skip
    cfg.trainer.max_epochs, cfg.trainer.limit_train_batches = 1, 2
    objs = build(cfg)
    fit_built(objs)
    ckpt = tmp_path / "last.ckpt"
    objs["trainer"].save_checkpoint(ckpt)

    # the kernel inherits this environment: the notebook's parameter cell reads GENLAB_CKPT
    monkeypatch.setenv("GENLAB_CKPT", str(ckpt))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = _outputs(nb)
    assert not [out for out in outputs if out.output_type == "error"]
    assert sum("image/png" in out.get("data", {}) for out in outputs) == images
    printed = "".join(out.get("text", "") for out in outputs)
    assert "on synthetic (32 px, 1 channels, " in printed
