"""Sample metrics: backbones (features per network and resize), pure metric functions, a cache.

Numbers agree with torch-fidelity's (FID, IS, KID, precision/recall) and prdc's (density,
coverage): same network and resize, same KID subsets and IS split order, same estimators.
"""

from genlab.metrics.cache import (
    CACHE_VERSION,
    load_reference,
    load_reference_entry,
    reference_features,
    store_reference,
)
from genlab.metrics.features import (
    RESIZES,
    MetricsUnavailable,
    clean_resize,
    file_sha256,
    inception_numerics,
    numerics,
    to_uint8,
)
from genlab.metrics.fid import feature_stats, fid_from_features, fid_from_stats, ifid_from_features
from genlab.metrics.image_metrics import ImageMetrics
from genlab.metrics.inception import (
    INCEPTION_SHA256,
    LOGITS,
    LOGITS_LAYER,
    POOL,
    POOL_LAYER,
    RESIZE,
    WEIGHTS_FILE,
)
from genlab.metrics.inception_score import inception_score_from_logits
from genlab.metrics.kid import KID_DEGREE, SEED, kid_from_features
from genlab.metrics.memorisation import COPIES, copies_fraction, copy_threshold
from genlab.metrics.names import (
    BACKBONES,
    FID,
    IFID,
    IS_MEAN,
    IS_STD,
    KID_MEAN,
    KID_STD,
    LABEL,
    METRIC_NAMES,
    MODE,
    N_FAKE,
    N_REAL,
    MetricName,
    ci_keys,
    fd_key,
)
from genlab.metrics.prdc import COVERAGE, DENSITY, PRECISION, RECALL, prdc_from_features

__all__ = [
    "BACKBONES", "CACHE_VERSION", "COPIES", "COVERAGE", "DENSITY", "FID", "IFID",
    "INCEPTION_SHA256", "IS_MEAN", "IS_STD", "KID_DEGREE", "KID_MEAN", "KID_STD", "LABEL",
    "LOGITS", "LOGITS_LAYER", "METRIC_NAMES", "MODE", "N_FAKE", "N_REAL",
    "POOL", "POOL_LAYER", "PRECISION", "RECALL", "RESIZE", "RESIZES", "SEED", "WEIGHTS_FILE",
    "ImageMetrics", "MetricName", "MetricsUnavailable", "ci_keys", "clean_resize", "fd_key",
    "copies_fraction", "copy_threshold", "feature_stats", "fid_from_features", "fid_from_stats",
    "file_sha256", "ifid_from_features", "inception_numerics", "inception_score_from_logits",
    "kid_from_features", "load_reference", "load_reference_entry", "numerics",
    "prdc_from_features", "reference_features", "store_reference", "to_uint8",
]  # fmt: skip
