"""Inverse autoregressive flow posterior (Kingma et al. 2016, "Improved Variational Inference
with Inverse Autoregressive Flow").

Each step is the paper's numerically stable, LSTM-type update (eq. 10-12, Algorithm 1):
``[m, s] = AutoregressiveNN_t(z, h)``, ``sigma = sigmoid(s)``, ``z = sigma * z + (1 - sigma) * m``,
and ``log q(z_T | x) = -sum_i (eps_i^2 / 2 + log(2 pi) / 2 + sum_{t=0..T} log sigma_{t,i})``, with
sigma_0 the encoder's standard deviation. The autoregressive nets are MADEs (Germain et al. 2015)
that also take the context h, added to their first hidden layer unmasked, as the paper's
AutoregressiveNN does. The variable order is reversed between steps, as the paper's experiments.

The context: genlab's encoders give (mu, logvar) only, so h is a learned map of (mu, logvar)
(``IAF.context``). That keeps IAF usable with any encoder through the encoder contract, at the
price that the flow sees x only through this 2 Z summary; the paper takes h from the encoder's
last hidden layer.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# s starts near +1, so sigma near 0.73: each step at first moves z only slightly, as the paper
# advises ("outputs s_t ... sufficiently positive, such as close to +1 or +2")
FORGET_BIAS = 1.0


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (out, in)."""

    def __init__(self, in_features: int, out_features: int, mask: Tensor) -> None:
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.float())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Autoregressive (z, h) -> (m, s), each (B, D): output i sees z_1..z_{i-1} and h only.

    Degrees as in MADE: inputs 1..D; hidden units cycle through 0..D-1, a unit of degree k sees
    the inputs of degree <= k (degree 0: the context only); output i sees hidden degrees < i.
    """

    def __init__(self, dim: int, hidden: int, context_dim: int) -> None:
        super().__init__()
        inputs = torch.arange(1, dim + 1)  # (D,)
        units = torch.arange(hidden) % dim  # (H,)
        self.first = MaskedLinear(dim, hidden, units[:, None] >= inputs[None, :])
        self.context = nn.Linear(context_dim, hidden)
        self.second = MaskedLinear(hidden, hidden, units[:, None] >= units[None, :])
        out_mask = (inputs[:, None] > units[None, :]).repeat(2, 1)  # (2 D, H): m then s
        self.out = MaskedLinear(hidden, 2 * dim, out_mask)
        with torch.no_grad():
            self.out.bias[dim:].fill_(FORGET_BIAS)

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        a = F.elu(self.first(z) + self.context(h))  # (B, H)
        a = F.elu(self.second(a))
        m, s = self.out(a).chunk(2, dim=1)  # (B, D) each
        return m, s


class IAF(nn.Module):
    """q(z_T | x): a diagonal Gaussian from the encoder, then ``steps`` IAF steps.

    Args:
        dim: latent size Z.
        steps: IAF steps T (the paper's MNIST runs use 2 to 8).
        hidden: width of each MADE's two hidden layers and of the context h.
    """

    def __init__(self, dim: int, steps: int = 2, hidden: int = 128) -> None:
        super().__init__()
        self.dim = dim
        self.context = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ELU())
        self.steps = nn.ModuleList(MADE(dim, hidden, hidden) for _ in range(steps))

    def step(self, t: int, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """Step t on z (B, Z): the new z and sum_i log sigma_i (B,).

        Odd steps read the variables in reverse order (the paper's reversal between steps);
        z leaves every step in the original order, so the decoder sees one fixed order.
        """
        flip = t % 2 == 1
        if flip:
            z = z.flip(1)
        m, s = self.steps[t](z, h)
        sigma = torch.sigmoid(s)
        z = sigma * z + (1 - sigma) * m
        log_det = F.logsigmoid(s).sum(1)  # log sigma, stable for large |s|
        return (z.flip(1) if flip else z), log_det

    def forward(self, mu: Tensor, logvar: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """z_T (B, Z) from noise ``eps`` (B, Z), and log q(z_T | x) (B,) (the paper's eq. 12)."""
        h = self.context(torch.cat([mu, logvar], dim=1))  # (B, hidden)
        z = mu + (0.5 * logvar).exp() * eps  # z_0
        log_q = -(0.5 * eps**2 + 0.5 * math.log(2 * math.pi) + 0.5 * logvar).sum(1)
        for t in range(len(self.steps)):
            z, log_sigma = self.step(t, z, h)
            log_q = log_q - log_sigma
        return z, log_q
