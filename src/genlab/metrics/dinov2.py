"""DINOv2 ViT (timm, local weights) as a backbone, preprocessed as dgm-eval does (Stein et al.).

dgm-eval (layer6ai-labs/dgm-eval, dgm_eval/models/dinov2.py) loads Meta's hub model and feeds it
PIL images resized to 224 x 224 (bicubic; with ``clean_resize`` on float32 channels instead)
and normalised with the ImageNet mean and std; the feature is the final-norm CLS token. timm
builds the same network offline: Meta's 518-px position embedding is interpolated to the 16 x 16
patch grid at run time (``dynamic_img_size``), as Meta's own model does for 224-px inputs.
"""

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from genlab.metrics.features import (
    LazyNetwork,
    MetricsUnavailable,
    Resize,
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


def build_dinov2(arch: str) -> nn.Module:
    """An uninitialised-weights DINOv2 ViT of dgm-eval's ``arch`` (vits14 ... vitg14)."""
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


def load_dinov2(path: Path, arch: str) -> nn.Module:
    """DINOv2 from a local file: Meta's ``dinov2_vit*14_pretrain.pth`` or timm's weights."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    model = build_dinov2(arch)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(checkpoint_filter_fn(state, model))
    except Exception as err:  # torch.load and load_state_dict raise many types for a bad file
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise MetricsUnavailable(
            f"metrics.dinov2_weights: {path} is not DINOv2 {arch} weights ({reason})"
        ) from err
    return model.eval().requires_grad_(False)


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
    ) -> None:
        self.weights_path = local_file(weights, "dinov2_weights")
        self.weights_sha256 = file_sha256(self.weights_path)
        self.arch, self.resize, self.device = arch, resize, device
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.mean, self.std = mean.view(1, 3, 1, 1), std.view(1, 3, 1, 1)
        self._net = self.build().to(device)  # a bad file fails here, not at the first pass

    def build(self) -> nn.Module:
        return load_dinov2(self.weights_path, self.arch)

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        """Features of uint8 (B, 3, H, W) images on this backbone's device."""
        resize = clean_resize if self.resize == "clean" else dgm_eval_resize
        x = resize(x, INPUT_SIZE) / 255
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return {POOL: self.net(x)}

    def protocol(self) -> dict[str, Any]:
        """What fixes the features: network, preprocessing and weights."""
        return {
            "backbone": self.name,
            "network": f"DINOv2 {self.arch} (timm {ARCHS[self.arch]}), final-norm CLS token",
            "input": "uint8 RGB, rounded from [-1, 1]",
            "resize": PREPROCESS[self.resize],
            "dinov2_weights": str(self.weights_path),
            "weights_sha256": self.weights_sha256,
        }

    def key(self) -> dict[str, Any]:
        """What of the protocol changes the real features (the reference-cache key)."""
        return {
            "network": ARCHS[self.arch],
            "resize": PREPROCESS[self.resize],
            "weights_sha256": self.weights_sha256,
        }
