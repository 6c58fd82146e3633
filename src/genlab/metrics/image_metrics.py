"""ImageMetrics: one backbone pass per image, then every configured metric from the features."""

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch_fidelity
import torchmetrics
from torch import Tensor

from genlab.errors import GenlabError, GenlabWarning
from genlab.metrics import bootstrap as boot
from genlab.metrics.dinov2 import DINOv2Backbone
from genlab.metrics.features import RESIZES, Resize, numerics, to_uint8
from genlab.metrics.fid import fid_from_features, ifid_from_features
from genlab.metrics.inception import InceptionBackbone
from genlab.metrics.inception_score import inception_score_from_logits
from genlab.metrics.kid import KID_DEGREE, SEED, kid_from_features
from genlab.metrics.knn import DEFAULT_BLOCK
from genlab.metrics.memorisation import (
    COPIES,
    COPY_QUANTILE,
    copies_fraction,
    copies_from_distances,
)
from genlab.metrics.prdc import RECALL, prdc_from_features

FID = "fid"
IS_MEAN = "is_mean"
IS_STD = "is_std"
KID_MEAN = "kid_mean"
KID_STD = "kid_std"
IFID = "ifid"
MODES = "modes"
MODE_KL = "mode_kl"
N_REAL = "n_real"
N_FAKE = "n_fake"
MODE = "mode"  # feature key: the Stacked MNIST mode (0..999) of each image
LABEL = "label"  # feature key: the class each image was drawn for (iFID)

MetricName = Literal["fid", "is", "kid", "prdc", "copies", "ifid", "modes"]
METRIC_NAMES = ("fid", "is", "kid", "prdc", "copies", "ifid", "modes")
BACKBONES = ("inception", "dinov2")
FEATURE_METRICS = {"fid", "kid", "prdc", "copies", "ifid"}  # those that need real features
# result key -> name of its interval keys (``<name>_ci_low``, ``<name>_ci_high``)
CI_NAMES = {FID: "fid", KID_MEAN: "kid", "precision": "precision", RECALL: "recall"}


def ci_keys(name: str) -> tuple[str, str]:
    """The result keys of a metric's bootstrap interval."""
    return f"{name}_ci_low", f"{name}_ci_high"


class ImageMetrics:
    """FID, IS, KID, precision/recall/density/coverage, copies, iFID, modes of [-1, 1] images.

    A plain object, not an nn.Module: nn.Module.__setattr__ registers only modules, parameters and
    buffers, so an ImageMetrics held as an attribute of a LightningModule stays out of its
    state_dict, parameters, `.to()` and DDP (move it with its own `to`). Pickling (ddp_spawn,
    deepcopy) drops the networks; the copy reloads them from the weights files on first use.
    """

    def __init__(
        self,
        metrics: Sequence[MetricName] = ("fid", "is", "kid"),
        inception_weights: str | None = None,
        kid_subset_size: int = 1000,
        kid_subsets: int = 100,
        is_splits: int = 10,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        download: bool = False,
        backbone: Literal["inception", "dinov2"] = "inception",
        resize: Resize = "tf1",
        inception_sha256: str | None = None,
        dinov2_weights: str | None = None,
        dinov2_arch: str = "vitl14",
        pr_k: int = 3,
        dc_k: int = 5,
        knn_block: int = DEFAULT_BLOCK,
        bootstrap: int = 0,
        modes_classifier: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(metrics, str) or not metrics or set(metrics) - set(METRIC_NAMES):
            raise GenlabError(
                f"metrics.metrics must be a non-empty list of {METRIC_NAMES}: {metrics}"
            )
        for key, value, low in [
            ("kid_subset_size", kid_subset_size, 2),
            ("kid_subsets", kid_subsets, 1),
            ("is_splits", is_splits, 1),
            ("batch_size", batch_size, 1),
            ("pr_k", pr_k, 1),
            ("dc_k", dc_k, 1),
            ("knn_block", knn_block, 1),
            ("bootstrap", bootstrap, 0),
        ]:
            if value < low:
                raise GenlabError(f"metrics.{key} must be >= {low}, got {value}")
        if backbone not in BACKBONES:
            raise GenlabError(f"metrics.backbone={backbone!r}: choose one of {BACKBONES}")
        if resize not in RESIZES:
            raise GenlabError(f"metrics.resize={resize!r}: choose one of {RESIZES}")
        if backbone != "inception" and "is" in metrics:
            raise GenlabError(
                f"metrics.metrics: is needs Inception's logits, not metrics.backbone={backbone}"
            )
        self.metrics = tuple(metrics)
        self.kid_subset_size, self.kid_subsets, self.is_splits = (
            kid_subset_size,
            kid_subsets,
            is_splits,
        )
        self.batch_size = batch_size
        self.pr_k, self.dc_k, self.knn_block, self.bootstrap = pr_k, dc_k, knn_block, bootstrap
        self.device = torch.device(device)
        # What the last compute() and features() really used, for protocol(): small sets shrink
        # KID subsets and IS splits, and settings may change between construction and the pass.
        self.used: dict[str, Any] = {}
        self.pass_numerics: dict[str, Any] | None = None
        self.backbone: Any = None  # modes alone need no backbone (nor its weights)
        if backbone == "dinov2":
            self.backbone = DINOv2Backbone(dinov2_weights, dinov2_arch, resize, self.device)
        elif self.needs_real or "is" in self.metrics:
            self.backbone = InceptionBackbone(
                inception_weights, resize, inception_sha256, download, self.device
            )
        self.modes = None
        if "modes" in self.metrics:
            from genlab.metrics.modes import ModeClassifier

            self.modes = ModeClassifier(**(modes_classifier or {}))

    # the Inception-era attribute names, still read by genlab-eval and tests
    @property
    def weights_path(self):
        return self.backbone.weights_path

    @property
    def weights_sha256(self) -> str:
        return self.backbone.weights_sha256

    @property
    def net(self):
        return self.backbone.net

    @property
    def needs_real(self) -> bool:
        """True when some configured metric compares with real features."""
        return bool(FEATURE_METRICS & set(self.metrics))

    def to(self, device: str | torch.device) -> "ImageMetrics":
        """Move the networks to `device`; returns self."""
        self.device = torch.device(device)
        if self.backbone is not None:
            self.backbone.to(self.device)
        if self.modes is not None:
            self.modes.to(self.device)
        return self

    @torch.inference_mode()
    def features(self, images: Tensor) -> dict[str, Tensor]:
        """One backbone pass: {"pool": (B, D)} float64, plus {"logits": (B, 1008)} (Inception)
        and {"mode": (B,)} (metrics include modes)."""
        parts: dict[str, list[Tensor]] = {}
        self.pass_numerics = numerics(self.device)
        for batch in images.split(self.batch_size):
            batch = batch.to(self.device)
            # Under a 16-mixed trainer the networks would otherwise run in half precision.
            with torch.autocast(self.device.type, enabled=False):
                out = {}
                if self.backbone is not None:
                    out = {k: v.double() for k, v in self.backbone(to_uint8(batch)).items()}
                if self.modes is not None:
                    out[MODE] = self.modes.modes(batch)
            for name, f in out.items():
                parts.setdefault(name, []).append(f)
        return {name: torch.cat(fs) for name, fs in parts.items()}

    def compute(
        self,
        real_pool: Tensor | None,
        fake_pool: Tensor | None,
        fake_logits: Tensor | None = None,
        real_labels: Tensor | None = None,
        fake_labels: Tensor | None = None,
        fake_modes: Tensor | None = None,
    ) -> dict[str, float]:
        """The requested metrics plus n_real and n_fake from features of both sets."""
        out: dict[str, float] = {
            N_REAL: 0 if real_pool is None else len(real_pool),
            N_FAKE: len(next(t for t in (fake_pool, fake_logits, fake_modes) if t is not None)),
        }
        if "fid" in self.metrics:
            out[FID] = fid_from_features(real_pool, fake_pool)
        if "kid" in self.metrics:
            self.used["kid_subset_size"] = min(self.kid_subset_size, len(real_pool), len(fake_pool))
            out[KID_MEAN], out[KID_STD] = kid_from_features(
                real_pool, fake_pool, self.kid_subset_size, self.kid_subsets, SEED
            )
        if "is" in self.metrics:
            if fake_logits is None:
                raise ValueError("IS needs fake_logits")
            self.used["is_splits"] = min(self.is_splits, len(fake_logits))
            out[IS_MEAN], out[IS_STD] = inception_score_from_logits(
                fake_logits, self.is_splits, SEED
            )
        prdc = None
        if "prdc" in self.metrics:
            prdc = prdc_from_features(real_pool, fake_pool, self.pr_k, self.dc_k, self.knn_block)
            out.update(prdc.values())
        if "copies" in self.metrics:
            if prdc is not None:  # the k-NN pass found every sample's nearest real image
                out[COPIES] = copies_from_distances(prdc.fake_to_real, prdc.real_to_real)
            else:
                out[COPIES] = copies_fraction(real_pool, fake_pool, self.knn_block)
        if "ifid" in self.metrics:
            if real_labels is None or fake_labels is None:
                warnings.warn(
                    "iFID needs a conditional model and labelled data: skipped",
                    GenlabWarning,
                    stacklevel=2,
                )
            else:
                out[IFID] = ifid_from_features(real_pool, real_labels, fake_pool, fake_labels)
        if "modes" in self.metrics:
            out.update(self.modes.score(fake_modes))
        if self.bootstrap:
            out.update(self.intervals(real_pool, fake_pool, prdc))
        return out

    def intervals(self, real: Tensor, fake: Tensor, prdc: Any) -> dict[str, float]:
        """95% bootstrap intervals of FID, KID, precision and recall (those configured)."""
        counts = boot.resample_counts(len(fake), self.bootstrap)
        values = {}
        if "fid" in self.metrics:
            values["fid"] = boot.fid_resamples(real, fake, counts)
        if "kid" in self.metrics:
            values["kid"] = boot.kid_resamples(real, fake, counts, self.knn_block)
        if prdc is not None:
            values["precision"] = boot.precision_resamples(prdc, counts)
            real_counts = boot.resample_counts(len(real), self.bootstrap, boot.SEED + 1)
            values["recall"] = boot.recall_resamples(prdc, real_counts)
        out = {}
        for name, v in values.items():
            out[ci_keys(name)[0]], out[ci_keys(name)[1]] = boot.interval(v)
        return out

    def reference_key(self, **data: Any) -> dict[str, Any]:
        """Cache key for real features: `data` (dataset, split, size, ...) plus the protocol.

        It holds the device type and precision in effect now, when the caller is about to run
        (or look up) the feature pass: features from TF32 or another device differ far beyond
        round-off, so they must not be mixed with fake features from this pass.
        """
        if self.backbone is None:
            return {**data, **numerics(self.device)}
        return {
            **data,
            "backbone": self.backbone.name,
            **self.backbone.key(),
            **numerics(self.device),
        }

    def protocol(self) -> dict[str, Any]:
        """Everything that fixes the numbers, for metrics.json and run configs.

        After compute() the KID subset size and IS splits are the ones used (``*_requested``
        are the settings), and device and precision are those of the last feature pass.
        """
        out = {
            "metrics": list(self.metrics),
            "torch": torch.__version__,
            "torchmetrics": torchmetrics.__version__,
            "torch_fidelity": torch_fidelity.__version__,
            **(self.backbone.protocol() if self.backbone is not None else {}),
            "kid_subset_size": self.used.get("kid_subset_size", self.kid_subset_size),
            "kid_subset_size_requested": self.kid_subset_size,
            "kid_subsets": self.kid_subsets,
            "kid_kernel": f"poly degree {KID_DEGREE}, gamma 1/D, coef 1",
            "is_splits": self.used.get("is_splits", self.is_splits),
            "is_splits_requested": self.is_splits,
            "seed": SEED,
            "bootstrap": self.bootstrap,
            **(self.pass_numerics or numerics(self.device)),
        }
        if "prdc" in self.metrics:
            out.update(pr_k=self.pr_k, dc_k=self.dc_k)
        if "copies" in self.metrics:
            out["copies_threshold"] = f"train-train nearest-neighbour {COPY_QUANTILE:.0%} quantile"
        if self.bootstrap:
            out["bootstrap_level"] = boot.LEVEL
            out["bootstrap_seed"] = boot.SEED
        if self.modes is not None:
            out["modes_classifier"] = self.modes.protocol()
        return out
