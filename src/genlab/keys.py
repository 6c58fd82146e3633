"""The names genlab logs under, and which way is better for each metric: one list for the best
checkpoint, sweeps, the W&B summary and genlab-compare. Imports nothing, so genlab-compare can
read it without Lightning."""

# Larger is better; every other monitored key is minimised.
MAXIMISED = frozenset(
    {"val/elbo", "val/is", "train/elbo", "train/iwae_bound", "val/precision", "val/recall",
     "val/density", "val/coverage", "val/modes", "val/modes_calibrated", "val/authenticity",
     "val/authenticity_heldout", "val/vendi", "val/active_units", "val/mig",
     "val/factor_vae_score"}
)  # fmt: skip
# Keys whose minimum the W&B summary keeps next to their last value (distances, likelihood
# losses, copies); the maximised keys keep their maximum.
SUMMARY_MIN = (
    "val/fid", "val/swd", "val/kid", "val/nll", "val/nll_bpd", "val/mse", "val/recon", "val/ifid",
    "val/copies", "val/copies_floor", "val/copies_excess", "val/mode_kl",
    "val/mode_kl_calibrated", "val/kid_all_pairs", "val/cmmd", "val/ppl",
    *(f"val/{fd}{part}" for fd in ("fid", "fd_dinov2", "fd_clip", "fd_classifier")
      for part in ("", "_inf", "_jackknife")),
)  # fmt: skip
# Keys with no better direction, summarised by their last value: C_T is best at 0 (below:
# copying, above: underfitting), a standard error is a spread.
UNRANKED = ("val/ct", "val/copies_excess_se")

# The axes every logged row carries (genlab.callbacks.axes), W&B's x axis being images seen.
IMAGES_SEEN = "trainer/images_seen"
G_STEPS = "trainer/g_steps"
TRAIN_TIME = "trainer/time"
# genlab-compare --x choice -> logged column
X_AXES = {
    "images_seen": IMAGES_SEEN,
    "g_steps": G_STEPS,
    "step": "step",
    "epoch": "epoch",
    "time": TRAIN_TIME,
}
