"""A Fashion-MNIST classifier's feature space for the Frechet distance (``metrics.backbone=
classifier``, ``val/fd_classifier``): the VAE literature scores 28x28 samples in a domain
classifier's features, where Inception (ImageNet, 299 px) sees little.

The classifier is a small CNN trained once on the labelled training split of Fashion-MNIST (all
60,000 images by default, from ``data_root``: Debian's dataset-fashion-mnist files), never on
anything a model trains on, its weights cached beside the reference features and keyed by its
training settings (or read from ``metrics.classifier_weights``). Building it measures its accuracy
on the official 10,000-image test split and refuses one below ``min_accuracy``; ``protocol()``
records it. Features are the 128 ReLU activations before the last layer.
"""

import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.atomic import atomic_torch_save, computing
from genlab.console import track
from genlab.errors import GenlabError, GenlabWarning
from genlab.metrics.features import LazyNetwork

FEATURES = 128
MIN_ACCURACY = 0.88
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist


class ClassifierNet(nn.Module):
    """(B, 1, 28, 28) in [-1, 1] -> 10 logits; ``features`` gives the (B, 128) before them."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),  # 14
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.MaxPool2d(2),  # 7 x 7
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(2 * w * 49, FEATURES), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(FEATURES, 10))

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def fashion_split(root: str, split: str, limit: int | None = None) -> tuple[Tensor, Tensor]:
    """Images in [-1, 1] (N, 1, 28, 28) and labels (N,) of a Fashion-MNIST split in ``root``."""
    from genlab.data.sources import idx_split

    try:
        data = idx_split("fashion_mnist", Path(root).expanduser(), split, False)
    except GenlabError as e:
        raise GenlabError(f"metrics.classifier.data_root: {e}") from None
    images = torch.from_numpy(data.data[:limit].copy()).float().div(127.5).sub(1).unsqueeze(1)
    return images, torch.from_numpy(data.targets[:limit].astype("int64"))


def classifier_input(images: Tensor) -> Tensor:
    """[-1, 1] images (B, 1 or 3, H, W) as the classifier reads them: RGB averaged to gray,
    other sizes resized to 28x28 (bilinear, antialiased)."""
    x = images.float().mean(1, keepdim=True)
    if x.shape[-2:] != (28, 28):
        x = F.interpolate(x, size=(28, 28), mode="bilinear", antialias=True)
    return x


@torch.no_grad()
def accuracy(net: nn.Module, images: Tensor, labels: Tensor, batch: int = 1000) -> float:
    """The fraction of ``images`` the network classifies as ``labels``."""
    net.eval()
    pairs = zip(images.split(batch), labels.split(batch), strict=True)
    right = sum(int((net(x).argmax(1) == y).sum()) for x, y in pairs)
    return right / len(labels)


class FashionClassifier:
    """Trains (or loads) the classifier; ``features(x)`` maps [-1, 1] images to (B, 128).

    Args:
        weights: a file written by an earlier build (``path``); None trains once and caches.
        train_limit: the first this many training images (None: all 60,000), for quick tests.
        min_accuracy: the test accuracy below which building fails.
    """

    def __init__(
        self,
        weights: str | None = None,
        cache_dir: str = "~/.cache/genlab",
        data_root: str = FASHION_ROOT,
        width: int = 16,
        epochs: int = 3,
        batch_size: int = 128,
        lr: float = 3e-3,
        flip: bool = True,
        train_limit: int | None = None,
        min_accuracy: float = MIN_ACCURACY,
        seed: int = 0,
    ) -> None:
        self.settings = {
            "width": width, "epochs": epochs, "batch_size": batch_size, "lr": lr, "flip": flip,
            "train_limit": train_limit, "seed": seed, "data": "fashion_mnist train (IDX)",
            "torch": torch.__version__.split("+")[0],
        }  # fmt: skip
        self.data_root, self.min_accuracy = data_root, min_accuracy
        text = json.dumps(self.settings, sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        cached = Path(cache_dir).expanduser() / f"fashion-classifier-{digest}.pt"
        self.path = Path(weights).expanduser() if weights else cached
        if weights and not self.path.is_file():
            raise GenlabError(f"metrics.classifier_weights={weights}: no such file")
        self.net = ClassifierNet(width)
        if weights:
            stored = self.load(None)
        else:
            with computing(self.path):  # sweep jobs train it once; the others wait, then read it
                stored = self.load(text) or self.train(text)
        self.test_accuracy: float = stored["test_accuracy"]
        if self.test_accuracy < min_accuracy:
            raise GenlabError(
                f"metrics.classifier: test accuracy {self.test_accuracy:.4f} < min_accuracy "
                f"{min_accuracy} (raise epochs or width)"
            )
        self.net.eval().requires_grad_(False)
        self.sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()

    def load(self, text: str | None) -> dict[str, Any] | None:
        """The stored weights and test accuracy; None when absent or for other settings
        (``text`` None: a file the user named, taken with its own settings)."""
        if not self.path.exists():
            return None
        try:
            stored = torch.load(self.path, map_location="cpu", weights_only=True)
            if text is not None and stored["settings"] != text:
                return None
            if text is None:
                self.settings = json.loads(stored["settings"])
                self.net = ClassifierNet(self.settings["width"])
            self.net.load_state_dict(stored["state_dict"])
        except Exception as e:  # a damaged cache file is retrained; a named one is refused
            if text is None:
                raise GenlabError(
                    f"metrics.classifier_weights={self.path}: not a classifier file ({e})"
                ) from None
            warnings.warn(  # a half-written or garbage cache file is retrained, and said so
                f"{self.path}: unreadable classifier cache ({type(e).__name__}); retraining",
                GenlabWarning,
                stacklevel=2,
            )
            return None
        return stored

    def train(self, text: str) -> dict[str, Any]:
        """Train on the training split, measure the test accuracy, store both."""
        s = self.settings
        x, y = fashion_split(self.data_root, "train", s["train_limit"])
        x_test, y_test = fashion_split(self.data_root, "test")
        steps = s["epochs"] * math.ceil(len(x) / s["batch_size"])
        what = f"Fashion-MNIST classifier for fd_classifier (trained once, cached in {self.path})"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s["seed"])
            gen = torch.Generator().manual_seed(s["seed"])
            net = self.net = ClassifierNet(s["width"]).train()
            opt = torch.optim.AdamW(net.parameters(), lr=s["lr"])
            schedule = torch.optim.lr_scheduler.OneCycleLR(opt, s["lr"], total_steps=steps)
            for _ in track(range(s["epochs"]), what, s["epochs"], unit="epochs"):
                net.train()
                for idx in torch.randperm(len(x), generator=gen).split(s["batch_size"]):
                    xb = x[idx]
                    if s["flip"]:  # garments are left-right symmetric in meaning
                        flip = torch.rand(len(idx), generator=gen) < 0.5
                        xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
                    loss = F.cross_entropy(net(xb), y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    schedule.step()
        stored = {
            "settings": text,
            "state_dict": net.state_dict(),
            "test_accuracy": accuracy(net, x_test, y_test),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(stored, self.path)
        return stored

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """Penultimate features (B, 128) of [-1, 1] images (B, 1 or 3, H, W)."""
        return self.net.features(classifier_input(images))


class ClassifierBackbone(LazyNetwork):
    """The Fashion-MNIST classifier's features of uint8 RGB images: {"pool": (B, 128)}."""

    name = "classifier"
    has_logits = False

    def __init__(
        self,
        weights: str | None = None,
        settings: dict[str, Any] | None = None,
        device: torch.device = torch.device("cpu"),
    ) -> None:
        self.device = device
        self.classifier = FashionClassifier(weights, **(settings or {}))
        self.weights_path, self.weights_sha256 = self.classifier.path, self.classifier.sha256
        self._net = self.classifier.net.to(device)

    def build(self) -> ClassifierNet:
        return self.classifier.net  # pickled with the classifier (128 features: small)

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        """Features of uint8 (B, 3, H, W) images: the network reads them as [-1, 1] gray."""
        return {"pool": self.net.features(classifier_input(x.float() / 127.5 - 1))}

    def protocol(self) -> dict[str, Any]:
        """What fixes the features: the network, its training and its measured test accuracy."""
        return {
            "backbone": self.name,
            "network": f"Fashion-MNIST CNN ({FEATURES} penultimate ReLU features)",
            "input": "uint8 rounded from [-1, 1], averaged to gray, bilinear to 28x28",
            "classifier_settings": self.classifier.settings,
            "classifier_test_accuracy": self.classifier.test_accuracy,
            "classifier_test_split": "Fashion-MNIST official test split (10,000 images)",
            "classifier_min_accuracy": self.classifier.min_accuracy,
            "classifier_weights": str(self.weights_path),
            "weights_sha256": self.weights_sha256,
        }

    def key(self) -> dict[str, Any]:
        """What of the protocol changes the real features (the reference-cache key)."""
        return {"network": "fashion-classifier", "weights_sha256": self.weights_sha256}
