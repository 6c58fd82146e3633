"""Randomly initialised InceptionV3 weights in torch-fidelity's format, for offline tests."""

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torchvision.models import inception_v3

LOGIT_SPREAD = 2.0  # std of logits between images; gives an IS near 2 on MNIST digits


def _calibration_images(seed: int) -> torch.Tensor:
    """Four varied uint8 images (4, 3, 32, 32): smooth colour, smooth grey, noise."""
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(3, 3, 4, 4, generator=g), size=32, mode="bilinear")
    smooth[2] = smooth[2].mean(0, keepdim=True)
    noise = torch.rand(1, 3, 32, 32, generator=g)
    return (torch.cat([smooth, noise]) * 255).round().to(torch.uint8)


def random_inception_weights(path: Path, seed: int = 0) -> Path:
    """Save a random InceptionV3 state_dict loadable wherever the real one is; return the path.

    torchvision's InceptionV3 without aux logits and with 1008 classes has the keys and shapes of
    torch-fidelity's weights file; loading it strictly into torch-fidelity's network checks that.
    """
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        net = inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
        for module in net.modules():
            # Default init gives pool features ~1e-8 and identical for every image: FID would
            # be ~0 for any two sets and every agreement test would pass vacuously.
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=1 / math.sqrt(module.in_features))
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
                module.reset_running_stats()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)

    inception = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)
    )
    with torch.no_grad():
        (pool,) = inception(_calibration_images(seed))  # (4, 2048)
    spread = pool.std(0).mean() / pool.mean(0).abs().mean()
    assert spread > 1e-2, f"random Inception features barely differ between images ({spread:.1e})"

    # Random pool features share one large common direction, and the IS logits have no bias, so
    # plain random logits barely vary between images and IS sits at 1.000x for any set. Remove
    # that direction from every class row and scale the rows so logits vary by LOGIT_SPREAD.
    common = F.normalize(pool.mean(0), dim=0)  # (2048,)
    with torch.no_grad():
        fc = inception.fc.weight  # (1008, 2048)
        fc -= (fc @ common)[:, None] * common[None]
        fc *= LOGIT_SPREAD / ((pool - pool.mean(0)) @ fc.T).std()
    torch.save(inception.state_dict(), path)
    return path


def random_dinov2_weights(path: Path, arch: str = "vits14", seed: int = 0) -> Path:
    """Save a random DINOv2 ViT (timm layout) whose CLS features differ between images.

    timm initialises LayerScale to 1e-5, so a random network's CLS token is its class embedding
    plus ~1e-5 of anything the image contributes: every image would get the same feature.
    LayerScale at 1 lets the image through.
    """
    from genlab.metrics.dinov2 import build_dinov2

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_dinov2(arch)
        for name, p in net.named_parameters():
            if name.endswith(".gamma"):
                nn.init.ones_(p)
    x = F.interpolate(_calibration_images(seed).float() / 255, size=224, mode="bilinear")
    with torch.no_grad():
        feats = net.eval()(x)  # (4, D)
    spread = feats.std(0).mean() / feats.abs().mean()
    assert spread > 1e-2, f"random DINOv2 features barely differ between images ({spread:.1e})"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path
