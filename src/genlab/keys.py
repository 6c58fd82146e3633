"""Which way is better for each metric key: one list for the best checkpoint, sweeps, the W&B
summary and genlab-compare. Imports nothing, so genlab-compare can read it without Lightning."""

# Larger is better; every other monitored key is minimised.
MAXIMISED = frozenset(
    {"val/elbo", "val/is", "train/elbo", "train/iwae_bound", "val/precision", "val/recall",
     "val/density", "val/coverage", "val/modes"}
)  # fmt: skip
# Keys whose minimum the W&B summary keeps next to their last value (distances, likelihood
# losses, copies); the maximised keys keep their maximum.
SUMMARY_MIN = ("val/fid", "val/swd", "val/kid", "val/nll", "val/nll_bpd", "val/mse", "val/recon",
               "val/ifid", "val/copies", "val/mode_kl")  # fmt: skip
