"""CMMD: the RBF MMD against the authors' code, the CLIP backbone from a local weights file."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from genlab.metrics.cmmd import (
    CLIP_MEAN,
    CLIP_STD,
    OPENAI_L14_336_SHA256,
    CLIPBackbone,
    build_clip,
    cmmd_from_features,
)
from genlab.metrics.features import MetricsUnavailable, to_uint8

TINY = {"width": 64, "depth": 2, "patch": 14, "input_size": 56, "embed_dim": 32, "mlp": 256}

# Reference numbers: sayakpaul/cmmd-pytorch @ f7673a9f46320ac958878c19f7686e203376ad9d,
# distance.py, mmd(x, y) (torch, float32), and google-research/google-research
# @ 4c4299485319ed72ef782020c81784be5468924e, cmmd/distance.py, mmd(x, y) (JAX 0.10.2, float32,
# CPU), each run once on _embeddings(0, 50, 16, 0) against (1, 40, 16, 0) and (2, 40, 16, 0.5).
# They differ from each other by float32 rounding; genlab computes in float64.
REFERENCE = {
    "same": {"cmmd_pytorch": 0.3986358642578125, "google_research_jax": 0.39926278591156006},
    "far": {"cmmd_pytorch": 2.324700355529785, "google_research_jax": 2.3250021934509277},
}


def _embeddings(seed: int, n: int, d: int, shift: float) -> np.ndarray:
    """Unit-norm float32 rows, as the reference's CLIP embeddings are."""
    x = np.random.default_rng(seed).normal(size=(n, d)) + shift
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _their_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """The reference's arithmetic step by step, in float64: three full kernel means, x 1000."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    gamma = 1 / (2 * 10**2)

    def mean_k(a: np.ndarray, b: np.ndarray) -> float:
        aa, bb = np.diag(a @ a.T), np.diag(b @ b.T)
        return np.mean(np.exp(-gamma * (-2 * a @ b.T + aa[:, None] + bb[None, :])))

    return 1000 * (mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y))


@pytest.mark.parametrize("case, shift, seed", [("same", 0.0, 1), ("far", 0.5, 2)])
def test_mmd_agrees_with_the_reference(case, shift, seed):
    x, y = _embeddings(0, 50, 16, 0.0), _embeddings(seed, 40, 16, shift)
    ours = cmmd_from_features(torch.from_numpy(x), torch.from_numpy(y), block=7)
    assert ours == pytest.approx(_their_mmd(x, y), rel=1e-12)
    for value in REFERENCE[case].values():  # float32 there: ~1e-3 apart from each other
        assert ours == pytest.approx(value, abs=1e-3)


def test_mmd_is_zero_for_the_same_set_and_grows_with_the_shift():
    x = torch.from_numpy(_embeddings(0, 60, 16, 0.0))
    assert abs(cmmd_from_features(x, x)) < 1e-10
    values = [cmmd_from_features(x, torch.from_numpy(_embeddings(1, 60, 16, s))) for s in (0, 1)]
    assert values[1] > 5 * values[0] > 0


def random_clip_state(arch: dict[str, int], seed: int = 0) -> dict[str, Tensor]:
    """A random CLIP image tower (timm layout) whose embeddings differ between images.

    timm's ViT init (std 0.02) leaves the CLS token almost untouched by the image: every
    embedding comes out the same (cosine 0.9999). Weights at std 1/sqrt(fan_in) let it through.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_clip(arch)
        for module in net.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                nn.init.normal_(module.weight, std=1 / math.sqrt(module.weight[0].numel()))
    return net.state_dict()


RENAMES = [
    ("norm1", "ln_1"),
    ("norm2", "ln_2"),
    ("attn.qkv.", "attn.in_proj_"),
    ("attn.proj", "attn.out_proj"),
    ("mlp.fc1", "mlp.c_fc"),
    ("mlp.fc2", "mlp.c_proj"),
]


def openai_layout(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The same tower under OpenAI's CLIP key names ("visual.", fused in_proj, x @ proj)."""
    out = {
        "visual.class_embedding": state["cls_token"][0, 0],
        "visual.positional_embedding": state["pos_embed"][0],
        "visual.conv1.weight": state["patch_embed.proj.weight"],
        "visual.proj": state["head.weight"].T,
        "logit_scale": torch.tensor(4.6),  # a text-side key, ignored
    }
    for ours, theirs in [("norm_pre", "ln_pre"), ("norm", "ln_post")]:
        for p in ("weight", "bias"):
            out[f"visual.{theirs}.{p}"] = state[f"{ours}.{p}"]
    for key, value in state.items():
        if key.startswith("blocks."):
            _, i, rest = key.split(".", 2)
            for ours, theirs in RENAMES:
                rest = rest.replace(ours, theirs)
            out[f"visual.transformer.resblocks.{i}.{rest}"] = value.half()  # as OpenAI ships it
    return out


@pytest.fixture(scope="module")
def clip_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip_tiny.pth"
    torch.save(random_clip_state(TINY), path)
    return path


def _images(seed: int, n: int, kind: str) -> Tensor:
    """[-1, 1] (n, 3, 32, 32) images: smooth colour fields, or the same blurred and darkened."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=32, mode="bilinear") * 2 - 1
    return x if kind == "smooth" else (x.mean(1, keepdim=True).expand_as(x) - 0.5).clamp(-1, 1)


def test_backbone_reads_the_architecture_and_layouts_agree(clip_weights, tmp_path):
    backbone = CLIPBackbone(str(clip_weights))
    assert backbone.arch == TINY and not backbone.arch_is_reference
    x = to_uint8(_images(0, 4, "smooth"))
    emb = backbone(x)["pool"]  # (4, 32)
    assert emb.shape == (4, 32) and torch.allclose(emb.norm(dim=1), torch.ones(4))
    assert (emb @ emb.T).min() < 0.99  # the random network tells images apart
    openai = tmp_path / "openai.pt"
    torch.save(openai_layout(torch.load(clip_weights)), openai)
    # blocks in fp16, as OpenAI's file: close, not equal
    assert torch.allclose(CLIPBackbone(str(openai))(x)["pool"], emb, atol=2e-3)
    assert backbone.key()["weights_sha256"] != CLIPBackbone(str(openai)).key()["weights_sha256"]
    assert set(backbone.protocol()) >= {"network", "resize", "clip_weights", "weights_sha256"}


def test_cmmd_of_a_different_set_is_clearly_higher(clip_weights):
    backbone = CLIPBackbone(str(clip_weights))
    real = backbone(to_uint8(_images(0, 32, "smooth")))["pool"]
    same = backbone(to_uint8(_images(1, 32, "smooth")))["pool"]
    other = backbone(to_uint8(_images(1, 32, "grey")))["pool"]
    near, far = cmmd_from_features(real, same), cmmd_from_features(real, other)
    assert far > 5 * near > 0


def test_matches_the_pytorch_port_end_to_end(clip_weights, tmp_path):
    """The same weights through transformers, preprocessed as sayakpaul/cmmd-pytorch does."""
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPVisionConfig(
        hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1,
        image_size=56, patch_size=14, projection_dim=32, hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )  # fmt: skip
    hf = transformers.CLIPVisionModelWithProjection(config).eval()
    for module in hf.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            nn.init.normal_(module.weight, std=1 / math.sqrt(module.weight[0].numel()))
    for p in hf.parameters():  # embeddings, LayerNorms: not at their constant inits either
        if p.dim() == 1 and p.numel() > 1:
            p.data += 0.1 * torch.randn_like(p)
    path = tmp_path / "hf.bin"
    torch.save(hf.state_dict(), path)

    images = to_uint8(torch.cat([_images(0, 6, "smooth"), _images(1, 6, "grey")]))
    # io_util: PIL bicubic to the input size, float32 / 255; embedding: torch bicubic to the
    # same size (a no-op), normalise with CLIP's mean/std, image_embeds, divide by the norm
    hwc = images.permute(0, 2, 3, 1).numpy()
    pil = [Image.fromarray(im).resize((56, 56), Image.BICUBIC) for im in hwc]
    batch = torch.from_numpy(np.stack([np.asarray(p).astype(np.float32) for p in pil]) / 255.0)
    batch = F.interpolate(batch.permute(0, 3, 1, 2), size=(56, 56), mode="bicubic")
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        theirs = hf(pixel_values=((batch - mean) / std).float()).image_embeds
    theirs = theirs / torch.linalg.norm(theirs, axis=-1, keepdims=True)

    ours = CLIPBackbone(str(path))(images)["pool"]
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert cmmd_from_features(ours[:6], ours[6:]) == pytest.approx(
        cmmd_from_features(theirs[:6], theirs[6:]), abs=1e-4
    )


def test_missing_or_bad_weights_name_the_key(tmp_path):
    for weights, says in [(None, "is not set"), (str(tmp_path / "nope.pt"), "does not exist")]:
        with pytest.raises(MetricsUnavailable, match=f"metrics.clip_weights.*{says}"):
            CLIPBackbone(weights)
    bad = tmp_path / "bad.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, bad)
    with pytest.raises(MetricsUnavailable, match="metrics.clip_weights: .* is not a CLIP") as err:
        CLIPBackbone(str(bad))
    assert "\n" not in str(err.value)
    with pytest.raises(MetricsUnavailable, match="metrics.clip_sha256"):
        CLIPBackbone(str(bad), sha256=OPENAI_L14_336_SHA256)
