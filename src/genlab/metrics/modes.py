"""Stacked MNIST mode coverage: a digit classifier labels each channel (VEEGAN, PacGAN).

A sample's mode is the three-digit number its R, G and B channels show (0..999). The classifier
is a small CNN trained once on MNIST-5k (450 digits per class for training, 50 held out), its
weights cached beside the reference features, keyed by its training settings; building it
asserts its held-out accuracy. VEEGAN/PacGAN used a classifier trained on MNIST-60k instead.
"""

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.atomic import atomic_torch_save
from genlab.errors import GenlabError

NUM_MODES = 1000
MIN_ACCURACY = 0.95
MODES = "modes"
MODE_KL = "mode_kl"


def digit_net(width: int) -> nn.Sequential:
    """(B, 1, 28, 28) in [-1, 1] -> (B, 10) digit logits."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 14 x 14
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 7 x 7
        nn.Flatten(), nn.Linear(2 * width * 49, 10 * width), nn.ReLU(),
        nn.Linear(10 * width, 10),
    )  # fmt: skip


def held_out_split(labels: Tensor, per_class: int, seed: int) -> tuple[Tensor, Tensor]:
    """Train and held-out indices: ``per_class`` random digits of each class held out."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=gen)
    held = torch.cat([order[labels[order] == c][:per_class] for c in range(10)])
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held] = False
    return mask.nonzero()[:, 0], held


def mode_kl(modes: Tensor, num_modes: int = NUM_MODES) -> float:
    """KL(sample mode histogram || uniform over num_modes), in nats."""
    p = torch.bincount(modes.long(), minlength=num_modes).double()
    p = p[p > 0] / len(modes)
    return float((p * (p * num_modes).log()).sum())


class ModeClassifier:
    """Trains (or loads) the digit classifier; ``modes(images)`` gives each image's mode."""

    def __init__(
        self,
        cache_dir: str = "~/.cache/genlab",
        width: int = 16,
        epochs: int = 4,
        batch_size: int = 64,
        lr: float = 2e-3,
        held_out_per_class: int = 50,
        seed: int = 0,
    ) -> None:
        self.settings = {
            "width": width, "epochs": epochs, "batch_size": batch_size, "lr": lr,
            "held_out_per_class": held_out_per_class, "seed": seed, "data": "mnist5k",
            "torch": torch.__version__.split("+")[0],
        }  # fmt: skip
        text = json.dumps(self.settings, sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        self.path = Path(cache_dir).expanduser() / f"modes-classifier-{digest}.pt"
        self.device = torch.device("cpu")
        self.net = digit_net(width)
        stored = self.load(text)
        if stored is None:
            stored = self.train(text)
        self.accuracy = stored["accuracy"]
        self.net.eval().requires_grad_(False)

    def load(self, text: str) -> dict[str, Any] | None:
        """The cached weights and accuracy, or None when absent or for other settings."""
        if not self.path.exists():
            return None
        try:
            stored = torch.load(self.path, map_location="cpu", weights_only=True)
            if stored["settings"] != text:
                return None
            self.net.load_state_dict(stored["state_dict"])
        except Exception:  # a damaged cache file is retrained
            return None
        return stored

    def train(self, text: str) -> dict[str, Any]:
        """Train on MNIST-5k minus the held-out digits; assert the held-out accuracy."""
        from genlab.data.sources import mnist5k_raw

        images, labels = mnist5k_raw()
        x = images.float() / 127.5 - 1  # (5000, 1, 28, 28) in [-1, 1]
        s = self.settings
        train, held = held_out_split(labels, s["held_out_per_class"], s["seed"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s["seed"])
            self.net.train()
            opt = torch.optim.Adam(self.net.parameters(), lr=s["lr"])
            for _ in range(s["epochs"]):
                for idx in train[torch.randperm(len(train))].split(s["batch_size"]):
                    loss = F.cross_entropy(self.net(x[idx]), labels[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        self.net.eval()
        with torch.no_grad():
            accuracy = float((self.net(x[held]).argmax(1) == labels[held]).double().mean())
        if accuracy < MIN_ACCURACY:
            raise GenlabError(
                f"metrics.modes_classifier: held-out accuracy {accuracy:.3f} < {MIN_ACCURACY} "
                "(raise epochs or width)"
            )
        stored = {"settings": text, "state_dict": self.net.state_dict(), "accuracy": accuracy}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(stored, self.path)
        return stored

    def to(self, device: torch.device) -> None:
        self.device = device
        self.net.to(device)

    @torch.no_grad()
    def digits(self, images: Tensor) -> Tensor:
        """The digit (B, C) each channel of [-1, 1] images (B, C, H, W) shows."""
        b, c = images.shape[:2]
        x = images.float().reshape(b * c, 1, *images.shape[2:])
        if x.shape[-1] != 28:
            x = F.interpolate(x, size=28, mode="bilinear", antialias=True, align_corners=False)
        return self.net(x.to(self.device)).argmax(1).reshape(b, c)

    def modes(self, images: Tensor) -> Tensor:
        """The mode (B,) of RGB images: 100 * red digit + 10 * green digit + blue digit."""
        if images.shape[1] != 3:
            raise GenlabError(
                "metrics.metrics: modes needs 3-channel Stacked MNIST images "
                f"(data=stacked_mnist), got {images.shape[1]} channels"
            )
        d = self.digits(images)
        return d[:, 0] * 100 + d[:, 1] * 10 + d[:, 2]

    def score(self, modes: Tensor) -> dict[str, float]:
        """val/modes (modes with at least one sample) and val/mode_kl."""
        return {
            MODES: float(torch.unique(modes).numel()),
            MODE_KL: mode_kl(modes),
        }

    def protocol(self) -> dict[str, Any]:
        return {
            **self.settings,
            "held_out_accuracy": self.accuracy,
            "num_modes": NUM_MODES,
            "uniform_kl_max": math.log(NUM_MODES),
            "file": str(self.path),
        }
