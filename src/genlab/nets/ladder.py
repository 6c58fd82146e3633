"""Ladder VAE nets (Sønderby et al. 2016, "Ladder Variational Autoencoders"), fully connected.

Bottom up: d_l = MLP(d_{l-1}) from the flattened pixels d_0 = x, and from each d_l
the estimate mu_hat_l = Linear(d_l), sigma_hat_l^2 = Softplus(Linear(d_l)). Top down, the
generative path p(z_l | z_{l+1}) = N(mu_p, sigma_p^2) from MLP(z_{l+1}) the same way, and p(x | z1)
as Bernoulli logits from MLP(z1). The LadderVAE module (genlab.models.ladder) combines the two
passes by precision weighting, so inference shares the generative path.
Each MLP is Linear -> BatchNorm -> leaky ReLU, twice (the paper's MLPs, batch norm being one of
its three ingredients). ``latent_dims`` and ``hidden`` run bottom up: the paper's MNIST model
is [64, 32, 16, 8, 4] stochastic units with MLPs of [512, 256, 128, 64, 32].
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.errors import GenlabError
from genlab.nets.layers import check_args

# below this pre-activation, log Softplus(a) = a to float precision: taking it as a keeps the
# log-variance and its gradient finite where Softplus(a) underflows to 0
SOFTPLUS_LINEAR = -20.0


def log_softplus(a: Tensor) -> Tensor:
    """log Softplus(a), finite with a finite gradient for every a."""
    return torch.where(a > SOFTPLUS_LINEAR, F.softplus(a.clamp_min(SOFTPLUS_LINEAR)).log(), a)


def mlp(width_in: int, width: int, batch_norm: bool) -> nn.Sequential:
    """Two Linear -> BatchNorm -> leaky ReLU layers: (B, width_in) -> (B, width)."""
    layers: list[nn.Module] = []
    for n_in in (width_in, width):
        layers += [nn.Linear(n_in, width)]
        layers += [nn.BatchNorm1d(width)] if batch_norm else []
        layers += [nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


class GaussianHead(nn.Module):
    """(B, width) -> (mu, logvar), each (B, Z): a linear mean and Softplus variance."""

    def __init__(self, width: int, dim: int) -> None:
        super().__init__()
        self.mean, self.var = nn.Linear(width, dim), nn.Linear(width, dim)

    def forward(self, d: Tensor) -> tuple[Tensor, Tensor]:
        return self.mean(d), log_softplus(self.var(d))


class LadderNets(nn.Module):
    """The checked layer plan both nets share; ``role`` names the config key."""

    role = "model.encoder"

    def __init__(
        self,
        image_size: int,
        channels: int,
        latent_dims: Sequence[int] = (64, 32, 16, 8, 4),
        hidden: Sequence[int] = (512, 256, 128, 64, 32),
        batch_norm: bool = True,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        name, role = type(self).__name__, self.role
        check_args(name, role, image_size, channels, num_classes)
        dims, hidden = [int(d) for d in latent_dims], [int(h) for h in hidden]
        if len(dims) != len(hidden) or len(dims) < 2:
            raise GenlabError(
                f"{role}.latent_dims={dims} and {role}.hidden={hidden} need one width per "
                "stochastic layer, and 2 layers or more"
            )
        if min(dims + hidden) < 1:
            raise GenlabError(f"{role}.latent_dims and hidden: {dims}, {hidden} must all be >= 1")
        if num_classes:
            raise GenlabError(f"{role}.num_classes={num_classes}: {name} is unconditional")
        self.latent_dims, self.latent_dim, self.num_classes = dims, dims[0], 0
        self.shape = (channels, image_size, image_size)
        self.pixels, self.hidden, self.batch_norm = channels * image_size**2, hidden, batch_norm
        self.build()

    def build(self) -> None:
        raise NotImplementedError


class LadderEncoder(LadderNets):
    """The deterministic bottom-up pass: x -> [(mu_hat_l, logvar_hat_l)], z1's first."""

    role = "model.encoder"

    def build(self) -> None:
        widths = [self.pixels, *self.hidden]
        self.mlps = nn.ModuleList(
            mlp(w_in, w, self.batch_norm) for w_in, w in zip(widths, widths[1:], strict=False)
        )
        self.heads = nn.ModuleList(
            GaussianHead(w, z) for w, z in zip(self.hidden, self.latent_dims, strict=True)
        )

    def forward(self, x: Tensor, labels: Tensor | None = None) -> list[tuple[Tensor, Tensor]]:
        d, out = x.flatten(1), []
        for net, head in zip(self.mlps, self.heads, strict=True):
            d = net(d)  # (B, hidden_l)
            out.append(head(d))  # (B, Z_l) each
        return out


class LadderDecoder(LadderNets):
    """The generative path: ``top_down[l]`` gives p(z_l | z_{l+1}); ``forward(z1)`` the logits
    of p(x | z1), (B, C, H, W)."""

    role = "model.decoder"

    def build(self) -> None:
        dims, hidden = self.latent_dims, self.hidden
        self.top_down = nn.ModuleList(
            nn.Sequential(
                mlp(dims[i + 1], hidden[i], self.batch_norm), GaussianHead(hidden[i], dims[i])
            )
            for i in range(len(dims) - 1)
        )
        self.net = nn.Sequential(
            mlp(dims[0], hidden[0], self.batch_norm), nn.Linear(hidden[0], self.pixels)
        )

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.net(z).view(z.shape[0], *self.shape)  # (B, C, H, W) logits
