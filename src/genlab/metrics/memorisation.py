"""Memorisation: how many samples sit closer to a training image than training images do."""

import torch
from torch import Tensor

from genlab.metrics.knn import DEFAULT_BLOCK, knn_radii, nearest

COPIES = "copies"
COPY_QUANTILE = 0.01  # the train-train 1st percentile of nearest-neighbour distances


def copy_threshold(train: Tensor, block: int = DEFAULT_BLOCK) -> float:
    """The 1st percentile of each (N, D) training feature's distance to its nearest other one."""
    return threshold_of(knn_radii(train, {1}, block)[1].sqrt())


def threshold_of(train_to_train: Tensor) -> float:
    """The 1st percentile of training images' (N,) nearest-other-image distances."""
    return float(torch.quantile(train_to_train, COPY_QUANTILE))


def copies_from_distances(sample_to_train: Tensor, train_to_train: Tensor) -> float:
    """Fraction of samples (M,) nearer to a training image than the threshold."""
    return float((sample_to_train < threshold_of(train_to_train)).double().mean())


def copies_fraction(train: Tensor, samples: Tensor, block: int = DEFAULT_BLOCK) -> float:
    """Fraction of (M, D) samples nearer to some training feature than ``copy_threshold``."""
    dist, _ = nearest(samples, train, block)
    return float((dist < copy_threshold(train, block)).double().mean())
