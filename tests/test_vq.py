"""VQ-VAE: nearest-code quantisation, straight-through gradients, EMA codebook, restarts."""

import math

import pandas as pd
import pytest
import torch

from genlab.config import instantiate
from genlab.errors import GenlabError
from genlab.models.vqvae import code_counts, perplexity
from genlab.nets.vq import VectorQuantizer
from genlab.training import build
from tests.conftest import compose_train, fit_built

QUIET = ["callbacks=none", "metrics=none", "data=synthetic"]
# a narrow VQ-VAE: these tests are about the algorithm, not capacity
SMALL = ["model.encoder.hidden=32", "model.encoder.res_hidden=8", "model.quantizer.num_codes=16"]


def quantizer(codes: list[list[float]], **kw) -> VectorQuantizer:
    q = VectorQuantizer(num_codes=len(codes), embedding_dim=len(codes[0]), **kw)
    q.embedding.data.copy_(torch.tensor(codes))
    return q


def grid(vectors: list[list[float]]) -> torch.Tensor:
    """Vectors (N, D) as one image's (1, D, 1, N) grid."""
    return torch.tensor(vectors).T[None, :, None, :]


def test_nearest_code_on_a_hand_example():
    q = quantizer([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    z = grid([[0.1, 0.1], [0.9, -0.5], [0.4, 1.2], [0.6, 0.1], [-3.0, 0.0]])
    # squared distances to the codes: [0.02, 0.82, 3.62], [1.06, 0.26, 7.06],
    # [1.6, 1.8, 0.8], [0.37, 0.17, 3.97], [9, 16, 13]
    assert q.codes(z).tolist() == [[[0, 1, 2, 1, 0]]]
    out = q(z)
    assert torch.equal(out["quantized"], grid([[0, 0], [1, 0], [0, 2], [1, 0], [0, 0]]).float())
    # commitment ||z - e||^2 averaged over the 10 elements
    want = (0.02 + 0.26 + 0.8 + 0.17 + 9) / 10
    assert out["commitment"].item() == pytest.approx(want)
    assert out["codebook_loss"].item() == 0  # EMA codebook: no loss term


@pytest.mark.parametrize("codebook", ["ema", "loss"])
def test_straight_through_gradient_is_the_identity_for_the_encoder(codebook):
    q = quantizer([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], codebook=codebook)
    z = grid([[0.1, 0.1], [0.9, -0.5], [0.4, 1.2]]).requires_grad_(True)
    upstream = torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
    (q(z)["quantized"] * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)
    if codebook == "loss":  # the codebook learns from the codebook loss alone, not through x'
        assert q.embedding.grad is None
        z2 = z.detach().requires_grad_(True)
        q(z2)["codebook_loss"].sum().backward()
        assert z2.grad is None or not z2.grad.any()
        assert q.embedding.grad[:, :].abs().sum() > 0


def test_ema_codebook_update_against_a_hand_computation():
    q = quantizer([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], decay=0.5, epsilon=0.1)
    z1 = grid([[0.2, 0.0], [0.4, 0.2], [1.2, 0.0]])  # codes 0, 0, 1
    q.update(z1, q.codes(z1))
    # step 1, debiased by 1 - 0.5: counts [2, 1, 0], sums [[0.6, 0.2], [1.2, 0], [0, 0]];
    # Laplace: (c + 0.1) / (3 + 0.3) * 3 = [2.1, 1.1, 0.1] * 3 / 3.3
    n1 = torch.tensor([2.1, 1.1, 0.1]) * 3 / 3.3
    e1 = torch.tensor([[0.6, 0.2], [1.2, 0.0], [0.0, 0.0]]) / n1[:, None]
    assert torch.allclose(q.embedding, e1, atol=1e-6)
    z2 = grid([[0.9, 0.1]])  # code 1 of the updated codebook ([1.09, 0] is nearest)
    assert q.codes(z2).item() == 1
    q.update(z2, q.codes(z2))
    # hidden averages after two steps: count 0.5 * [1, 0.5, 0] + 0.5 * [0, 1, 0] = [0.5, 0.75, 0];
    # debiased by 1 - 0.25: [2/3, 1, 0]; sums likewise
    count = torch.tensor([0.5, 0.75, 0.0]) / 0.75
    sums = (
        0.5 * torch.tensor([[0.3, 0.1], [0.6, 0.0], [0, 0]])
        + 0.5 * torch.tensor([[0.0, 0.0], [0.9, 0.1], [0, 0]])
    ) / 0.75
    n = count.sum()
    smoothed = (count + 0.1) / (n + 0.3) * n
    assert torch.allclose(q.embedding, sums / smoothed[:, None], atol=1e-6)


@pytest.mark.parametrize("codebook", ["ema", "loss"])
def test_dead_code_restart_on_a_forced_unused_code(codebook):
    # code 2 is far from every input (under EMA it decays to the origin, still far)
    codes = [[1.0, 0.0], [0.0, 1.0], [50.0, 50.0]]

    def run(seed: int) -> VectorQuantizer:
        torch.manual_seed(seed)
        q = quantizer(codes, restart_after=3, codebook=codebook)
        z = grid([[1.1, 0.0], [0.9, 0.1], [0.1, 0.9], [0.0, 1.2]])
        for step in range(3):
            assert 2 not in q.codes(z)
            q.update(z, q.codes(z))
            if step < 2:  # unused for 1 and 2 updates: kept
                assert q.unused_for.tolist() == [0, 0, step + 1]
        return q, z

    q, z = run(0)
    inputs = z[0, :, 0].T  # (4, D)
    # restarted to one of the batch's encoder outputs, its counter reset; the others untouched
    assert any(torch.allclose(q.embedding[2], v) for v in inputs), q.embedding[2]
    assert q.unused_for.tolist() == [0, 0, 0]
    assert 2 in q.codes(z)  # an input now sits exactly on it
    assert torch.equal(run(0)[0].embedding, q.embedding)  # deterministic under the seed
    if codebook == "ema":  # the EMA state restarted too: the code stays where it was put
        restarted = q.embedding[2].clone()
        q.update(z, q.codes(z))
        assert torch.allclose(q.embedding[2], restarted, atol=0.05), (q.embedding[2], restarted)
    # without restarts the code stays dead
    q_off = quantizer(codes, codebook=codebook)
    for _ in range(5):
        q_off.update(z, q_off.codes(z))
    assert 2 not in q_off.codes(z)


def test_perplexity_of_uniform_assignment_is_the_codebook_size():
    k = 16
    uniform = torch.arange(4 * k) % k
    assert perplexity(code_counts(uniform, k)).item() == pytest.approx(k)
    assert perplexity(code_counts(torch.zeros(64, dtype=torch.long), k)).item() == pytest.approx(1)
    half = torch.arange(64) % (k // 2)  # half the codes, equally often
    assert perplexity(code_counts(half, k)).item() == pytest.approx(k / 2)


def test_bad_config_values_name_their_key(tmp_path):
    cfg = compose_train(["model=vqvae", "model.quantizer.embedding_dim=8", *QUIET], tmp_path)
    with pytest.raises(GenlabError, match="model.quantizer.embedding_dim=8"):
        instantiate(cfg.model, _convert_="object")
    for override, key in [
        ("model.quantizer.codebook=kmeans", "model.quantizer.codebook"),
        ("model.encoder.downsample=6", "model.encoder.downsample"),
        ("model.likelihood=bernoulli", "model.likelihood"),
    ]:
        cfg = compose_train(["model=vqvae", override, *QUIET], tmp_path)
        with pytest.raises(GenlabError, match=key):
            instantiate(cfg.model, _convert_="object")


def test_validation_logs_and_sample_contracts(tmp_path):
    cfg = compose_train(
        ["model=vqvae", "debug=tiny", *QUIET, *SMALL, "model.likelihood=discretized_gaussian"],
        tmp_path,
    )
    cfg.trainer.max_epochs = 1
    objs = fit_built(build(cfg))
    logged = objs["trainer"].callback_metrics
    for key in ("val/mse", "val/perplexity", "val/codes_used", "val/nll_bpd", "val/recon"):
        assert torch.isfinite(logged[key]), key
    assert 1 <= logged["val/codes_used"] <= 16
    assert 1 <= logged["val/perplexity"] <= logged["val/codes_used"] + 1e-4
    rows = pd.read_csv(objs["trainer"].logger.log_dir + "/metrics.csv")
    assert {"train/recon", "train/commitment"} <= set(rows.columns)
    module = objs["model"].eval()
    loader = objs["datamodule"].val_dataloader()
    batches = [b[0] for _, b in zip(range(cfg.trainer.limit_val_batches), loader, strict=False)]
    x = torch.cat(batches)
    with torch.no_grad():
        assert module.sample(3).shape == (3, 1, 32, 32)
        assert module.reconstruct(x).shape == x.shape
        # the uniform-prior bound: recon NLL plus 8 x 8 x log 16 nats, in bits per subpixel
        want = (module.terms(x)["recon"] + 64 * math.log(16)).mean() / (1024 * math.log(2))
    assert logged["val/nll_bpd"].item() == pytest.approx(want.item(), rel=1e-4)
    assert module.code_bits() == pytest.approx(64 * math.log(16))
    grids = module.grid_images()
    assert grids["samples"].shape[0] == 64
    assert len(grids["reconstructions"]) == 2 * len(batches[0])  # inputs and reconstructions


def val_mse(objs) -> float:
    trainer = objs["trainer"]
    return float(trainer.validate(objs["model"], objs["datamodule"], verbose=False)[0]["val/mse"])


@pytest.mark.slow
@pytest.mark.parametrize("codebook", ["ema", "loss"])
def test_vqvae_learns_on_synthetic_data(codebook, tmp_path):
    """A few hundred steps take the reconstruction error well below its starting value."""
    cfg = compose_train(
        ["model=vqvae", "debug=tiny", *QUIET, *SMALL, f"model.quantizer.codebook={codebook}",
         "model.quantizer.restart_after=20", "model.optimizer.lr=2e-3", "data.limit=null",
         "data.batch_size=32", "logger=none"],
        tmp_path,
    )  # fmt: skip
    cfg.trainer.max_epochs, cfg.trainer.limit_train_batches = 4, 1.0
    cfg.trainer.limit_val_batches = 4
    objs = build(cfg)
    before = val_mse(objs)
    fit_built(objs)
    after = val_mse(objs)
    assert after < 0.3 * before, (before, after)
    used = objs["trainer"].callback_metrics["val/codes_used"]
    assert used >= 4, used  # restarts keep more than a handful of codes alive


def test_codebook_state_travels_in_the_checkpoint(tmp_path):
    """EMA averages, restart counters and codes are buffers: genlab-eval and resume get them."""
    from genlab.checkpoints import load_model
    from tests.conftest import load_ckpt, train_checkpoint

    extra = ["model.quantizer.restart_after=3"]
    ckpt = train_checkpoint(tmp_path, "vq", "model=vqvae", *QUIET, *SMALL, *extra)
    state = load_ckpt(ckpt)["state_dict"]
    for name in ("embedding", "ema_count", "ema_sum", "ema_steps", "unused_for"):
        assert f"quantizer.{name}" in state, name
    assert state["quantizer.ema_steps"] == 2  # two training batches, two EMA updates
    _, model = load_model(str(ckpt))
    for k, v in model.quantizer.state_dict().items():
        assert torch.equal(v, state[f"quantizer.{k}"]), k
