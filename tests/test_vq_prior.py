"""The gated PixelCNN prior over VQ-VAE codes: causal masking, learning, sampling, the pair."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from genlab.config import instantiate
from genlab.errors import GenlabError
from genlab.nets.vq import GatedPixelCNN
from genlab.training import build
from tests.conftest import compose_train, fit_built, train_checkpoint

QUIET = ["callbacks=none", "metrics=none", "data=synthetic"]
SMALL_VQ = ["model.encoder.hidden=32", "model.encoder.res_hidden=8", "model.quantizer.num_codes=16"]
SMALL_PRIOR = ["model.prior.width=16", "model.prior.layers=3", "model.prior.head=32"]


def vqvae_checkpoint(tmp_path: Path, *extra: str) -> Path:
    """Two tiny batches of a narrow VQ-VAE on synthetic data, saved with its run config."""
    return train_checkpoint(tmp_path, "vqvae", "model=vqvae", *QUIET, *SMALL_VQ, *extra)


def test_mask_hides_the_current_and_later_positions_and_no_earlier_one():
    """d logits(i) / d input(j) is zero for every j >= i in raster order, nonzero for j < i."""
    torch.manual_seed(0)
    h = w = 4
    net = GatedPixelCNN(num_codes=5, width=8, layers=4, kernel=3, head=8).double()
    for r in range(h):
        for c in range(w):
            e = torch.randn(1, 8, h, w, dtype=torch.double, requires_grad=True)
            net.forward_embedded(e)[0, :, r, c].sum().backward()
            seen = e.grad[0].abs().sum(0)  # (h, w)
            order = torch.arange(h * w).view(h, w)
            i = r * w + c
            assert not seen[order >= i].any(), (r, c, seen)
            # no blind spot: with 4 layers of 3x3, every earlier position of a 4x4 grid reaches i
            assert (seen[order < i] > 0).all(), (r, c, seen)


def test_an_unmasked_layer_would_fail_the_mask_test():
    """The test can fail: without mask A the first layer lets a position see itself."""
    net = GatedPixelCNN(num_codes=5, width=8, layers=2, kernel=3, head=8)
    net.layers[0].first = False
    e = torch.randn(1, 8, 3, 3, requires_grad=True)
    net.forward_embedded(e)[0, :, 1, 1].sum().backward()
    assert e.grad[0, :, 1, 1].abs().sum() > 0


def structured_codes(n: int, k: int = 8, size: int = 4, seed: int = 0) -> torch.Tensor:
    """Grids whose codes follow (r + c + offset) mod k from a random offset: one free code."""
    g = torch.Generator().manual_seed(seed)
    offset = torch.randint(k, (n, 1, 1), generator=g)
    r, c = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (r + c + offset) % k


def nll_per_code(net: GatedPixelCNN, codes: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(net(codes), codes))


@pytest.fixture(scope="module")
def trained_prior() -> GatedPixelCNN:
    torch.manual_seed(0)
    net = GatedPixelCNN(num_codes=8, width=16, layers=3, kernel=3, head=32)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    data = structured_codes(512)
    for step in range(150):
        batch = data[(step * 64) % 512 :][:64]
        loss = F.cross_entropy(net(batch), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def test_prior_beats_the_uniform_nll_on_a_tiny_code_grid(trained_prior):
    test = structured_codes(256, seed=1)
    uniform = math.log(8)  # nats per code
    # the best possible: log 8 for the first code, 0 for the 15 that follow: log(8) / 16
    nll = nll_per_code(trained_prior, test)
    assert nll < 0.25 * uniform, nll
    # the same net on codes without the structure is no better than uniform: it can fail
    shuffled = torch.randint(8, test.shape, generator=torch.Generator().manual_seed(2))
    assert nll_per_code(trained_prior, shuffled) > uniform


def test_samples_follow_the_learned_structure_and_repeat_under_a_seed(trained_prior):
    torch.manual_seed(3)
    a = trained_prior.sample(64, (4, 4))
    torch.manual_seed(3)
    b = trained_prior.sample(64, (4, 4))
    torch.manual_seed(4)
    c = trained_prior.sample(64, (4, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # each grid is (r + c + its first code) mod 8 almost everywhere
    r, col = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    expected = (r + col + a[:, :1, :1]) % 8
    assert (a == expected).float().mean() > 0.9
    assert len(a[:, 0, 0].unique()) >= 4  # the free first code still varies


def test_missing_or_wrong_vqvae_checkpoint_is_one_line_naming_the_key(tmp_path):
    for extra, message in [
        ([], "model.vqvae_ckpt is not set"),
        ([f"model.vqvae_ckpt={tmp_path}/none.ckpt"], "no such checkpoint file"),
    ]:
        cfg = compose_train(["model=vq_prior", *QUIET, *extra], tmp_path)
        with pytest.raises(GenlabError, match=message) as e:
            instantiate(cfg.model, _convert_="object")
        assert "model.vqvae_ckpt" in str(e.value) and "\n" not in str(e.value)
    vae = train_checkpoint(tmp_path, "vae", "model=vae", *QUIET)
    cfg = compose_train(["model=vq_prior", *QUIET, f"model.vqvae_ckpt={vae}"], tmp_path)
    with pytest.raises(GenlabError, match="model.vqvae_ckpt=.*saved by VAE, not a VQ-VAE"):
        instantiate(cfg.model, _convert_="object")


def test_pair_bits_per_dim_is_prior_plus_decoder_nll(tmp_path):
    ckpt = vqvae_checkpoint(tmp_path, "model.likelihood=discretized_gaussian")
    cfg = compose_train(
        ["model=vq_prior", "debug=tiny", *QUIET, *SMALL_PRIOR, f"model.vqvae_ckpt={ckpt}"],
        tmp_path / "prior",
    )
    cfg.trainer.max_epochs = 1
    objs = fit_built(build(cfg))
    module, logged = objs["model"].eval(), objs["trainer"].callback_metrics
    vq = module.vqvae
    assert not any(p.requires_grad for p in vq.parameters())  # frozen first stage
    assert vq.quantizer.embedding.equal(torch.load(ckpt)["state_dict"]["quantizer.embedding"])
    loader = objs["datamodule"].val_dataloader()
    x = torch.cat([b[0] for _, b in zip(range(2), loader, strict=False)])  # limit_val_batches=2
    with torch.no_grad():
        t = vq.terms(x)
        logits = module.prior(t["codes"])
        prior_nll = F.cross_entropy(logits, t["codes"], reduction="none").flatten(1).sum(1)
        want = (prior_nll + t["recon"]).mean() / (1024 * math.log(2))
        assert module.sample(2).shape == (2, 1, 32, 32)
    assert logged["val/nll_bpd"].item() == pytest.approx(want.item(), rel=1e-4)
    assert logged["val/prior_nll"].item() == pytest.approx(prior_nll.mean().item(), rel=1e-4)
    assert logged["val/uniform_nll"].item() == pytest.approx(64 * math.log(16), rel=1e-5)


@pytest.mark.slow
def test_prior_learns_the_codes_of_a_trained_vqvae(tmp_path):
    """On synthetic data the prior's NLL of the codes drops far below the uniform prior's."""
    ckpt = vqvae_checkpoint(tmp_path)
    cfg = compose_train(
        ["model=vq_prior", "debug=tiny", *QUIET, *SMALL_PRIOR, f"model.vqvae_ckpt={ckpt}",
         "data.limit=1024", "data.batch_size=32", "model.optimizer.lr=3e-3", "logger=none"],
        tmp_path / "prior",
    )  # fmt: skip
    cfg.trainer.max_epochs, cfg.trainer.limit_train_batches = 3, 1.0
    objs = build(cfg)
    trainer = objs["trainer"]
    before = trainer.validate(objs["model"], objs["datamodule"], verbose=False)[0]
    fit_built(objs)
    after = trainer.validate(objs["model"], objs["datamodule"], verbose=False)[0]
    uniform = after["val/uniform_nll"]
    assert after["val/prior_nll"] < 0.5 * before["val/prior_nll"], (before, after)
    assert after["val/prior_nll"] < 0.5 * uniform, after


def test_genlab_sample_and_eval_work_for_the_pair(tmp_path):
    """genlab-sample skips latent interpolations (there is no continuous latent) and genlab-eval
    scores the pair without sample metrics (both refused or crashed before)."""
    import numpy as np
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict
    from PIL import Image

    from genlab.config import CONFIG_DIR
    from genlab.evaluation import evaluate
    from genlab.sampling import sample

    vq = vqvae_checkpoint(tmp_path, "model.likelihood=discretized_gaussian")
    ckpt = train_checkpoint(
        tmp_path, "prior", "model=vq_prior", *QUIET, *SMALL_PRIOR, f"model.vqvae_ckpt={vq}"
    )
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        pngs = {}
        for run, seed in (("a", 0), ("b", 0), ("c", 1)):
            cfg = compose("sample", [f"ckpt_path={ckpt}", f"output_dir={tmp_path / run}",
                                     f"seed={seed}", "num_samples=8"])  # fmt: skip
            pngs[run] = {p.name: np.asarray(Image.open(p)) for p in sample(cfg)}
        cfg = compose("eval", [f"ckpt_path={ckpt}", "metrics=none", "trainer.accelerator=cpu"])
    assert set(pngs["a"]) == {"samples.png", "reconstructions.png"}
    assert np.array_equal(pngs["a"]["samples.png"], pngs["b"]["samples.png"])
    assert not np.array_equal(pngs["a"]["samples.png"], pngs["c"]["samples.png"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "eval")
    metrics = evaluate(cfg)["metrics"]
    assert {"val/prior_nll", "val/uniform_nll", "val/nll_bpd"} <= set(metrics)
    assert metrics["val/nll_bpd"] > 0
