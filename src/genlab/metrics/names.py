"""The sample metrics' names: what ``metrics.metrics`` may list, the result keys each one writes,
and what each interval covers. Imports nothing, so configs and logging code can read it cheaply.

A Frechet distance is ``fid`` on Inception only and ``fd_<backbone>`` on any other network
(``fd_dinov2``), as dgm-eval names them; its interval, jackknife centre and FD_inf follow it.
"""

MetricName = str  # one of METRIC_NAMES
METRIC_NAMES = (
    "fid", "fid_inf", "is", "kid", "prdc", "copies", "ct", "authenticity", "ifid", "modes",
    "vendi", "cmmd", "ppl",
)  # fmt: skip
BACKBONES = ("inception", "dinov2", "clip", "classifier")  # classifier: Fashion-MNIST CNN
# metrics that compare with the real reference features
FEATURE_METRICS = {"fid", "fid_inf", "kid", "prdc", "copies", "ct", "authenticity", "ifid", "cmmd"}
# metrics that also read held-out real features (metrics.heldout_split)
HELDOUT_METRICS = {"copies", "ct", "authenticity"}

FID = "fid"  # the Frechet distance on Inception; fd_<backbone> on the others
N_REAL, N_FAKE = "n_real", "n_fake"
IS_MEAN, IS_STD, KID_MEAN, KID_STD = "is_mean", "is_std", "kid_mean", "kid_std"
KID_ALL_PAIRS = "kid_all_pairs"  # the all-pairs MMD^2 at the centre of KID's interval
IFID = "ifid"
# feature keys of the one pass: the class each image was drawn for (iFID), its Stacked MNIST mode
LABEL, MODE = "label", "mode"

# What each interval covers, for metrics.json and the README (checked by simulation against
# closed-form truths: experiments/intervals/).
COVERS = {
    "fd": "the population Frechet distance of the two feature distributions (the plug-in value "
    "at finite N sits above it; the centre is its jackknife bias-corrected estimate)",
    "kid": "the population MMD^2 under KID's kernel (centre: the all-pairs unbiased estimate)",
}
# Why precision and recall get no interval (one log line when intervals are on).
NO_PR_INTERVAL = (
    "metrics.jackknife: no interval for precision and recall: leaving out a group moves every "
    "k-NN radius, so each leave-out costs a k-NN pass, and the jackknife overstates their spread "
    "(coverage 1.00 where 0.95 is asked, experiments/intervals/README.md)"
)


def fd_key(backbone: str) -> str:
    """The Frechet distance's result key: ``fid`` on Inception only, ``fd_<backbone>`` else."""
    return FID if backbone == "inception" else f"fd_{backbone}"


def ci_keys(name: str) -> tuple[str, str]:
    """The result keys of a metric's 95% interval."""
    return f"{name}_ci_low", f"{name}_ci_high"


def result_keys(metric: str, backbone: str = "inception", intervals: bool = False) -> list[str]:
    """The result keys ``metric`` writes on ``backbone`` (with its intervals if ``intervals``)."""
    fd = fd_key(backbone)
    keys = {
        "fid": [fd],
        "fid_inf": [f"{fd}_inf"],
        "is": [IS_MEAN, IS_STD],
        "kid": [KID_MEAN, KID_STD],
        "prdc": ["precision", "recall", "density", "coverage"],
        "copies": ["copies", "copies_floor", "copies_excess", "copies_excess_se"],
        "ct": ["ct"],
        "authenticity": ["authenticity", "authenticity_heldout"],
        "ifid": [IFID],
        "modes": ["modes", "mode_kl", "modes_calibrated", "mode_kl_calibrated"],
        "vendi": ["vendi"],
        "cmmd": ["cmmd"],
        "ppl": ["ppl"],  # of the generator itself, not of features (genlab.metrics.ppl)
    }[metric]
    if intervals and metric == "fid":
        keys += [f"{fd}_jackknife", *ci_keys(fd)]
    if intervals and metric == "kid":
        keys += [KID_ALL_PAIRS, *ci_keys("kid")]
    return keys


def every_result_key() -> dict[str, str]:
    """Every result key any configuration can write -> the metric that writes it."""
    return {
        key: metric
        for backbone in BACKBONES
        for metric in METRIC_NAMES
        for key in result_keys(metric, backbone, intervals=True)
    }
