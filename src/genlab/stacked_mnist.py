"""Stacked MNIST (Metz et al. 2017; VEEGAN, PacGAN): three MNIST-5k digits as R, G and B."""

import torch
from torch import Tensor

from genlab.errors import GenlabError

NUM_MODES = 1000
DEFAULT_SIZE = 25_600


def stacked_mnist(digits: Tensor, labels: Tensor, size: int, seed: int) -> tuple[Tensor, Tensor]:
    """``size`` images uint8 (size, 3, 28, 28) whose channels are independently drawn digits.

    Args:
        digits: uint8 (N, 1, 28, 28) MNIST digits and their labels (N,).
        seed: the draw depends on it and on ``size`` only.

    Returns:
        The images and their mode 100 * red digit + 10 * green digit + blue digit (size,).
    """
    if size < 1:
        raise GenlabError(f"data.stacked_size={size} must be >= 1")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(digits), (size, 3), generator=gen)  # (size, 3) digit per channel
    images = digits[idx, 0]  # (size, 3, 28, 28)
    modes = labels[idx] @ torch.tensor([100, 10, 1])
    return images.contiguous(), modes.long()
