"""The VampPrior (Tomczak & Welling 2018): a mixture of the posterior at K learned pseudo-inputs.

As in the authors' code (jmtomczak/vae_vampprior, models/Model.py ``add_pseudoinputs`` and
models/VAE.py ``log_p_z``): the pseudo-inputs are a bias-free linear map of the K one-hot
vectors (its weight columns) through hardtanh(0, 1), initialised N(mean, std); here the [0, 1]
pixels they give are mapped to genlab's [-1, 1]. log p(z) = logsumexp_k log q(z | u_k) - log K.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab import losses


def log_normal_mixture(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log (1/K) sum_k N(z; mu_k, exp(logvar_k)) per example (B,); z (B, Z), mu, logvar (K, Z)."""
    z = z.unsqueeze(1)  # (B, 1, Z) against (1, K, Z)
    log_k = -0.5 * (losses.LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar)).sum(2)  # (B, K)
    return torch.logsumexp(log_k, 1) - math.log(mu.shape[0])


class VampPrior(nn.Module):
    """K pseudo-inputs (K, C, H, W); the encoder that maps them is passed in, not held."""

    def __init__(
        self, components: int, shape: Sequence[int], init_mean: float, init_std: float
    ) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.means = nn.Linear(components, math.prod(self.shape), bias=False)  # weight (D, K)
        nn.init.normal_(self.means.weight, init_mean, init_std)

    def pseudo_inputs(self) -> Tensor:
        """The K pseudo-inputs as images in [-1, 1]: (K, C, H, W)."""
        # means(eye(K)) is the weight's transpose: the authors' "idle input" without the matmul
        u = F.hardtanh(self.means.weight.t(), 0.0, 1.0)  # (K, D) in [0, 1]
        return (u * 2 - 1).view(-1, *self.shape)

    def components(self, encoder: nn.Module) -> tuple[Tensor, Tensor]:
        """The mixture's means and log-variances, the posterior at each pseudo-input: (K, Z)."""
        return encoder(self.pseudo_inputs())

    def sample(self, n: int, encoder: nn.Module) -> Tensor:
        """``n`` draws (n, Z): a uniformly chosen component, then its Gaussian."""
        mu, logvar = self.components(encoder)
        k = torch.randint(len(mu), (n,), device=mu.device)
        return mu[k] + torch.randn_like(mu[k]) * (0.5 * logvar[k]).exp()
