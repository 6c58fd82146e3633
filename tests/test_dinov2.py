"""DINOv2 features as dgm-eval computes them: Meta's hub forward on Meta's weights file."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as TF
from PIL import Image
from torch import Tensor

from genlab.metrics.dinov2 import POS_EMBED, DINOv2Backbone
from genlab.metrics.features import MetricsUnavailable, file_sha256
from genlab.metrics.inception import POOL

pytest.importorskip("timm")

DIM, DEPTH, HEADS, PATCH, GRID = 384, 12, 6, 14, 37  # Meta's vit_small at 518 px (vits14)
TOLERANCE = 1e-5


def meta_state_dict(seed: int = 0) -> dict[str, Tensor]:
    """Random weights with the names and shapes of Meta's ``dinov2_vits14_pretrain.pth``."""
    # LayerScale near 1 (not timm's 1e-5) and variance-keeping linear maps let each image reach
    # the CLS token, so features differ between images; the position embedding, a smooth field
    # plus noise as large as the patch embeddings, makes its resampling show in the features.
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int, std: float = 1.0) -> Tensor:
        return torch.randn(*shape, generator=g) * std

    def linear(name: str, n_out: int, n_in: int) -> dict[str, Tensor]:
        weight, bias = randn(n_out, n_in, std=n_in**-0.5), randn(n_out, std=0.1)
        return {f"{name}.weight": weight, f"{name}.bias": bias}

    def norm(name: str) -> dict[str, Tensor]:
        return {f"{name}.weight": 1 + randn(DIM, std=0.1), f"{name}.bias": randn(DIM, std=0.1)}

    smooth = F.interpolate(randn(1, DIM, 6, 6), size=GRID, mode="bicubic", align_corners=True)
    grid = smooth.flatten(2).transpose(1, 2) + randn(1, GRID**2, DIM, std=0.1)  # (1, 37*37, D)
    state = {
        "cls_token": randn(1, 1, DIM),
        "pos_embed": torch.cat([randn(1, 1, DIM), grid], dim=1),
        "mask_token": torch.zeros(1, DIM),  # Meta's file has it; inference never uses it
        "patch_embed.proj.weight": randn(DIM, 3, PATCH, PATCH, std=(3 * PATCH**2) ** -0.5),
        "patch_embed.proj.bias": randn(DIM, std=0.1),
        **norm("norm"),
    }
    for i in range(DEPTH):
        b = f"blocks.{i}"
        state |= norm(f"{b}.norm1") | norm(f"{b}.norm2")
        state |= linear(f"{b}.attn.qkv", 3 * DIM, DIM) | linear(f"{b}.attn.proj", DIM, DIM)
        state |= linear(f"{b}.mlp.fc1", 4 * DIM, DIM) | linear(f"{b}.mlp.fc2", DIM, 4 * DIM)
        state[f"{b}.ls1.gamma"] = 1 + randn(DIM, std=0.1)
        state[f"{b}.ls2.gamma"] = 1 + randn(DIM, std=0.1)
    return state


def dgm_eval_transform(images: Tensor) -> Tensor:
    """dgm-eval's DINOv2 transform of uint8 (B, 3, H, W): PIL bicubic 224, ToTensor, Normalize."""
    transform = TF.Compose([
        TF.Resize((224, 224), TF.InterpolationMode.BICUBIC),
        TF.ToTensor(),
        TF.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])  # fmt: skip
    return torch.stack([transform(Image.fromarray(x.permute(1, 2, 0).numpy())) for x in images])


def layer_norm(x: Tensor, w: dict[str, Tensor], name: str) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], w[f"{name}.weight"], w[f"{name}.bias"], eps=1e-6)


def meta_features(w: dict[str, Tensor], x: Tensor) -> Tensor:
    """Meta's DinoVisionTransformer forward (hub settings) in plain ops: (B, 3, H, W) -> (B, D)."""
    tokens = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=PATCH)
    b, dim, rows, cols = tokens.shape
    tokens = torch.cat([w["cls_token"].expand(b, -1, -1), tokens.flatten(2).transpose(1, 2)], 1)
    # interpolate_pos_encoding: bicubic by scale factor (n + interpolate_offset) / M, no antialias
    pos = w["pos_embed"]
    m = math.isqrt(pos.shape[1] - 1)
    grid = pos[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2)
    scale = ((rows + 0.1) / m, (cols + 0.1) / m)
    grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
    tokens = tokens + torch.cat([pos[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)
    for i in range(DEPTH):
        p = f"blocks.{i}"
        h = layer_norm(tokens, w, f"{p}.norm1")
        qkv = F.linear(h, w[f"{p}.attn.qkv.weight"], w[f"{p}.attn.qkv.bias"])
        q, k, v = qkv.reshape(b, -1, 3, HEADS, dim // HEADS).permute(2, 0, 3, 1, 4)  # (B, H, N, d)
        attn = torch.softmax(q @ k.transpose(-2, -1) * (dim // HEADS) ** -0.5, dim=-1)
        h = (attn @ v).transpose(1, 2).reshape(b, -1, dim)
        h = F.linear(h, w[f"{p}.attn.proj.weight"], w[f"{p}.attn.proj.bias"])
        tokens = tokens + w[f"{p}.ls1.gamma"] * h
        h = layer_norm(tokens, w, f"{p}.norm2")
        h = F.gelu(F.linear(h, w[f"{p}.mlp.fc1.weight"], w[f"{p}.mlp.fc1.bias"]))
        h = F.linear(h, w[f"{p}.mlp.fc2.weight"], w[f"{p}.mlp.fc2.bias"])
        tokens = tokens + w[f"{p}.ls2.gamma"] * h
    return layer_norm(tokens, w, "norm")[:, 0]


def sample_images() -> Tensor:
    """Three varied uint8 images (3, 3, 40, 36): smooth colour, smooth grey, noise."""
    g = torch.Generator().manual_seed(1)
    smooth = F.interpolate(torch.rand(2, 3, 5, 4, generator=g), size=(40, 36), mode="bilinear")
    smooth[1] = smooth[1].mean(0, keepdim=True)
    images = torch.cat([smooth, torch.rand(1, 3, 40, 36, generator=g)])
    return (images * 255).round().to(torch.uint8)


@pytest.fixture(scope="module")
def meta_weights(tmp_path_factory) -> tuple[Path, dict[str, Tensor]]:
    state = meta_state_dict()
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def reference(meta_weights) -> tuple[Tensor, Tensor]:
    """dgm-eval's inputs for the test images and Meta's features of them."""
    x = dgm_eval_transform(sample_images())
    with torch.no_grad():
        return x, meta_features(meta_weights[1], x)


def test_dinov2_features_equal_metas_hub_model(meta_weights, reference):
    backbone = DINOv2Backbone(str(meta_weights[0]), "vits14")
    with torch.no_grad():
        ours = backbone(sample_images())[POOL]
    x, theirs = reference
    assert ours.shape == (3, DIM)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=TOLERANCE)
    assert (theirs[0] - theirs[1]).abs().max() > 0.1  # images reach the CLS token
    assert backbone.protocol()["pos_embed"] == backbone.key()["pos_embed"] == POS_EMBED


def test_timms_antialiased_resampling_is_not_metas(meta_weights, reference):
    """timm's own forward (antialias, exact size) on the same weights misses Meta's features."""
    net = DINOv2Backbone(str(meta_weights[0]), "vits14").net
    x, theirs = reference
    with torch.no_grad():
        old = net.vit(x)  # timm's forward: resample_abs_pos_embed
    assert (old - theirs).abs().max() > 100 * TOLERANCE


def test_dinov2_sha256_check(meta_weights):
    path = meta_weights[0]
    sha = file_sha256(path)
    wrong = ("1" if sha[0] == "0" else "0") + sha[1:8]
    with pytest.raises(MetricsUnavailable) as err:
        DINOv2Backbone(str(path), "vits14", sha256=wrong)
    message = str(err.value)
    assert str(path) in message and "metrics.dinov2_sha256" in message and "\n" not in message
    checked = DINOv2Backbone(str(path), "vits14", sha256=sha[:8].upper())
    assert checked.protocol()["weights_sha256_checked"] is True
    unchecked = DINOv2Backbone(str(path), "vits14")
    assert unchecked.protocol()["weights_sha256_checked"] is False
    assert unchecked.key() == checked.key() and unchecked.key()["weights_sha256"] == sha
