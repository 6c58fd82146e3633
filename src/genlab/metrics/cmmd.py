"""CMMD (Jayasumana et al. 2024): MMD under a Gaussian RBF kernel between CLIP image embeddings.

As the authors' code (google-research/google-research ``cmmd/``, and its PyTorch port
sayakpaul/cmmd-pytorch, which uses transformers' ``CLIPVisionModelWithProjection``): images are
centre-cropped to a square (genlab's already are), resized with PIL bicubic on uint8 RGB to the
CLIP input size (336 px for ViT-L/14@336), scaled to [0, 1], normalised with CLIP's mean and std;
the embedding is the projected CLS token, L2-normalised. CMMD is 1000 x the biased (V-statistic)
MMD^2 under exp(-|a - b|^2 / (2 * 10^2)), every kernel entry averaged, the diagonal included.

The CLIP image tower is timm's VisionTransformer (QuickGELU, pre-norm, as OpenAI's), built to the
shapes found in the weights file, as OpenAI's own ``clip.model.build_model`` does.
"""

import math
import re
import zipfile
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.errors import first_line
from genlab.metrics.dinov2 import dgm_eval_resize
from genlab.metrics.features import (
    LazyNetwork,
    MetricsUnavailable,
    Resize,
    check_sha256,
    clean_resize,
    file_sha256,
    local_file,
)
from genlab.metrics.fid import check_counts
from genlab.metrics.inception import POOL
from genlab.metrics.knn import DEFAULT_BLOCK

CMMD = "cmmd"
SIGMA = 10.0  # the RBF bandwidth of the paper and both reference implementations
SCALE = 1000.0  # "to make the metric more human readable" (theirs)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HEAD_WIDTH = 64  # OpenAI's build_model: heads = width // 64 (the file does not say)
# OpenAI's ViT-L-14-336px.pt: the sha256 its download URL carries and clip.load checks
OPENAI_L14_336_SHA256 = "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02"
REFERENCE_ARCH = {"width": 1024, "depth": 24, "patch": 14, "input_size": 336, "embed_dim": 768}
PREPROCESS = {
    "tf1": "CMMD reference: PIL bicubic to the CLIP input size on uint8 RGB, /255, CLIP mean/std",
    "clean": "clean_resize: PIL bicubic on float32 channels, /255, CLIP mean/std",
}


def _kernel_mean(x: Tensor, y: Tensor, gamma: float, block: int) -> Tensor:
    """Mean of exp(-gamma |a - b|^2) over all (N, D) x (M, D) row pairs, ``block`` rows at once."""
    y_sq = y.square().sum(1)  # (M,)
    total = x.new_zeros(())
    for start in range(0, len(x), block):
        xb = x[start : start + block]  # (b, D)
        # the expanded form, as the reference computes it (no clamp at 0)
        d2 = xb.square().sum(1)[:, None] + y_sq[None] - 2 * xb @ y.T  # (b, M)
        total += torch.exp(-gamma * d2).sum()
    return total / (len(x) * len(y))


def cmmd_from_features(
    real: Tensor,
    fake: Tensor,
    sigma: float = SIGMA,
    scale: float = SCALE,
    block: int = DEFAULT_BLOCK,
) -> float:
    """CMMD between (N, D) real and (M, D) fake embeddings: scale x biased RBF MMD^2 (float64)."""
    check_counts("CMMD", len(real), len(fake))
    # float64: the three kernel means are near 1 and CMMD is their small difference x 1000
    x, y = real.double(), fake.double()
    gamma = 1 / (2 * sigma**2)
    k_xx = _kernel_mean(x, x, gamma, block)
    k_yy = _kernel_mean(y, y, gamma, block)
    k_xy = _kernel_mean(x, y, gamma, block)
    return float(scale * (k_xx + k_yy - 2 * k_xy))


# OpenAI's / open_clip's image tower ("visual." keys) -> timm's VisionTransformer
_OPENAI = [
    (r"^conv1\.", "patch_embed.proj."),
    (r"^ln_pre\.", "norm_pre."),
    (r"^ln_post\.", "norm."),
    (r"^transformer\.resblocks\.(\d+)\.ln_(\d)\.", r"blocks.\1.norm\2."),
    (r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_", r"blocks.\1.attn.qkv."),
    (r"^transformer\.resblocks\.(\d+)\.attn\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^transformer\.resblocks\.(\d+)\.mlp\.c_fc\.", r"blocks.\1.mlp.fc1."),
    (r"^transformer\.resblocks\.(\d+)\.mlp\.c_proj\.", r"blocks.\1.mlp.fc2."),
]
# transformers' CLIPVisionModel(WithProjection) ("vision_model." keys) -> timm's
_HF = [
    (r"^embeddings\.patch_embedding\.", "patch_embed.proj."),
    (r"^pre_layrnorm\.", "norm_pre."),  # sic: transformers' spelling
    (r"^post_layernorm\.", "norm."),
    (r"^encoder\.layers\.(\d+)\.layer_norm(\d)\.", r"blocks.\1.norm\2."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layers\.(\d+)\.mlp\.", r"blocks.\1.mlp."),
]


def _rename(
    state: dict[str, Tensor], prefix: str, rules: list[tuple[str, str]]
) -> dict[str, Tensor]:
    """Keys under ``prefix``, prefix dropped, each renamed by the first rule that matches."""
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix) :]
        for pattern, repl in rules:
            key, n = re.subn(pattern, repl, key)
            if n:
                break
        out[key] = value
    return out


def to_timm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A CLIP image tower in OpenAI's, open_clip's, transformers' or timm's layout, as timm's."""
    state = state.get("state_dict", state)
    for prefix in ("visual.", "module.visual."):
        if f"{prefix}class_embedding" in state:
            out = _rename(state, prefix, _OPENAI)
            out["cls_token"] = out.pop("class_embedding")[None, None]  # (1, 1, W)
            out["pos_embed"] = out.pop("positional_embedding")[None]  # (1, N, W)
            out["head.weight"] = out.pop("proj").T  # (D, W): OpenAI multiplies x @ proj
            break
    else:
        if "vision_model.embeddings.class_embedding" in state:
            out = _rename(state, "vision_model.", _HF)
            out["cls_token"] = out.pop("embeddings.class_embedding")[None, None]
            out["pos_embed"] = out.pop("embeddings.position_embedding.weight")[None]
            out.pop("embeddings.position_ids", None)  # a buffer of 0..N-1
            out["head.weight"] = state["visual_projection.weight"]  # (D, W)
            for i in {int(m[1]) for k in out if (m := re.match(r"blocks\.(\d+)\.", k))}:
                attn = f"encoder.layers.{i}.self_attn."
                for p in ("weight", "bias"):
                    qkv = [out.pop(f"{attn}{n}_proj.{p}") for n in "qkv"]
                    out[f"blocks.{i}.attn.qkv.{p}"] = torch.cat(qkv)  # timm's fused q, k, v
        else:
            out = dict(state)  # timm's own layout
    # CLIP's projection has no bias; timm's head has one
    out.setdefault("head.bias", torch.zeros(out["head.weight"].shape[0]))
    return out


def clip_arch(state: dict[str, Tensor]) -> dict[str, int]:
    """The image tower's shapes, read from a timm-layout state dict."""
    width = state["cls_token"].shape[-1]
    patch = state["patch_embed.proj.weight"].shape[-1]
    grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    blocks = {int(m[1]) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    return {
        "width": width,
        "depth": len(blocks),
        "patch": patch,
        "input_size": grid * patch,
        "embed_dim": state["head.weight"].shape[0],
        "mlp": state["blocks.0.mlp.fc1.weight"].shape[0],
    }


def build_clip(arch: dict[str, int]) -> nn.Module:
    """An OpenAI-style CLIP image tower (QuickGELU, pre-norm, projected CLS) of ``arch``'s shape."""
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError as err:
        raise MetricsUnavailable(
            "metrics.clip_weights: the CLIP backbone is built with timm: pip install 'genlab[clip]'"
        ) from err
    return VisionTransformer(
        img_size=arch["input_size"],
        patch_size=arch["patch"],
        embed_dim=arch["width"],
        depth=arch["depth"],
        num_heads=max(arch["width"] // HEAD_WIDTH, 1),
        mlp_ratio=arch["mlp"] / arch["width"],
        pre_norm=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-5),
        act_layer="quick_gelu",
        num_classes=arch["embed_dim"],
        global_pool="token",
    )


def read_state(path: Path) -> dict[str, Tensor]:
    """A state dict from safetensors, a torch file, or a TorchScript archive (OpenAI's .pt)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            scripted = any(name.endswith("constants.pkl") for name in z.namelist())
        if scripted:  # OpenAI ships ViT-L-14-336px.pt as a TorchScript module (fp16)
            # torch.jit.load can run code: only the file OpenAI published is opened this way
            if file_sha256(path) != OPENAI_L14_336_SHA256:
                raise MetricsUnavailable(
                    f"metrics.clip_weights: {path} is a TorchScript archive, which can run code "
                    "on load, and not OpenAI's ViT-L-14-336px.pt: pass safetensors, open_clip "
                    "or Hugging Face weights"
                )
            return torch.jit.load(str(path), map_location="cpu").state_dict()
    return torch.load(path, map_location="cpu", weights_only=True)


def load_clip(path: Path) -> tuple[nn.Module, dict[str, int]]:
    """The CLIP image tower in ``path`` (float32, eval) and its shapes."""
    try:
        state = to_timm(read_state(path))
        arch = clip_arch(state)
        model = build_clip(arch)
        model.load_state_dict(state)  # strict, and casts OpenAI's fp16 to float32
    except MetricsUnavailable:
        raise
    except Exception as err:  # torch.load and load_state_dict raise many types for a bad file
        reason = first_line(err)
        raise MetricsUnavailable(
            f"metrics.clip_weights: {path} is not a CLIP ViT image tower ({reason})"
        ) from err
    return model.eval().requires_grad_(False), arch


def describe(arch: dict[str, int]) -> str:
    """E.g. 'CLIP ViT width 1024, depth 24, patch 14, 336 px, 768-d embedding'."""
    return (
        f"CLIP ViT width {arch['width']}, depth {arch['depth']}, patch {arch['patch']}, "
        f"{arch['input_size']} px, {arch['embed_dim']}-d embedding"
    )


class CLIPBackbone(LazyNetwork):
    """L2-normalised CLIP image embeddings of uint8 RGB images: {"pool": (B, D)} (768 for L/14)."""

    name = "clip"
    has_logits = False

    def __init__(
        self,
        weights: str | None,
        resize: Resize = "tf1",
        sha256: str | None = None,
        device: torch.device = torch.device("cpu"),
    ) -> None:
        self.weights_path = local_file(weights, "clip_weights")
        self.weights_sha256 = file_sha256(self.weights_path)
        # off by default: transformers' and timm's copies of the same weights hash differently
        self.expected_sha256 = sha256
        check_sha256(self.weights_path, self.weights_sha256, sha256, "clip_sha256")
        self.resize, self.device = resize, device
        mean, std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
        self.mean, self.std = mean.view(1, 3, 1, 1), std.view(1, 3, 1, 1)
        net, self.arch = load_clip(self.weights_path)  # a bad file fails here, not at first use
        self._net = net.to(device)

    def build(self) -> nn.Module:
        return load_clip(self.weights_path)[0]

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        """Embeddings of uint8 (B, 3, H, W) images on this backbone's device."""
        resize = clean_resize if self.resize == "clean" else dgm_eval_resize
        x = resize(x, self.arch["input_size"]) / 255  # (B, 3, S, S) in [0, 1]
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return {POOL: F.normalize(self.net(x), dim=1)}  # (B, D)

    def protocol(self) -> dict[str, Any]:
        """What fixes the embeddings: network, preprocessing and weights."""
        return {
            "backbone": self.name,
            "network": f"{describe(self.arch)} (timm VisionTransformer, QuickGELU)",
            "embedding": "projected CLS token, L2-normalised",
            "cmmd_reference_network": self.arch_is_reference,
            "input": "uint8 RGB, rounded from [-1, 1]",
            "resize": PREPROCESS[self.resize],
            "clip_weights": str(self.weights_path),
            "weights_sha256": self.weights_sha256,
            "weights_sha256_checked": self.expected_sha256 is not None,
        }

    def key(self) -> dict[str, Any]:
        """What of the protocol changes the real embeddings (the reference-cache key)."""
        return {
            "network": describe(self.arch),
            "resize": PREPROCESS[self.resize],
            "weights_sha256": self.weights_sha256,
        }

    @property
    def arch_is_reference(self) -> bool:
        """True for ViT-L/14 at 336 px, the network of the CMMD paper."""
        return {k: self.arch[k] for k in REFERENCE_ARCH} == REFERENCE_ARCH
