"""Inception Score from unbiased InceptionV3 logits (Salimans et al. 2016)."""

import warnings

import numpy as np
import torch
from torch import Tensor

from genlab.errors import GenlabWarning
from genlab.metrics.kid import SEED


def inception_score_from_logits(
    logits: Tensor, splits: int = 10, seed: int = SEED
) -> tuple[float, float]:
    """Inception Score mean and std over `splits` chunks of (N, 1008) unbiased logits."""
    n = len(logits)
    if splits > n:
        warnings.warn(
            f"IS with {splits} splits of {n} samples: using {n} splits", GenlabWarning, stacklevel=2
        )
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
