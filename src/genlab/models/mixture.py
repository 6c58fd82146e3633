"""A Gaussian mixture with full covariances fitted by EM, as scikit-learn's GaussianMixture.

k-means++ seeding and Lloyd's steps for the first responsibilities, then EM in float64 with
``reg_covar`` on each covariance's diagonal, stopping when the mean log-likelihood per point
moves less than ``tol`` (sklearn.mixture.GaussianMixture's defaults, which pythae's
GaussianMixtureSampler keeps). genlab.models.samplers fits one on a VAE's posterior means.
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

# sklearn.mixture.GaussianMixture's and sklearn.cluster.KMeans' defaults, which pythae keeps
KMEANS_ITER, KMEANS_TOL = 300, 1e-4


@dataclass
class Mixture:
    """A Gaussian mixture with full covariances: weights (K,), means (K, D), covariances
    (K, D, D)."""

    weights: Tensor
    means: Tensor
    covariances: Tensor

    def component_log_prob(self, x: Tensor) -> Tensor:
        """log w_k + log N(x | mu_k, S_k) for every point and component: (N, K)."""
        chol = torch.linalg.cholesky(self.covariances)  # (K, D, D)
        diff = (x[None] - self.means[:, None]).transpose(1, 2)  # (K, D, N)
        y = torch.linalg.solve_triangular(chol, diff, upper=False)  # (K, D, N)
        half_log_det = chol.diagonal(dim1=1, dim2=2).log().sum(-1)  # (K,)
        d = x.shape[1]
        log_n = -0.5 * (d * math.log(2 * math.pi) + y.square().sum(1)) - half_log_det[:, None]
        return (log_n + self.weights.log()[:, None]).T  # (N, K)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) per point: (N,)."""
        return torch.logsumexp(self.component_log_prob(x), dim=1)

    def sample(self, n: int, device: torch.device | None = None) -> Tensor:
        """``n`` draws (n, D) from the global RNG of ``device``: a component, then its Gaussian."""
        device = device or self.means.device
        weights, means, covariances = (t.to(device) for t in self.tensors())
        k = torch.multinomial(weights, n, replacement=True)  # (n,)
        eps = torch.randn(n, means.shape[1], 1, device=device, dtype=means.dtype)
        chol = torch.linalg.cholesky(covariances)  # (K, D, D)
        return means[k] + (chol[k] @ eps).squeeze(-1)

    def mean(self) -> Tensor:
        """The mixture's mean (D,)."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """The mixture's covariance (D, D): E[cov | k] + cov of the component means."""
        m = self.mean()
        second = self.covariances + self.means[:, :, None] * self.means[:, None, :]  # (K, D, D)
        return (self.weights[:, None, None] * second).sum(0) - m[:, None] * m[None, :]

    def tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.weights, self.means, self.covariances


def kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007, sklearn's): centres (k, D).

    Each new centre is the best of 2 + log k candidates drawn with probability proportional
    to the squared distance to the nearest centre so far.
    """
    n = len(x)
    trials = 2 + int(math.log(k))
    centres = [x[torch.randint(n, (1,), generator=generator).item()]]
    closest = (x - centres[0]).square().sum(1)  # (N,)
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than centres: any point will do
            candidates = torch.randint(n, (trials,), generator=generator)
        else:
            candidates = torch.multinomial(closest / total, trials, replacement=True,
                                           generator=generator)  # fmt: skip
        dist = torch.cdist(x[candidates], x).square()  # (T, N)
        pot = torch.minimum(closest[None], dist)  # (T, N)
        best = pot.sum(1).argmin()
        centres.append(x[candidates[best]])
        closest = pot[best]
    return torch.stack(centres)


def kmeans_labels(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Lloyd's k-means from a k-means++ start, sklearn's stopping rule: labels (N,)."""
    centres = kmeans_plus_plus(x, k, generator)
    tol = KMEANS_TOL * x.var(0, unbiased=False).mean()  # sklearn scales tol by the data
    labels = torch.cdist(x, centres).argmin(1)
    for _ in range(KMEANS_ITER):
        counts = torch.bincount(labels, minlength=k).to(x.dtype)  # (K,)
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        moved = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
        shift = (moved - centres).square().sum()
        centres = moved
        labels = torch.cdist(x, centres).argmin(1)
        if shift <= tol:
            break
    return labels


def m_step(x: Tensor, resp: Tensor, reg_covar: float) -> Mixture:
    """The mixture that maximises the expected log-likelihood under responsibilities (N, K)."""
    nk = resp.sum(0) + 10 * torch.finfo(resp.dtype).eps  # (K,) sklearn's guard against 0
    means = resp.T @ x / nk[:, None]  # (K, D)
    diff = x[None] - means[:, None]  # (K, N, D)
    cov = (resp.T[:, :, None] * diff).transpose(1, 2) @ diff / nk[:, None, None]  # (K, D, D)
    cov = cov + reg_covar * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    return Mixture(nk / nk.sum(), means, cov)


@dataclass
class EMResult:
    mixture: Mixture
    iterations: int
    converged: bool
    lower_bound: float  # mean log-likelihood per point of the last E-step


def fit_mixture(
    x: Tensor,
    components: int,
    max_iter: int = 2000,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    seed: int = 0,
    init: Mixture | None = None,
) -> EMResult:
    """EM for a full-covariance Gaussian mixture on points (N, D), in float64, as
    sklearn.mixture.GaussianMixture does it: a k-means start (hard responsibilities, one
    M-step), then E and M steps until the mean log-likelihood moves by less than ``tol``.
    ``init`` replaces the k-means start (to follow sklearn from the same parameters)."""
    x = x.double()
    if init is None:
        g = torch.Generator().manual_seed(seed)
        labels = kmeans_labels(x.cpu(), components, g).to(x.device)
        resp = nn.functional.one_hot(labels, components).to(x.dtype)  # (N, K)
        mixture = m_step(x, resp, reg_covar)
    else:
        mixture = Mixture(*(t.to(x.device, torch.float64) for t in init.tensors()))
    lower_bound, converged, iterations = -math.inf, False, 0
    for it in range(1, max_iter + 1):
        previous, iterations = lower_bound, it
        joint = mixture.component_log_prob(x)  # (N, K)
        norm = torch.logsumexp(joint, 1, keepdim=True)  # (N, 1)
        mixture = m_step(x, (joint - norm).exp(), reg_covar)
        lower_bound = norm.mean().item()
        if abs(lower_bound - previous) < tol:
            converged = True
            break
    return EMResult(mixture, iterations, converged, lower_bound)
