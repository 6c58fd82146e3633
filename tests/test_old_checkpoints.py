"""Checkpoints written by the first layout (tests/fixtures/v0.1-layout) load, sample, score, resume.

Their saved configs name modules that have since moved (``genlab.gan.GAN``, ``genlab.vae.VAE``,
``genlab.data.ImageDataModule``); one table maps them to their new homes.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch

from genlab.checkpoints import load_model
from tests.conftest import load_ckpt, ok

FIXTURES = Path(__file__).parent / "fixtures" / "v0.1-layout"
CHECKPOINTS = ("gan_mlp", "vae_vamp")
# the overrides that wrote gan_mlp.ckpt (fixtures/v0.1-layout/README.md): resume needs the same run
GAN_RUN = [
    "debug=tiny", "logger=csv", "metrics=none", "model=gan_mlp", "model.generator.hidden=32",
    "model.generator.latent_dim=8", "model.discriminator.hidden=32", "model.ema_decay=0.9",
    "model.num_grid=8", "data=synthetic", "data.image_size=8", "data.channels=1",
    "data.batch_size=8", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
]  # fmt: skip


def run_of(name: str, tmp_path: Path) -> Path:
    """The fixture copied to RUN/checkpoints/last.ckpt (genlab-eval writes beside its run)."""
    ckpt = tmp_path / name / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    shutil.copy(FIXTURES / f"{name}.ckpt", ckpt)
    return ckpt


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_old_checkpoint_samples_what_it_sampled_before_the_move(name):
    expected = torch.load(FIXTURES / "samples_seed0.pt", weights_only=True)[name]
    _, model = load_model(str(FIXTURES / f"{name}.ckpt"))
    torch.manual_seed(0)
    with torch.no_grad():
        got = model.sample(4)
    assert torch.allclose(got, expected, atol=1e-6), (got - expected).abs().max()


@pytest.mark.slow
def test_genlab_sample_reads_an_old_checkpoint(run_cli, tmp_path):
    ckpt = run_of("gan_mlp", tmp_path)
    ok(
        run_cli(
            "genlab-sample", f"ckpt_path={ckpt}", "num_samples=8", f"hydra.run.dir={tmp_path}/s"
        )
    )
    assert (tmp_path / "s" / "samples.png").is_file()


@pytest.mark.slow
def test_genlab_eval_scores_an_old_checkpoint(run_cli, tmp_path):
    ckpt = run_of("vae_vamp", tmp_path)
    ok(run_cli("genlab-eval", f"ckpt_path={ckpt}", "metrics=none", "nll_k=2"))
    (metrics,) = (ckpt.parent.parent / "eval").glob("*/metrics.json")
    assert "val/nll" in json.loads(metrics.read_text())["metrics"]


@pytest.mark.slow
def test_training_resumes_from_an_old_checkpoint(run_cli, tmp_path):
    ckpt = run_of("gan_mlp", tmp_path)
    run = tmp_path / "resumed"
    ok(run_cli("genlab-train", *GAN_RUN, "trainer.max_epochs=2", f"ckpt_path={ckpt}",
               f"hydra.run.dir={run}"))  # fmt: skip
    before, after = load_ckpt(ckpt), load_ckpt(run / "checkpoints" / "last.ckpt")
    # 2 batches an epoch, a D and a G step each: the second epoch continued the first's 4 steps
    assert (before["global_step"], after["global_step"]) == (4, 8)
    assert after["genlab_images_seen"] == 2 * before["genlab_images_seen"]
