"""ImageMetrics: one backbone pass per image, then every configured metric from the features."""

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch_fidelity
import torchmetrics
from torch import Tensor

import genlab.metrics.jackknife as jk
import genlab.metrics.memorisation as mem
from genlab.errors import GenlabError, GenlabWarning, check_choice
from genlab.metrics.cmmd import CLIPBackbone, cmmd_from_features
from genlab.metrics.dinov2 import DINOv2Backbone
from genlab.metrics.features import RESIZES, Resize, numerics, to_uint8
from genlab.metrics.fid import fid_from_features, fid_infinity, ifid_from_features
from genlab.metrics.inception import InceptionBackbone
from genlab.metrics.inception_score import inception_score_from_logits
from genlab.metrics.kid import KID_DEGREE, SEED, kid_from_features
from genlab.metrics.knn import DEFAULT_BLOCK
from genlab.metrics.names import (
    BACKBONES,
    COVERS,
    FEATURE_METRICS,
    HELDOUT_METRICS,
    IFID,
    IS_MEAN,
    IS_STD,
    KID_ALL_PAIRS,
    KID_MEAN,
    KID_STD,
    METRIC_NAMES,
    MODE,
    N_FAKE,
    N_REAL,
    NO_PR_INTERVAL,
    MetricName,
    ci_keys,
    fd_key,
)
from genlab.metrics.prdc import prdc_from_features
from genlab.metrics.vendi import vendi_from_features


class ImageMetrics:
    """FID, IS, KID, PR/DC, memorisation, iFID, modes, Vendi and CMMD of [-1, 1] images.

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
        backbone: str = "inception",
        resize: Resize = "tf1",
        inception_sha256: str | None = None,
        dinov2_weights: str | None = None,
        dinov2_arch: str = "vitl14",
        dinov2_sha256: str | None = None,
        clip_weights: str | None = None,
        clip_sha256: str | None = None,
        pr_k: int = 3,
        dc_k: int = 5,
        knn_block: int = DEFAULT_BLOCK,
        jackknife: int = 0,
        vendi_q: float = 1.0,
        modes_classifier: dict[str, Any] | None = None,
        classifier_weights: str | None = None,
        classifier: dict[str, Any] | None = None,
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
        ]:
            if value < low:
                raise GenlabError(f"metrics.{key} must be >= {low}, got {value}")
        if jackknife:
            jk.check_groups(jackknife)
            if "prdc" in metrics:
                warnings.warn(NO_PR_INTERVAL, GenlabWarning, stacklevel=2)
        check_choice("metrics.backbone", backbone, BACKBONES)
        check_choice("metrics.resize", resize, RESIZES)
        if backbone != "inception" and "is" in metrics:
            raise GenlabError(
                f"metrics.metrics: is needs Inception's logits, not metrics.backbone={backbone}"
            )
        if "cmmd" in metrics and backbone != "clip":
            raise GenlabError(
                f"metrics.metrics: cmmd is an MMD of CLIP embeddings: set metrics.backbone=clip "
                f"(and metrics.clip_weights), not {backbone}"
            )
        self.metrics = tuple(metrics)
        self.kid_subset_size, self.kid_subsets = kid_subset_size, kid_subsets
        self.is_splits, self.batch_size, self.vendi_q = is_splits, batch_size, vendi_q
        self.pr_k, self.dc_k, self.knn_block, self.jackknife = pr_k, dc_k, knn_block, jackknife
        self.fd = fd_key(backbone)
        self.device = torch.device(device)
        # What the last compute() and features() really used, for protocol(): small sets shrink
        # KID subsets and IS splits, and settings may change between construction and the pass.
        self.used: dict[str, Any] = {}
        self.pass_numerics: dict[str, Any] | None = None
        self.backbone: Any = None  # modes alone need no backbone (nor its weights)
        if backbone == "dinov2":
            self.backbone = DINOv2Backbone(
                dinov2_weights, dinov2_arch, resize, self.device, sha256=dinov2_sha256
            )
        elif backbone == "clip":
            self.backbone = CLIPBackbone(clip_weights, resize, clip_sha256, self.device)
        elif backbone == "classifier":
            from genlab.metrics.classifier import ClassifierBackbone

            self.backbone = ClassifierBackbone(classifier_weights, classifier, self.device)
        elif self.needs_real or {"is", "vendi"} & set(self.metrics):
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

    @property
    def needs_heldout(self) -> bool:
        """True when some configured metric reads held-out real features too."""
        return bool(HELDOUT_METRICS & set(self.metrics))

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
        heldout_pool: Tensor | None = None,
        ifid_pool: Tensor | None = None,
    ) -> dict[str, float]:
        """The requested metrics plus n_real and n_fake from features of both sets.

        Args:
            fake_labels: the class of each fake iFID reads: of ``ifid_pool`` when given, a set
                drawn for iFID alone (StudioGAN's counts), else of ``fake_pool``.
            heldout_pool: real images the model never trained on (copies, C_T, authenticity).
        """
        out: dict[str, float] = {
            N_REAL: 0 if real_pool is None else len(real_pool),
            N_FAKE: len(next(t for t in (fake_pool, fake_logits, fake_modes) if t is not None)),
        }
        if "fid" in self.metrics:
            out[self.fd] = fid_from_features(real_pool, fake_pool)
        if "fid_inf" in self.metrics:
            fit = fid_infinity(real_pool, fake_pool, seed=SEED)
            out[f"{self.fd}_inf"] = fit.pop("value")
            self.used["fid_inf_fit"] = fit
        if "kid" in self.metrics:
            subset = min(self.kid_subset_size, len(real_pool), len(fake_pool))
            if len(real_pool) < min(self.kid_subset_size, len(fake_pool)):
                # fewer fakes than the subset size was said once, when the settings were read
                warnings.warn(
                    f"metrics.kid_subset_size={self.kid_subset_size} > the {len(real_pool)} "
                    f"real images (metrics.num_real, metrics.reference_split): KID uses "
                    f"subsets of {subset}",
                    GenlabWarning,
                    stacklevel=2,
                )
            self.used["kid_subset_size"] = subset
            out[KID_MEAN], out[KID_STD] = kid_from_features(
                real_pool, fake_pool, subset, self.kid_subsets, SEED
            )
        if "is" in self.metrics:
            if fake_logits is None:
                raise ValueError("IS needs fake_logits")
            self.used["is_splits"] = min(self.is_splits, len(fake_logits))
            out[IS_MEAN], out[IS_STD] = inception_score_from_logits(
                fake_logits, self.is_splits, SEED
            )
        if "cmmd" in self.metrics:
            out["cmmd"] = cmmd_from_features(real_pool, fake_pool, block=self.knn_block)
        if "vendi" in self.metrics:
            out["vendi"] = vendi_from_features(fake_pool, self.vendi_q)
        out.update(self.knn_metrics(real_pool, fake_pool, heldout_pool))
        if "ifid" in self.metrics:
            if real_labels is None or fake_labels is None:
                warnings.warn(
                    "iFID needs a conditional model and labelled data: skipped",
                    GenlabWarning,
                    stacklevel=2,
                )
            else:
                ifid_fake = fake_pool if ifid_pool is None else ifid_pool
                out[IFID] = ifid_from_features(real_pool, real_labels, ifid_fake, fake_labels)
        if "modes" in self.metrics:
            out.update(self.modes.score(fake_modes))
        if self.jackknife:
            out.update(self.intervals(real_pool, fake_pool, out.get(self.fd)))
        return out

    def knn_metrics(
        self, real: Tensor | None, fake: Tensor | None, heldout: Tensor | None
    ) -> dict[str, float]:
        """Precision/recall/density/coverage and the memorisation tests, sharing k-NN passes."""
        out: dict[str, float] = {}
        if self.needs_heldout and heldout is None and {"ct", "authenticity"} & set(self.metrics):
            raise GenlabError(
                "metrics.metrics: ct and authenticity compare with held-out real images: set "
                "metrics.heldout_split (val or test)"
            )
        prdc = None
        if "prdc" in self.metrics:
            prdc = prdc_from_features(real, fake, self.pr_k, self.dc_k, self.knn_block)
            out.update(prdc.values())
        if "copies" in self.metrics:
            if heldout is not None:
                out.update(mem.calibrated_copies(real, heldout, fake, self.knn_block).values())
            elif prdc is not None:  # the k-NN pass found every sample's nearest real image
                out[mem.COPIES] = mem.copies_from_distances(prdc.fake_to_real, prdc.real_to_real)
            else:
                out[mem.COPIES] = mem.copies_fraction(real, fake, self.knn_block)
        if "ct" in self.metrics:
            out[mem.CT] = mem.ct_score(real, heldout, fake, block=self.knn_block)
        if "authenticity" in self.metrics:
            out[mem.AUTHENTICITY] = mem.authenticity(real, fake, self.knn_block)
            # what fresh data scores: held-out real images are authentic by construction
            out["authenticity_heldout"] = mem.authenticity(real, heldout, self.knn_block)
        return out

    def intervals(self, real: Tensor, fake: Tensor, fd: float | None) -> dict[str, float]:
        """95% jackknife intervals of the population FD and KID (those configured).

        Each covers the population value (``COVERS``), checked by simulation against closed-form
        truths (experiments/intervals/). Precision and recall get none (``NO_PR_INTERVAL``).
        """
        out = {}
        if "fid" in self.metrics:
            j = jk.fid_jackknife(real, fake, self.jackknife, value=fd)
            out[f"{self.fd}_jackknife"] = j.estimate
            out[ci_keys(self.fd)[0]], out[ci_keys(self.fd)[1]] = j.low, j.high
        if "kid" in self.metrics:
            j = jk.kid_jackknife(real, fake, self.jackknife, block=self.knn_block)
            out[KID_ALL_PAIRS] = j.estimate
            out[ci_keys("kid")[0]], out[ci_keys("kid")[1]] = j.low, j.high
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
            "jackknife": self.jackknife,
            **(self.pass_numerics or numerics(self.device)),
        }
        if "prdc" in self.metrics:
            out.update(pr_k=self.pr_k, dc_k=self.dc_k)
        if HELDOUT_METRICS & set(self.metrics):
            out.update(mem.protocol())
        if "vendi" in self.metrics:
            out.update(vendi_q=self.vendi_q, vendi_kernel="cosine similarity of the features")
        if self.jackknife:
            out["interval_level"] = jk.LEVEL
            out["interval_seed"] = jk.SEED
            out["interval_method"] = "delete-a-group jackknife, paired groups, Student t"
            out["interval_covers"] = {
                name: COVERS[kind]
                for name, kind, metric in ((f"{self.fd}_ci", "fd", "fid"), ("kid_ci", "kid", "kid"))
                if metric in self.metrics
            }
        if "fid_inf" in self.metrics:
            out["fid_inf"] = "Chong & Forsyth 2020: FID of fake subsets vs 1 / size, intercept"
            out["fid_inf_fit"] = self.used.get("fid_inf_fit")
        if "ifid" in self.metrics:
            out["ifid_counts"] = self.used.get("ifid_counts")  # per class: real, fake
        if self.modes is not None:
            out["modes_classifier"] = self.modes.protocol()
        return out
