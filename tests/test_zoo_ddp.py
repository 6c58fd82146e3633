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
    hp = ckpt["hyper_parameters"]
    n_critic = hp.get("n_critic", 1)
    # debug=tiny: 4 batches per process; a D step each, a G step every n_critic, and with
    # model.lazy_step=separate (model=stylegan2) an R1 step every r1_interval-th batch from 0
    # and a path-length step every pl_interval-th G step
    separate = hp.get("lazy_step") == "separate"
    r1_steps = len(range(0, 4, hp["r1_interval"])) if separate and hp.get("r1_gamma") else 0
    pl_steps = (
        len(range(0, 4 // n_critic, hp["pl_interval"])) if separate and hp.get("pl_weight") else 0
    )
    assert ckpt["global_step"] == 4 + 4 // n_critic + r1_steps + pl_steps
    weights = [v for v in ckpt["state_dict"].values() if v.is_floating_point()]
    assert all(torch.isfinite(v).all() for v in weights)  # bf16 kept the weights finite
