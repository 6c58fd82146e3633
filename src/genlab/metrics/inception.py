"""torch-fidelity's InceptionV3 (through torchmetrics) as a backbone: pool features and logits."""

from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torchmetrics.image.fid import NoTrainInceptionV3

from genlab.errors import first_line
from genlab.metrics.features import (
    LazyNetwork,
    MetricsUnavailable,
    Resize,
    check_sha256,
    clean_resize,
    file_sha256,
    reject_pickled_code,
)

POOL = "pool"
LOGITS = "logits"
POOL_LAYER = "2048"
LOGITS_LAYER = "logits_unbiased"
INPUT_SIZE = 299
RESIZE = "tf1-bilinear-299 (torchmetrics antialias=False)"
CLEAN_RESIZE = "clean-fid PIL bicubic 299 on float32, no re-quantisation"
WEIGHTS_FILE = URL_INCEPTION_V3.rsplit("/", 1)[-1]  # weights-inception-2015-12-05-6726825d.pth
# torch.hub's convention: the file name carries the first 8 hex digits of the file's sha256
# (torch-fidelity publishes no more). The full digest is as recorded by a third party for this
# exact file, and agrees with that prefix; it cannot be re-derived here without the network.
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"


def resolve_weights(inception_weights: str | None, download: bool) -> Path:
    """The Inception weights file to load: the given path, or torch-fidelity's hub cache."""
    if inception_weights is not None:
        path = Path(inception_weights).expanduser()
        if not path.is_file():
            raise MetricsUnavailable(f"metrics.inception_weights: {path} does not exist")
        return path
    path = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE
    if not path.is_file() and download:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(URL_INCEPTION_V3, str(path))
    if not path.is_file():
        raise MetricsUnavailable(
            f"FID/IS/KID need the Inception weights ({path} not found): "
            f"set metrics.inception_weights=/path/to/{WEIGHTS_FILE}"
        )
    return path


def build_inception(path: Path) -> NoTrainInceptionV3:
    """torch-fidelity's InceptionV3 giving pool features and unbiased logits, TF1 resize."""
    reject_pickled_code(path, "inception_weights")  # torch-fidelity loads with weights_only=False
    try:
        # antialias=False selects torch-fidelity's TF1 bilinear resize; torchmetrics >= 1.8
        # defaults to torch's antialiased resize, which is not the published FID protocol.
        return NoTrainInceptionV3(
            "inception-v3-compat", [POOL_LAYER, LOGITS_LAYER], str(path), antialias=False
        )
    except Exception as err:  # torch.load and load_state_dict raise many types for a bad file
        reason = first_line(err)
        raise MetricsUnavailable(
            f"metrics.inception_weights: {path} is not torch-fidelity's InceptionV3 ({reason})"
        ) from err


def forward_resized(net: NoTrainInceptionV3, x: Tensor) -> tuple[Tensor, Tensor]:
    """Pool features and unbiased logits of float (B, 3, 299, 299) images in [0, 255].

    torch-fidelity's forward takes uint8 only and resizes inside; a clean resize has happened
    already, so this runs the same layers on the float input.
    """
    x = (x - 128) / 128
    for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1",
                 "Conv2d_3b_1x1", "Conv2d_4a_3x3", "MaxPool_2", "Mixed_5b", "Mixed_5c",
                 "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                 "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool"):  # fmt: skip
        x = getattr(net, name)(x)
    pool = torch.flatten(x, 1)  # (B, 2048)
    return pool, pool @ net.fc.weight.T  # logits without the bias, as "logits_unbiased"


class InceptionBackbone(LazyNetwork):
    """InceptionV3 features of uint8 RGB images: {"pool": (B, 2048), "logits": (B, 1008)}.

    A plain object (see ImageMetrics).
    """

    name = "inception"
    has_logits = True

    def __init__(
        self,
        weights: str | None = None,
        resize: Resize = "tf1",
        sha256: str | None = INCEPTION_SHA256,
        download: bool = False,
        device: torch.device = torch.device("cpu"),
    ) -> None:
        self.resize = resize
        self.weights_path = resolve_weights(weights, download)
        self.weights_sha256 = file_sha256(self.weights_path)
        self.expected_sha256 = sha256
        check_sha256(self.weights_path, self.weights_sha256, sha256, "inception_sha256")
        self.device = device
        self._net = self.build().to(device)  # a bad file fails here, not at the first pass

    def build(self) -> NoTrainInceptionV3:
        return build_inception(self.weights_path)

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        """Features of uint8 (B, 3, H, W) images on this backbone's device."""
        if self.resize == "clean":
            pool, logits = forward_resized(self.net, clean_resize(x, INPUT_SIZE))
        else:
            # forward() returns only the first feature; this gives both from one pass.
            pool, logits = self.net._torch_fidelity_forward(x)
        return {POOL: pool, LOGITS: logits}

    def protocol(self) -> dict[str, Any]:
        """What fixes the features: network, layers, resize, weights and their check."""
        return {
            "backbone": self.name,
            "network": "torch-fidelity InceptionV3 (torchmetrics NoTrainInceptionV3)",
            "input": "uint8 RGB, rounded from [-1, 1]",
            "resize": RESIZE if self.resize == "tf1" else CLEAN_RESIZE,
            "feature_layer": POOL_LAYER,
            "logits_layer": LOGITS_LAYER,
            "inception_weights": str(self.weights_path),
            "weights_sha256": self.weights_sha256,
            "weights_sha256_checked": self.expected_sha256 is not None,
        }

    def key(self) -> dict[str, Any]:
        """What of the protocol changes the real features (the reference-cache key)."""
        return {
            "feature_layer": POOL_LAYER,
            "resize": RESIZE if self.resize == "tf1" else CLEAN_RESIZE,
            "weights_sha256": self.weights_sha256,
        }
