"""Stacked MNIST mode coverage: a digit classifier labels each channel (VEEGAN, PacGAN).

A sample's mode is the three-digit number its R, G and B channels show (0..999). The classifier
is a small CNN (or an ensemble, ``members``) trained once on MNIST-5k with random affine
augmentation (450 digits per class for training, 50 held out), its weights cached beside the
reference features, keyed by its training settings; building it asserts its held-out accuracy.
One member reads 98.8% of the held-out digits, three 99.0% (5 misreads of 500 against 6: no
measurable gain) at three times the cost of every evaluation (78,000 digits at 26k samples), so
one is the default. VEEGAN/PacGAN used a classifier trained on MNIST-60k instead.

The papers' count (``modes``: modes with at least one sample) inherits the classifier's errors:
each misread digit moves a sample to a neighbouring mode (one digit different), so 100 true
modes read as 272 at 26k samples. ``modes_calibrated`` counts a mode only when it holds more
than misreads of any other mode could have put there, by the upper bounds of the classifier's
held-out confusion (see ``calibrated_counts``). Every score also measures both counts on sets of
exactly 10, 100 and 1,000 true modes built from the held-out digits at the same sample count
(``calibration``), and ``protocol()`` reports them.
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

NUM_MODES = 1000
MIN_ACCURACY = 0.98
MODES = "modes"
MODE_KL = "mode_kl"
MODES_CALIBRATED = "modes_calibrated"
MODE_KL_CALIBRATED = "mode_kl_calibrated"
CALIBRATION_MODES = (10, 100, 1000)  # the true mode counts every score is calibrated on
CONFIDENCE = 0.95  # one-sided, of the misread bounds
TOLERANCE = 0.1  # the calibrated count's promise on the calibration sets


def digit_net(width: int) -> nn.Sequential:
    """(B, 1, 28, 28) in [-1, 1] -> (B, 10) digit logits."""
    w = width
    return nn.Sequential(
        nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
        nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),  # 14 x 14
        nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
        nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
        nn.MaxPool2d(2),  # 7 x 7
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(2 * w * 49, 128), nn.ReLU(), nn.Dropout(0.3),
        nn.Linear(128, 10),
    )  # fmt: skip


class DigitEnsemble(nn.Module):
    """Members' mean class probabilities (B, 10) of (B, 1, 28, 28) digits in [-1, 1]."""

    def __init__(self, width: int, members: int) -> None:
        super().__init__()
        self.members = nn.ModuleList(digit_net(width) for _ in range(members))

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([m(x).softmax(1) for m in self.members]).mean(0)


def random_affine(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random affine copies of [-1, 1] digits (B, 1, 28, 28): +-11 degrees, +-10% scale, shear
    +-0.15, +-2.5 px shift, as a hand's variation between writers."""
    b = len(x)
    u = torch.rand(b, 5, generator=gen) * 2 - 1  # (B, 5) in [-1, 1]
    angle, scale, shear = 0.2 * u[:, 0], 1 + 0.1 * u[:, 1], 0.15 * u[:, 2]
    shift = u[:, 3:] * 2.5 / 14  # affine_grid's unit is half the image
    cos, sin = angle.cos() / scale, angle.sin() / scale
    theta = torch.stack(
        [torch.stack([cos, shear - sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)],
        1,
    )  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # shift to [0, 2] so the zero padding outside the digit is background (-1)
    return F.grid_sample(x + 1, grid, align_corners=False) - 1


def held_out_split(labels: Tensor, per_class: int, seed: int) -> tuple[Tensor, Tensor]:
    """Train and held-out indices: ``per_class`` random digits of each class held out, the
    held-out ones ordered class by class."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=gen)
    held = torch.cat([order[labels[order] == c][:per_class] for c in range(10)])
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held] = False
    return mask.nonzero()[:, 0], held


def kl_to_uniform(counts: Tensor) -> float:
    """KL(histogram ``counts`` (NUM_MODES,) normalised || uniform over its modes), in nats."""
    p = counts.double()
    p = p[p > 0] / p.sum()
    return float((p * (p * len(counts)).log()).sum())


def mode_kl(modes: Tensor, num_modes: int = NUM_MODES) -> float:
    """KL(sample mode histogram || uniform over num_modes), in nats."""
    return kl_to_uniform(torch.bincount(modes.long(), minlength=num_modes))


def binomial_upper(errors: int, trials: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson upper bound of a rate seen ``errors`` times in ``trials``."""
    if errors >= trials:
        return 1.0

    def cdf(p: float) -> float:  # P(X <= errors), X ~ Binomial(trials, p)
        return sum(math.comb(trials, k) * p**k * (1 - p) ** (trials - k) for k in range(errors + 1))

    low, high = errors / trials, 1.0
    for _ in range(60):  # the cdf falls with p: bisect for cdf = 1 - confidence
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) > 1 - confidence else (low, mid)
    return high


def confusion(reads: Tensor) -> Tensor:
    """(10, 10) held-out counts: row the true digit, column what the classifier read."""
    true = torch.arange(10)[:, None].expand_as(reads)
    return torch.bincount((true * 10 + reads).flatten(), minlength=100).reshape(10, 10)


def misread_bounds(reads: Tensor, confidence: float = CONFIDENCE) -> Tensor:
    """(10, 10): the one-sided upper bound of the rate at which the classifier reads the row's
    digit as the column's, from the held-out reads (10, per_class); 1 on the diagonal."""
    table = confusion(reads)
    per_class = reads.shape[1]
    bounds = torch.tensor(
        [[binomial_upper(int(k), per_class, confidence) for k in row] for row in table],
        dtype=torch.float64,
    )
    return bounds.fill_diagonal_(1.0)


def calibrated_counts(counts: Tensor, bounds: Tensor) -> Tensor:
    """The mode histogram (1000,) with each mode that misreads could explain merged into the
    mode whose misreads explain most of it.

    The three channels are read independently, so misreads carry at most
    ``bounds[a', a] * bounds[b', b] * bounds[c', c]`` of mode a'b'c''s samples to mode abc. A
    mode holding no more than that from some other mode is consistent with holding nothing; its
    samples go to that mode, their likeliest source, which holds strictly more samples (every
    off-diagonal bound < 1), so the moves end.
    """
    reach = torch.kron(torch.kron(bounds, bounds), bounds)  # (1000, 1000): from row to column
    reach.fill_diagonal_(0)
    if reach.max() >= 1:
        raise ValueError("misread bounds must be < 1 off the diagonal")
    counts = counts.double()
    explained, source = (reach * counts[:, None]).max(0)
    kept = (counts > explained) | (counts == 0)
    target = torch.where(kept, torch.arange(NUM_MODES), source)
    for _ in range(10):  # pointer doubling: 2**10 hops cover the longest chain of 1000 modes
        target = target[target]
    return torch.bincount(target, weights=counts, minlength=NUM_MODES)


def calibration_set(reads: Tensor, true_modes: int, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """True and read modes (n,) of n uniform draws from ``true_modes`` random distinct modes,
    each channel a random held-out digit of its class read as ``reads`` (10, per_class) says."""
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(NUM_MODES, generator=gen)[:true_modes]
    truth = chosen[torch.randint(true_modes, (n,), generator=gen)]  # (n,)
    place = torch.tensor([100, 10, 1])
    digit = truth[:, None] // place % 10  # (n, 3)
    pick = torch.randint(reads.shape[1], (n, 3), generator=gen)  # which held-out digit
    return truth, reads[digit, pick] @ place


class ModeClassifier:
    """Trains (or loads) the digit classifier; ``modes(images)`` gives each image's mode."""

    def __init__(
        self,
        cache_dir: str = "~/.cache/genlab",
        width: int = 16,
        epochs: int = 10,
        members: int = 1,
        batch_size: int = 64,
        lr: float = 3e-3,
        augment: bool = True,
        held_out_per_class: int = 50,
        seed: int = 0,
    ) -> None:
        self.settings = {
            "width": width, "epochs": epochs, "members": members, "batch_size": batch_size,
            "lr": lr, "augment": augment, "held_out_per_class": held_out_per_class, "seed": seed,
            "data": "mnist5k", "torch": torch.__version__.split("+")[0],
        }  # fmt: skip
        text = json.dumps(self.settings, sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        self.path = Path(cache_dir).expanduser() / f"modes-classifier-{digest}.pt"
        self.device = torch.device("cpu")
        self.net = DigitEnsemble(width, members)
        with computing(self.path):  # sweep jobs train it once; the others wait, then read it
            stored = self.load(text) or self.train(text)
        self.reads = stored["reads"]  # (10, per_class): what each held-out digit reads as
        self.accuracy = stored["accuracy"]
        self.bounds = misread_bounds(self.reads)
        self.calibrations: dict[int, dict[str, Any]] = {}  # by sample count
        self.last_n: int | None = None
        self.net.eval().requires_grad_(False)

    def load(self, text: str) -> dict[str, Any] | None:
        """The cached weights, held-out reads and accuracy, or None when absent or for other
        settings."""
        if not self.path.exists():
            return None
        try:
            stored = torch.load(self.path, map_location="cpu", weights_only=True)
            if stored["settings"] != text:
                return None
            self.net.load_state_dict(stored["state_dict"])
        except Exception as e:  # a half-written or garbage cache file is retrained, and said so
            warnings.warn(
                f"{self.path}: unreadable classifier cache ({type(e).__name__}); retraining",
                GenlabWarning,
                stacklevel=2,
            )
            return None
        return stored

    def train(self, text: str) -> dict[str, Any]:
        """Train on MNIST-5k minus the held-out digits; assert the held-out accuracy."""
        from genlab.data.sources import mnist5k_raw

        images, labels = mnist5k_raw()
        x = images.float() / 127.5 - 1  # (5000, 1, 28, 28) in [-1, 1]
        s = self.settings
        train, held = held_out_split(labels, s["held_out_per_class"], s["seed"])
        steps = s["epochs"] * math.ceil(len(train) / s["batch_size"])
        epochs = [(i, e) for i in range(s["members"]) for e in range(s["epochs"])]
        what = f"digit classifier for val/modes (trained once, cached in {self.path.parent})"
        with torch.random.fork_rng(devices=[]):
            for i, epoch in track(epochs, what, len(epochs), unit="epochs"):
                if epoch == 0:  # members differ in init, order and augmentation
                    torch.manual_seed(s["seed"] + i)
                    gen = torch.Generator().manual_seed(s["seed"] + i)
                    net = self.net.members[i] = digit_net(s["width"]).train()  # seeded init
                    opt = torch.optim.AdamW(net.parameters(), lr=s["lr"])
                    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, s["lr"], total_steps=steps)
                for idx in train[torch.randperm(len(train), generator=gen)].split(s["batch_size"]):
                    xb = random_affine(x[idx], gen) if s["augment"] else x[idx]
                    loss = F.cross_entropy(net(xb), labels[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    schedule.step()
        self.net.eval()
        with torch.no_grad():
            reads = self.net(x[held]).argmax(1).reshape(10, s["held_out_per_class"])
        accuracy = float((reads == torch.arange(10)[:, None]).double().mean())
        if accuracy < MIN_ACCURACY:
            raise GenlabError(
                f"metrics.modes_classifier: held-out accuracy {accuracy:.3f} < {MIN_ACCURACY} "
                "(raise epochs, members or width)"
            )
        stored = {
            "settings": text,
            "state_dict": self.net.state_dict(),
            "reads": reads,
            "accuracy": accuracy,
        }
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

    def counts(self, modes: Tensor) -> dict[str, float]:
        """The papers' count and KL and the calibrated ones of a sample's modes (n,)."""
        counts = torch.bincount(modes.long().cpu(), minlength=NUM_MODES)
        merged = calibrated_counts(counts, self.bounds)
        return {
            MODES: float((counts > 0).sum()),
            MODES_CALIBRATED: float((merged > 0).sum()),
            MODE_KL: kl_to_uniform(counts),
            MODE_KL_CALIBRATED: kl_to_uniform(merged),
        }

    def calibration(self, n: int) -> dict[str, Any]:
        """Both counts on sets of 10, 100 and 1,000 true modes of n held-out samples, and the
        truth: the distinct true modes drawn and their KL. Warns where the calibrated count
        misses the truth by more than 10%."""
        if n not in self.calibrations:
            table = {}
            for k in CALIBRATION_MODES:
                truth, read = calibration_set(self.reads, k, n, seed=k)
                table[str(k)] = {
                    "true_modes": float(torch.unique(truth).numel()),
                    "true_mode_kl": mode_kl(truth),
                    **self.counts(read),
                }
                off = table[str(k)][MODES_CALIBRATED] / table[str(k)]["true_modes"] - 1
                if abs(off) > TOLERANCE:
                    warnings.warn(
                        f"metrics.num_samples={n}: val/modes_calibrated reads {off:+.0%} on {k} "
                        "true modes of held-out digits (more samples per mode tighten it)",
                        GenlabWarning,
                        stacklevel=2,
                    )
            self.calibrations[n] = {"n": n, "true_modes_drawn_from": table}
        return self.calibrations[n]

    def score(self, modes: Tensor) -> dict[str, float]:
        """val/modes, val/mode_kl (the papers') and val/modes_calibrated, val/mode_kl_calibrated;
        calibrates at this sample count for ``protocol()``."""
        self.last_n = len(modes)
        self.calibration(self.last_n)
        return self.counts(modes)

    def protocol(self) -> dict[str, Any]:
        return {
            **self.settings,
            "held_out_accuracy": self.accuracy,
            "min_accuracy": MIN_ACCURACY,
            "held_out_confusion": confusion(self.reads).tolist(),
            "misread_bounds": self.bounds.tolist(),
            "misread_bounds_confidence": CONFIDENCE,
            "calibrated_rule": "a mode counts when it holds more samples than misreads could "
            "carry into it from any other mode (the product of the misread bounds of the digits "
            "that differ); an uncounted mode's samples go to the mode that explains most of them, "
            "for mode_kl_calibrated",
            "calibration": None if self.last_n is None else self.calibrations[self.last_n],
            "num_modes": NUM_MODES,
            "uniform_kl_max": math.log(NUM_MODES),
            "file": str(self.path),
        }
