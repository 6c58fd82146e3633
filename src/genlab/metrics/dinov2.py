"""DINOv2 ViT (timm modules, local weights) run as Meta's hub model, preprocessed as dgm-eval does.

dgm-eval (layer6ai-labs/dgm-eval, dgm_eval/models/dinov2.py) loads Meta's hub model and feeds it
PIL images resized to 224 x 224 (bicubic; with ``clean_resize`` on float32 channels instead)
and normalised with the ImageNet mean and std; the feature is the final-norm CLS token. timm
builds the same layers offline and loads Meta's weights, but resamples the 518-px position
embedding its own way (antialiased, to an exact size), which moves features by about 1%. The
forward here is Meta's (facebookresearch/dinov2, ``interpolate_pos_encoding``): bicubic with a
scale factor of (grid + 0.1) / 37 and no antialias, the settings of every hub backbone.
"""

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from genlab.errors import first_line
from genlab.metrics.features import (
    LazyNetwork,
    MetricsUnavailable,
    Resize,
    check_sha256,
    clean_resize,
    file_sha256,
    local_file,
)
from genlab.metrics.inception import POOL

INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHS = {  # dgm-eval's names -> timm's
    "vits14": "vit_small_patch14_dinov2",
    "vitb14": "vit_base_patch14_dinov2",
    "vitl14": "vit_large_patch14_dinov2",
    "vitg14": "vit_giant_patch14_dinov2",
}
PREPROCESS = {
    "tf1": "dgm-eval: PIL bicubic 224 on uint8 RGB, /255, ImageNet mean/std",
    "clean": "dgm-eval clean_resize: PIL bicubic 224 on float32 channels, /255, ImageNet mean/std",
}
# as every hub backbone sets it (dinov2/hub/backbones.py), with interpolate_antialias=False
INTERPOLATE_OFFSET = 0.1
POS_EMBED = "Meta hub: bicubic, scale factor (grid + 0.1) / 37, no antialias"


def build_dinov2(arch: str) -> nn.Module:
    """An uninitialised-weights DINOv2 ViT of dgm-eval's ``arch`` (vits14 ... vitg14), timm's."""
    try:
        import timm
    except ImportError as err:
        raise MetricsUnavailable(
            "metrics.backbone=dinov2 builds DINOv2 with timm: pip install 'genlab[dinov2]'"
        ) from err
    if arch not in ARCHS:
        raise MetricsUnavailable(f"metrics.dinov2_arch={arch!r}: choose one of {list(ARCHS)}")
    # 518 px as Meta trained it, so its weights load unchanged; 224 px inputs interpolate
    return timm.create_model(
        ARCHS[arch], pretrained=False, num_classes=0, img_size=518, dynamic_img_size=True
    )


def meta_pos_embed(pos_embed: Tensor, rows: int, cols: int) -> Tensor:
    """Meta's resampling of a (1, 1 + M * M, D) position embedding to a rows x cols patch grid."""
    m = math.isqrt(pos_embed.shape[1] - 1)
    if (rows, cols) == (m, m):
        return pos_embed
    grid = pos_embed[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)  # (1, D, M, M)
    # A scale factor, not a size: interpolate maps output to input pixels by 1 / scale, so
    # (16 + 0.1) / 37 samples other points than size=16 (37 / 16) would; Meta keeps the offset
    # for backward compatibility, and its hub models do not antialias.
    scale = ((rows + INTERPOLATE_OFFSET) / m, (cols + INTERPOLATE_OFFSET) / m)
    grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
    return torch.cat([pos_embed[:, :1].float(), grid], dim=1).to(pos_embed.dtype)


class MetaDINOv2(nn.Module):
    """timm's DINOv2 ViT run as Meta's hub model: (B, 3, H, W) -> final-norm CLS token (B, D)."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        if getattr(vit, "reg_token", None) is not None:
            raise ValueError("register-token DINOv2 models are not dgm-eval's backbones")
        self.vit = vit

    def forward(self, x: Tensor) -> Tensor:
        vit = self.vit
        tokens = vit.patch_embed(x)  # (B, h, w, D): dynamic_img_size keeps the patch grid
        b, rows, cols, dim = tokens.shape
        cls = vit.cls_token.expand(b, -1, -1)
        tokens = torch.cat([cls, tokens.reshape(b, rows * cols, dim)], dim=1)  # (B, 1 + h*w, D)
        tokens = tokens + meta_pos_embed(vit.pos_embed, rows, cols).to(tokens.dtype)
        tokens = vit.blocks(vit.norm_pre(tokens))
        return vit.norm(tokens)[:, 0]


def load_dinov2(path: Path, arch: str) -> MetaDINOv2:
    """DINOv2 from a local file: Meta's ``dinov2_vit*14_pretrain.pth`` or timm's weights."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    model = build_dinov2(arch)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        # Meta's names are timm's but for mask_token (unused at inference), which this drops
        model.load_state_dict(checkpoint_filter_fn(state, model))
    except Exception as err:  # torch.load and load_state_dict raise many types for a bad file
        reason = first_line(err)
        raise MetricsUnavailable(
            f"metrics.dinov2_weights: {path} is not DINOv2 {arch} weights ({reason})"
        ) from err
    return MetaDINOv2(model).eval().requires_grad_(False)


def dgm_eval_resize(images: Tensor, size: int = INPUT_SIZE) -> Tensor:
    """dgm-eval's default: PIL RGB bicubic resize of uint8 (B, 3, H, W) -> uint8-valued float."""
    out = [
        np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))
        for image in images.permute(0, 2, 3, 1).cpu().numpy()
    ]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().to(images.device)


class DINOv2Backbone(LazyNetwork):
    """DINOv2 CLS features of uint8 RGB images: {"pool": (B, D)} (D = 1024 for vitl14)."""

    name = "dinov2"
    has_logits = False

    def __init__(
        self,
        weights: str | None,
        arch: str = "vitl14",
        resize: Resize = "tf1",
        device: torch.device = torch.device("cpu"),
        # a prefix of the file's sha256 to insist on; Meta publishes no digests, so no default
        sha256: str | None = None,
    ) -> None:
        self.weights_path = local_file(weights, "dinov2_weights")
        self.weights_sha256 = file_sha256(self.weights_path)
        self.expected_sha256 = sha256
        check_sha256(self.weights_path, self.weights_sha256, sha256, "dinov2_sha256")
        self.arch, self.resize, self.device = arch, resize, device
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.mean, self.std = mean.view(1, 3, 1, 1), std.view(1, 3, 1, 1)
        self._net = self.build().to(device)  # a bad file fails here, not at the first pass

    def build(self) -> MetaDINOv2:
        return load_dinov2(self.weights_path, self.arch)

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        """Features of uint8 (B, 3, H, W) images on this backbone's device."""
        resize = clean_resize if self.resize == "clean" else dgm_eval_resize
        x = resize(x, INPUT_SIZE) / 255
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return {POOL: self.net(x)}

    def protocol(self) -> dict[str, Any]:
        """What fixes the features: network, preprocessing, weights and their check."""
        return {
            "backbone": self.name,
            "network": f"DINOv2 {self.arch} (timm {ARCHS[self.arch]}), final-norm CLS token",
            "pos_embed": POS_EMBED,
            "input": "uint8 RGB, rounded from [-1, 1]",
            "resize": PREPROCESS[self.resize],
            "dinov2_weights": str(self.weights_path),
            "weights_sha256": self.weights_sha256,
            "weights_sha256_checked": self.expected_sha256 is not None,
        }

    def key(self) -> dict[str, Any]:
        """What of the protocol changes the real features (the reference-cache key)."""
        return {
            "network": ARCHS[self.arch],
            # features cached with timm's own resampling (before this key) must not be reused
            "pos_embed": POS_EMBED,
            "resize": PREPROCESS[self.resize],
            "weights_sha256": self.weights_sha256,
        }
