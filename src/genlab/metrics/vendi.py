"""The Vendi score (Friedman & Dieng 2023): the effective number of distinct items in a set.

exp of the entropy of the eigenvalues of K / n, for an (n, n) similarity K with k(x, x) = 1:
1 when all items are the same, n when all are orthogonal. As their package ``vendi_score``
(``score_K``, ``score_dual``), the default similarity on features is the cosine, and with more
items than dimensions the eigenvalues come from the (D, D) matrix X^T X / n, which has the same
non-zero eigenvalues as X X^T / n. Order q != 1 gives the Renyi-entropy variants of Pasarkar &
Dieng (2023); q = inf is -log of the largest eigenvalue.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

VENDI = "vendi"


def vendi_from_eigenvalues(eigenvalues: Tensor, q: float = 1.0) -> float:
    """exp of the order-q entropy of (n,) eigenvalues summing to 1 (negative round-off dropped)."""
    p = eigenvalues.double()
    p = p[p > 0]  # eigvalsh returns round-off around 0 with either sign
    if q == 1:
        entropy = -(p * p.log()).sum()
    elif math.isinf(q):
        entropy = -p.max().log()
    else:
        entropy = p.pow(q).sum().log() / (1 - q)
    return float(entropy.exp())


def vendi_from_kernel(kernel: Tensor, q: float = 1.0) -> float:
    """Vendi score of an (n, n) symmetric similarity matrix with unit diagonal."""
    n = kernel.shape[0]
    if kernel.shape != (n, n) or not torch.allclose(kernel.diagonal(), kernel.new_ones(n)):
        raise ValueError("vendi_from_kernel needs a square similarity matrix with a unit diagonal")
    return vendi_from_eigenvalues(torch.linalg.eigvalsh(kernel.double() / n), q)


def vendi_from_features(features: Tensor, q: float = 1.0) -> float:
    """Vendi score of (N, D) features under the cosine similarity."""
    n = len(features)
    x = F.normalize(features.double(), dim=1)  # (N, D): k(a, b) = cos(a, b), k(a, a) = 1
    if n < 1 or x.norm(dim=1).min() < 0.5:
        raise ValueError("vendi_from_features needs at least one feature row, none of them zero")
    # N x N costs O(N^3); the D x D dual has the same non-zero spectrum
    gram = x.T @ x if x.shape[1] < n else x @ x.T
    return vendi_from_eigenvalues(torch.linalg.eigvalsh(gram / n), q)
