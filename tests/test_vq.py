"""VQ-VAE: nearest-code quantisation, straight-through gradients, EMA codebook, restarts."""

import importlib.util
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from genlab.config import instantiate
from genlab.errors import GenlabError
from genlab.models.vqvae import code_counts, perplexity, vq_loss
from genlab.nets.taming import TamingDecoder, TamingEncoder
from genlab.nets.vq import VectorQuantizer, VQEncoder
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


# tests/fixtures/references/taming_vqgan.pt: written by experiments/references/taming_vqgan.py
# from taming-transformers 3ba01b241669f5ade541ce990f7650a3b8f65318 (CompVis, HEAD): their
# Encoder/Decoder + VQModel's quant_conv/post_quant_conv at a tiny width with seeded weights,
# fixed inputs and outputs, VectorQuantizer2's loss and gradients for legacy=True and False,
# configs/custom_vqgan.yaml and the parameter counts of its networks.
TAMING = torch.load(
    Path(__file__).parent / "fixtures" / "references" / "taming_vqgan.pt", weights_only=False
)
REFERENCE = Path(__file__).parents[1] / "experiments" / "references" / "taming_vqgan.py"


def _fill_(state: dict, seed: int) -> None:
    """The reference script's seeded weights, by its own function."""
    spec = importlib.util.spec_from_file_location("taming_reference", REFERENCE)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.fill_(state, seed)


def tiny_taming() -> tuple[TamingEncoder, TamingDecoder]:
    t = TAMING["tiny"]
    kw = {k: t[k] for k in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels")}
    enc = TamingEncoder(t["resolution"], t["in_channels"], TAMING["tiny_embed"], **kw)
    dec = TamingDecoder(TAMING["tiny_embed"], t["out_ch"], t["resolution"], **kw)
    return enc, dec


def test_taming_networks_give_tamings_outputs_on_the_same_weights():
    enc, dec = tiny_taming()
    for net, role, seed in ((enc, "encoder", 0), (dec, "decoder", 1)):
        state = net.state_dict()
        # the same names and shapes as taming's modules: their weights load as they are
        assert {k: tuple(v.shape) for k, v in state.items()} == TAMING[f"{role}_shapes"]
        _fill_(state, TAMING["seed"] + seed)
        sums = {k: v.double().sum().item() for k, v in state.items()}
        assert sums == pytest.approx(TAMING[f"{role}_sums"], abs=1e-9)  # the same weights
    with torch.no_grad():
        z, out = enc(TAMING["x"]), dec(TAMING["q_in"])
    assert z.shape == TAMING["z"].shape and out.shape == TAMING["out"].shape
    assert torch.allclose(z, TAMING["z"], atol=1e-5), (z - TAMING["z"]).abs().max()
    assert torch.allclose(out, TAMING["out"], atol=1e-5), (out - TAMING["out"]).abs().max()
    # the comparison can fail: other weights give clearly other outputs
    _fill_(dec.state_dict(), TAMING["seed"] + 5)
    with torch.no_grad():
        assert (dec(TAMING["q_in"]) - TAMING["out"]).abs().max() > 1e-2


@pytest.mark.parametrize("legacy", [True, False])
def test_quantiser_loss_forms_give_tamings_gradients(legacy):
    ref = TAMING["quantizer"][legacy]
    q = VectorQuantizer(num_codes=16, embedding_dim=8, codebook="loss")
    q.embedding.data.copy_(TAMING["codebook"])

    def grads(beta_on: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
        q.embedding.grad = None
        z = TAMING["zq_in"].clone().requires_grad_(True)
        out = q(z)
        loss = vq_loss(out, TAMING["beta"], beta_on).mean()
        loss.backward()
        return z.grad, q.embedding.grad.clone(), {**out, "loss": loss}

    form = "codebook" if legacy else "commitment"  # taming's legacy=True puts beta on codebook
    grad_z, grad_e, out = grads(form)
    assert torch.equal(out["codes"], ref["codes"])
    assert torch.allclose(out["quantized"], ref["z_q"], atol=1e-6)
    assert out["loss"].item() == pytest.approx(ref["loss"].item(), rel=1e-6)
    assert torch.allclose(grad_z, ref["grad_z"], atol=1e-7), (grad_z - ref["grad_z"]).abs().max()
    assert torch.allclose(grad_e, ref["grad_codebook"], atol=1e-7)
    # the other form moves z and the codebook differently by a factor of 1 / beta = 4
    other_z, other_e, _ = grads("codebook" if form == "commitment" else "commitment")
    ratio = 4.0 if legacy else 0.25
    assert torch.allclose(other_z, grad_z / ratio, atol=1e-7)
    assert torch.allclose(other_e, grad_e * ratio, atol=1e-7)
    assert (other_z - ref["grad_z"]).abs().max() > 1e-3


def test_taming_recipe_is_custom_vqgan_yaml_with_its_parameter_counts(tmp_path):
    cfg = compose_train(["experiment=vqgan_folder", f"data.root={tmp_path}"], tmp_path)
    theirs = TAMING["custom_config"]["model"]
    dd, loss = theirs["params"]["ddconfig"], theirs["params"]["lossconfig"]["params"]
    enc = cfg.model.encoder
    assert cfg.data.image_size == dd["resolution"] and cfg.data.channels == dd["in_channels"]
    for key in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels", "dropout"):
        assert enc[key] == dd[key], key
    assert enc.embedding_dim == theirs["params"]["embed_dim"]
    assert cfg.model.quantizer.num_codes == theirs["params"]["n_embed"]
    assert cfg.model.disc_start == loss["disc_start"] == 10000
    assert cfg.model.disc_weight == loss["disc_weight"]
    assert cfg.model.beta_on == "codebook" and cfg.model.beta == 0.25  # VQModel's beta, legacy
    assert cfg.model.quantizer.init == "taming"
    batch = TAMING["custom_config"]["data"]["params"]["batch_size"]
    assert cfg.data.batch_size == batch
    assert cfg.model.optimizer.lr == pytest.approx(theirs["base_learning_rate"] * batch)
    model = instantiate(cfg.model, _convert_="object")

    def count(net) -> int:
        return sum(p.numel() for p in net.parameters())

    # taming's custom_vqgan.yaml networks, counted by experiments/references/taming_vqgan.py:
    # Encoder + quant_conv, post_quant_conv + Decoder, 1024 x 256 codes, NLayerDiscriminator
    want = {"encoder": 29_363_968, "decoder": 42_515_587, "codebook": 262_144}
    want["discriminator"] = 2_765_633
    assert TAMING["custom_params"] == want
    got = {
        "encoder": count(model.encoder), "decoder": count(model.decoder),
        "codebook": model.quantizer.embedding.numel(), "discriminator": count(model.discriminator),
    }  # fmt: skip
    assert got == want
    assert model.grid == (16, 16)


def sonnet_encoder(enc: VQEncoder, x: torch.Tensor, relu3: bool = True) -> torch.Tensor:
    """sonnet's Encoder (examples/vqvae_example.ipynb) on genlab's weights, then pre_vq_conv1;
    ``relu3=False``: without the ReLU after the 3x3 conv (genlab's encoder before the fix)."""
    conv1, _, conv2, _, conv3, stack, pre_vq = enc.net
    h = F.relu(conv1(x))
    h = F.relu(conv2(h))
    h = conv3(h)
    if relu3:  # sonnet: h = tf.nn.relu(self._enc_3(h)) before the residual stack
        h = F.relu(h)
    for block in stack.blocks:
        _, res3, _, res1 = block
        h = h + res1(F.relu(res3(F.relu(h))))
    return pre_vq(F.relu(h))


def test_vqvae_encoder_is_sonnets_and_old_checkpoints_keep_theirs(tmp_path):
    cfg = compose_train(["model=vqvae", *QUIET, *SMALL], tmp_path)
    enc = instantiate(cfg.model.encoder)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(enc(x), sonnet_encoder(enc, x), atol=1e-6)
        # an encoder saved before relu_after_conv existed: its config lacks the key; it loads
        # the same state_dict keys and computes what it was trained as
        saved = {k: v for k, v in cfg.model.encoder.items() if k != "relu_after_conv"}
        old = instantiate(saved)
        old.load_state_dict(enc.state_dict())
        assert torch.allclose(old(x), sonnet_encoder(enc, x, relu3=False), atol=1e-6)
        assert (old(x) - enc(x)).abs().max() > 1e-3  # the ReLU matters: the test can fail


def test_beta_weighs_the_term_beta_on_names(tmp_path):
    for model, form in (("vqvae", "commitment"), ("vqgan", "codebook")):
        cfg = compose_train([f"model={model}", *QUIET, *SMALL], tmp_path)
        assert cfg.model.beta_on == form
    cfg = compose_train(["model=vqvae", *QUIET, *SMALL, "model.quantizer.codebook=loss"], tmp_path)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    for form in ("commitment", "codebook"):
        cfg.model.beta_on = form
        module = instantiate(cfg.model, _convert_="object")
        with torch.no_grad():
            t = module.terms(x)
            c, e = t["commitment"], t["codebook_loss"]
            quant = 0.25 * c + e if form == "commitment" else c + 0.25 * e
            want = (t["recon"] / x[0].numel() + quant).mean()
            assert module.objective(t, x).item() == pytest.approx(want.item(), rel=1e-6)
    cfg.model.beta_on = "paper"
    with pytest.raises(GenlabError, match="model.beta_on"):
        instantiate(cfg.model, _convert_="object")


def test_codebook_init_is_sonnets_or_tamings():
    # taming/modules/vqvae/quantize.py VectorQuantizer2: weight.data.uniform_(-1/n_e, 1/n_e)
    torch.manual_seed(0)
    taming = VectorQuantizer(num_codes=1024, embedding_dim=256, codebook="loss", init="taming")
    sonnet = VectorQuantizer(num_codes=1024, embedding_dim=256, codebook="loss")
    e, s = taming.embedding.detach(), sonnet.embedding.detach()
    assert e.abs().max() <= 1 / 1024 and e.abs().max() > 0.99 / 1024
    assert e.std().item() == pytest.approx(1 / 1024 / 3**0.5, rel=0.01)  # uniform's std
    assert s.abs().max() <= (3 / 256) ** 0.5 and s.abs().max() > 0.99 * (3 / 256) ** 0.5
    with pytest.raises(GenlabError, match="model.quantizer.init"):
        VectorQuantizer(init="kmeans")
