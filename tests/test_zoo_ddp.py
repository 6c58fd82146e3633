"""Today's GAN baselines under DDP (two CPU processes, gloo) and bf16, through the CLI."""

import pytest
import torch

from tests.conftest import TINY, load_ckpt, ok
from tests.test_zoo import MODEL_ARGS


@pytest.mark.slow
@pytest.mark.parametrize("model", ["stylegan2", "biggan", "r3gan"])
def test_new_gans_train_under_ddp_in_bf16(model, run_cli, tmp_path):
    run = tmp_path / "run"
    proc = run_cli(
        "genlab-train", f"model={model}", *TINY, "data=synthetic", *MODEL_ARGS[model],
        "trainer=ddp_cpu", "trainer.precision=bf16-mixed", "trainer.max_epochs=1",
        f"hydra.run.dir={run}",
    )  # fmt: skip
    ok(proc)
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr  # really two processes
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names.count("last.ckpt") == 1, names
    ckpt = load_ckpt(run / "checkpoints" / "last.ckpt")
    n_critic = ckpt["hyper_parameters"].get("n_critic", 1)
    # debug=tiny: 4 batches per process; a D step each, a G step every n_critic
    assert ckpt["global_step"] == 4 + 4 // n_critic
    weights = [v for v in ckpt["state_dict"].values() if v.is_floating_point()]
    assert all(torch.isfinite(v).all() for v in weights)  # bf16 kept the weights finite
