"""FID, IS and KID: uint8 conversion, one shared InceptionV3, pure statistics, a reference cache.

Numbers agree with torch-fidelity's: same network and TF1 resize, same KID subsets and IS split
order (numpy RandomState with torch-fidelity's seed), same estimators.
"""

import hashlib
import json
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch_fidelity
import torchmetrics
from torch import Tensor
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torchmetrics.image.fid import NoTrainInceptionV3

from genlab.atomic import atomic_torch_save
from genlab.errors import GenlabError

FID = "fid"
IS_MEAN = "is_mean"
IS_STD = "is_std"
KID_MEAN = "kid_mean"
KID_STD = "kid_std"
N_REAL = "n_real"
N_FAKE = "n_fake"

POOL = "pool"
LOGITS = "logits"
POOL_LAYER = "2048"
LOGITS_LAYER = "logits_unbiased"
RESIZE = "tf1-bilinear-299 (torchmetrics antialias=False)"
WEIGHTS_FILE = URL_INCEPTION_V3.rsplit("/", 1)[-1]  # weights-inception-2015-12-05-6726825d.pth
SEED = 2020  # torch-fidelity's rng_seed: the same KID subsets and IS splits, so the same numbers
KID_DEGREE = 3
CACHE_VERSION = 1

MetricName = Literal["fid", "is", "kid"]
METRIC_NAMES = ("fid", "is", "kid")


class MetricsUnavailable(GenlabError):
    """FID/IS/KID cannot run: the Inception weights are missing or unreadable."""


def to_uint8(images: Tensor) -> Tensor:
    """Map [-1, 1] float images (B, 1 or 3, H, W) to uint8 RGB (B, 3, H, W), rounding half up."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"to_uint8 expects (B, 1 or 3, H, W) images, got {tuple(images.shape)}")
    # Round half up, as StyleGAN's (x * 127.5 + 128).clamp(0, 255) does; a bare cast truncates,
    # which darkens every pixel by half a level on average and shifts FID.
    x = ((images.float() + 1) * 127.5 + 0.5).floor().clamp(0, 255).to(torch.uint8)
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


def feature_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64."""
    x = features.double()
    return x.mean(0), torch.cov(x.T)


def fid_from_stats(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """Frechet distance between the Gaussians (mu1, sigma1) and (mu2, sigma2)."""
    mu1, sigma1, mu2, sigma2 = (t.double() for t in (mu1, sigma1, mu2, sigma2))
    # sqrt(S1) S2 sqrt(S1) is symmetric PSD with the eigenvalues of S1 S2, so two symmetric
    # eigendecompositions replace TTUR's slower general eig; clamping drops round-off negatives.
    evals, evecs = torch.linalg.eigh(sigma1)
    root1 = (evecs * evals.clamp(min=0).sqrt()) @ evecs.T
    inner = root1 @ sigma2 @ root1
    tr_covmean = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + sigma1.trace() + sigma2.trace() - 2 * tr_covmean)


def fid_from_features(real: Tensor, fake: Tensor) -> float:
    """FID between (N, D) real and (M, D) fake features; warns when N or M < D."""
    (n, d), m = real.shape, fake.shape[0]
    if min(n, m) < 2:
        raise GenlabError(
            f"FID needs at least 2 real and 2 fake images (metrics.num_samples): {n}, {m}"
        )
    if min(n, m) < d:
        warnings.warn(
            f"FID from {n} real and {m} fake samples of {d}-d features: the covariance is singular "
            f"(fewer samples than dimensions) and FID is biased upward; compare equal counts only",
            stacklevel=2,
        )
    if max(n, m) > d:
        return fid_from_stats(*feature_stats(real), *feature_stats(fake))
    # With centred features A (N, D), B (M, D) the covariances are A^T A and B^T B, and the nonzero
    # eigenvalues of A^T A B^T B are the squared singular values of A B^T (N, M): the same trace,
    # exactly, from a small SVD instead of two (D, D) eigendecompositions.
    real, fake = real.double(), fake.double()
    a = (real - real.mean(0)) / math.sqrt(n - 1)  # (N, D)
    b = (fake - fake.mean(0)) / math.sqrt(m - 1)  # (M, D)
    tr_covmean = torch.linalg.svdvals(a @ b.T).sum()
    diff = real.mean(0) - fake.mean(0)
    return float(diff @ diff + a.square().sum() + b.square().sum() - 2 * tr_covmean)


def _mmd2_poly(x: Tensor, y: Tensor) -> Tensor:
    """Unbiased MMD^2 between (K, D) subsets under k(a, b) = (a.b / D + 1)^3."""
    k, d = x.shape
    kxx = (x @ x.T / d + 1) ** KID_DEGREE  # (K, K)
    kyy = (y @ y.T / d + 1) ** KID_DEGREE
    kxy = (x @ y.T / d + 1) ** KID_DEGREE
    within = kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()
    return within / (k * (k - 1)) - 2 * kxy.sum() / k**2


def kid_from_features(
    real: Tensor, fake: Tensor, subset_size: int = 1000, subsets: int = 100, seed: int = SEED
) -> tuple[float, float]:
    """KID mean and std over random subsets of (N, D) real and (M, D) fake features."""
    n, m = len(real), len(fake)
    if min(n, m) < 2:
        raise GenlabError(
            f"KID needs at least 2 real and 2 fake images (metrics.num_samples): {n}, {m}"
        )
    if subset_size > min(n, m):
        warnings.warn(
            f"KID subset size {subset_size} > {min(n, m)} samples: using {min(n, m)} "
            f"(lower metrics.kid_subset_size or raise metrics.num_samples)",
            stacklevel=2,
        )
        subset_size = min(n, m)
    real, fake = real.double(), fake.double()
    # torch-fidelity's draws, fake (its input1) first: the same subsets give the same numbers.
    rng = np.random.RandomState(seed)
    mmds = []
    for _ in range(subsets):
        j = torch.from_numpy(rng.choice(m, subset_size, replace=False)).to(fake.device)
        i = torch.from_numpy(rng.choice(n, subset_size, replace=False)).to(real.device)
        mmds.append(_mmd2_poly(fake[j], real[i]))
    mmd = torch.stack(mmds)
    return float(mmd.mean()), float(mmd.std(correction=0))


def inception_score_from_logits(
    logits: Tensor, splits: int = 10, seed: int = SEED
) -> tuple[float, float]:
    """Inception Score mean and std over `splits` chunks of (N, 1008) unbiased logits."""
    n = len(logits)
    if splits > n:
        warnings.warn(f"IS with {splits} splits of {n} samples: using {n} splits", stacklevel=2)
        splits = n
    # torch-fidelity shuffles with this seed before splitting (torchmetrics uses torch.randperm).
    order = torch.from_numpy(np.random.RandomState(seed).permutation(n)).to(logits.device)
    x = logits.double()[order]  # (N, 1008)
    p, log_p = x.softmax(1), x.log_softmax(1)
    scores = []
    for s in range(splits):
        lo, hi = s * n // splits, (s + 1) * n // splits
        log_q = p[lo:hi].mean(0).log()  # (1008,) marginal class distribution of this split
        kl = (p[lo:hi] * (log_p[lo:hi] - log_q)).sum(1).mean()
        scores.append(kl.exp())
    score = torch.stack(scores)
    return float(score.mean()), float(score.std(correction=0))


def _resolve_weights(inception_weights: str | None, download: bool) -> Path:
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


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _build_inception(path: Path) -> NoTrainInceptionV3:
    """torch-fidelity's InceptionV3 giving pool features and unbiased logits, TF1 resize."""
    try:
        # antialias=False selects torch-fidelity's TF1 bilinear resize; torchmetrics >= 1.8
        # defaults to torch's antialiased resize, which is not the published FID protocol.
        return NoTrainInceptionV3(
            "inception-v3-compat", [POOL_LAYER, LOGITS_LAYER], str(path), antialias=False
        )
    except Exception as err:  # torch.load and load_state_dict raise many types for a bad file
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise MetricsUnavailable(
            f"metrics.inception_weights: {path} is not torch-fidelity's InceptionV3 ({reason})"
        ) from err


def inception_numerics(device: torch.device) -> dict[str, Any]:
    """What besides data and weights changes Inception features: device type and fp32 precision."""
    numerics = {
        "device_type": device.type,
        # "high"/"medium" let fp32 matmuls use TF32 on CUDA and bf16 via oneDNN on CPU
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device.type == "cuda":
        # Inception is mostly convolutions, whose TF32 use cuDNN's own flag (on by default) decides.
        numerics["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    return numerics


class ImageMetrics:
    """FID, IS and KID of [-1, 1] images on one shared InceptionV3.

    A plain object, not an nn.Module: nn.Module.__setattr__ registers only modules, parameters and
    buffers, so an ImageMetrics held as an attribute of a LightningModule stays out of its
    state_dict, parameters, `.to()` and DDP (move it with its own `to`). Pickling (ddp_spawn,
    deepcopy) drops the network; the copy reloads it from the weights file on first use.
    """

    def __init__(
        self,
        metrics: Sequence[MetricName] = METRIC_NAMES,
        inception_weights: str | None = None,
        kid_subset_size: int = 1000,
        kid_subsets: int = 100,
        is_splits: int = 10,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        download: bool = False,
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
        ]:
            if value < low:
                raise GenlabError(f"metrics.{key} must be >= {low}, got {value}")
        self.metrics = tuple(metrics)
        self.kid_subset_size = kid_subset_size
        self.kid_subsets = kid_subsets
        self.is_splits = is_splits
        self.batch_size = batch_size
        self.device = torch.device(device)
        # What the last compute() and features() really used, for protocol(): small sets shrink
        # KID subsets and IS splits, and settings may change between construction and the pass.
        self.used: dict[str, int] = {}
        self.pass_numerics: dict[str, Any] | None = None
        self.weights_path = _resolve_weights(inception_weights, download)
        self.weights_sha256 = file_sha256(self.weights_path)
        self._net: NoTrainInceptionV3 | None = _build_inception(self.weights_path).to(self.device)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the ~95 MB network."""
        return {**self.__dict__, "_net": None}

    @property
    def net(self) -> NoTrainInceptionV3:
        """The Inception network, reloaded after unpickling."""
        if self._net is None:
            self._net = _build_inception(self.weights_path).to(self.device)
        return self._net

    def to(self, device: str | torch.device) -> "ImageMetrics":
        """Move the network to `device`; returns self."""
        self.device = torch.device(device)
        if self._net is not None:
            self._net.to(self.device)
        return self

    @torch.inference_mode()
    def features(self, images: Tensor) -> dict[str, Tensor]:
        """Pool features {"pool": (B, 2048)} and logits {"logits": (B, 1008)}, float64, one pass."""
        pools, logits = [], []
        self.pass_numerics = inception_numerics(self.device)
        for batch in images.split(self.batch_size):
            x = to_uint8(batch.to(self.device))  # (b, 3, H, W)
            # Under a 16-mixed trainer the network would otherwise run in half precision.
            with torch.autocast(self.device.type, enabled=False):
                # forward() returns only the first feature; this gives both from one pass.
                pool, logit = self.net._torch_fidelity_forward(x)
            pools.append(pool.double())
            logits.append(logit.double())
        return {POOL: torch.cat(pools), LOGITS: torch.cat(logits)}

    def compute(
        self, real_pool: Tensor | None, fake_pool: Tensor | None, fake_logits: Tensor | None = None
    ) -> dict[str, float]:
        """The requested metrics plus n_real and n_fake from features of both sets."""
        out: dict[str, float] = {
            N_REAL: 0 if real_pool is None else len(real_pool),
            N_FAKE: len(fake_pool if fake_pool is not None else fake_logits),
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
        return out

    def reference_key(self, **data: Any) -> dict[str, Any]:
        """Cache key for real features: `data` (dataset, split, size, ...) plus the protocol.

        It holds the device type and precision in effect now, when the caller is about to run
        (or look up) the feature pass: features from TF32 or another device differ far beyond
        round-off, so they must not be mixed with fake features from this pass.
        """
        return {
            **data,
            "feature_layer": POOL_LAYER,
            "resize": RESIZE,
            "weights_sha256": self.weights_sha256,
            **inception_numerics(self.device),
        }

    def protocol(self) -> dict[str, Any]:
        """Everything that fixes the numbers, for metrics.json and run configs.

        After compute() the KID subset size and IS splits are the ones used (``*_requested``
        are the settings), and device and precision are those of the last feature pass.
        """
        return {
            "metrics": list(self.metrics),
            "torch": torch.__version__,
            "torchmetrics": torchmetrics.__version__,
            "torch_fidelity": torch_fidelity.__version__,
            "network": "torch-fidelity InceptionV3 (torchmetrics NoTrainInceptionV3)",
            "input": "uint8 RGB, rounded from [-1, 1]",
            "resize": RESIZE,
            "feature_layer": POOL_LAYER,
            "logits_layer": LOGITS_LAYER,
            "inception_weights": str(self.weights_path),
            "weights_sha256": self.weights_sha256,
            "kid_subset_size": self.used.get("kid_subset_size", self.kid_subset_size),
            "kid_subset_size_requested": self.kid_subset_size,
            "kid_subsets": self.kid_subsets,
            "kid_kernel": f"poly degree {KID_DEGREE}, gamma 1/D, coef 1",
            "is_splits": self.used.get("is_splits", self.is_splits),
            "is_splits_requested": self.is_splits,
            "seed": SEED,
            **(self.pass_numerics or inception_numerics(self.device)),
        }


def _reference_path(key: dict[str, Any], cache_dir: str | Path) -> tuple[Path, str]:
    text = json.dumps({**key, "genlab_cache_version": CACHE_VERSION}, sort_keys=True)
    return Path(cache_dir) / f"ref-{hashlib.sha256(text.encode()).hexdigest()[:32]}.pt", text


def load_reference(key: dict[str, Any], cache_dir: str | Path) -> Tensor | None:
    """Cached real pool features (N, D) for `key`, or None when absent, stale or unreadable."""
    path, text = _reference_path(key, cache_dir)
    if not path.exists():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if stored["key"] == text:
            return stored["pool"]
        warnings.warn(f"{path}: stored key differs from the one asked; recomputing", stacklevel=2)
    except Exception as err:  # truncated or garbage files raise many types
        reason = type(err).__name__
        warnings.warn(f"{path}: unreadable reference cache ({reason}); recomputing", stacklevel=2)
    return None


def store_reference(key: dict[str, Any], cache_dir: str | Path, pool: Tensor) -> Path:
    """Write real pool features for `key` atomically; returns the file."""
    path, text = _reference_path(key, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"key": text, "pool": pool.detach().double().cpu()}, path)
    return path


def reference_features(
    key: dict[str, Any], cache_dir: str | Path, compute: Callable[[], Tensor]
) -> Tensor:
    """Real pool features (N, D) for `key` from `cache_dir`, calling `compute` only on a miss.

    Args:
        key: JSON-able description of everything that changes the real features (dataset, split,
            image size, channels, number of images, feature layer, weights sha256, device type,
            fp32 precision settings).
        compute: returns the (N, D) features when the cache has none.
    """
    pool = load_reference(key, cache_dir)
    if pool is None:
        pool = compute().detach().double().cpu()  # (N, D)
        store_reference(key, cache_dir, pool)
    return pool
