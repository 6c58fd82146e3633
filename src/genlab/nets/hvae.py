"""Fully connected VAE nets with a stack of Gaussian stochastic layers (Burda et al. 2016).

The IWAE paper's two-stochastic-layer MNIST model, as in the authors' code (yburda/iwae,
experiments.py, ``--layers 2``): q(z1 | x) and q(z2 | z1), p(z1 | z2) and p(x | z1), each
through two tanh layers, 200 units between x and z1 and 100 between z1 and z2; z1 has 100 units,
z2 50; p(z2) = N(0, I). Each Gaussian gives its mean and sigma = exp(linear), and every linear
layer starts Glorot-uniform with zero bias, as theirs, but one: with ``output_bias=data_logodds``
(the default) p(x | z1)'s output bias starts at the log-odds of the training images' mean, clipped
to [0.001, 0.999], as theirs (datasets.py, ``get_train_bias_np``): the VAE module calls
``init_output_bias`` at fit start, the data being unknown when the net is built.

``latent_dim`` is z1, ``upper_dims`` the layers above it, bottom up; ``hidden[l]`` is the width
of the two tanh layers below stochastic layer l. ``upper_dims=[]`` is the one-layer IWAE model.
The VAE module reads ``encoder.upper`` (q(z_{l+1} | z_l)) and ``decoder.priors``
(p(z_l | z_{l+1})); the encoder's own output is q(z1 | x), the decoder's the logits of p(x | z1).
"""

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from genlab.errors import GenlabError, check_choice
from genlab.nets.layers import check_args

OutputBias = Literal["data_logodds", "zero"]
MEAN_CLIP = 1e-3  # the authors clip the mean pixel to [0.001, 0.999] before the log-odds


def data_logodds(mean: Tensor) -> Tensor:
    """log(m / (1 - m)) of mean pixels ``m`` in [0, 1], m clipped to [0.001, 0.999] first."""
    return torch.logit(mean, eps=MEAN_CLIP)


def glorot(module: nn.Module) -> nn.Module:
    """Glorot-uniform weights and zero biases for every linear layer (the authors' init)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return module


def tanh_mlp(width_in: int, hidden: int) -> nn.Sequential:
    """Two tanh layers of ``hidden`` units: (B, width_in) -> (B, hidden)."""
    return nn.Sequential(
        nn.Linear(width_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
    )


class GaussianLayer(nn.Module):
    """A diagonal Gaussian given (B, in_features): (mu, logvar), each (B, out_features)."""

    def __init__(self, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__()
        self.net = tanh_mlp(in_features, hidden)
        self.mean = nn.Linear(hidden, out_features)
        self.log_sigma = nn.Linear(hidden, out_features)
        glorot(self)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        h = self.net(h)  # (B, hidden)
        return self.mean(h), 2 * self.log_sigma(h)  # sigma = exp(linear), as the authors'


class StochasticLayers(nn.Module):
    """The checked layer plan both nets share: ``latent_dims`` [z1, ...] and the widths between.

    Subclasses name their config key in ``role`` and make their layers in ``build``.
    """

    role = "model.encoder"

    def __init__(
        self,
        image_size: int,
        channels: int,
        latent_dim: int = 100,
        upper_dims: Sequence[int] = (50,),
        hidden: Sequence[int] = (200, 100),
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        name, role = type(self).__name__, self.role
        check_args(name, role, image_size, channels, num_classes)
        dims = [int(latent_dim), *(int(d) for d in upper_dims)]
        if len(dims) != len(hidden):
            raise GenlabError(
                f"{role}.hidden={list(hidden)} needs one width per stochastic layer: "
                f"{len(dims)} (latent_dim and upper_dims={dims[1:]}) for {name}"
            )
        for key, values in (("latent_dim and upper_dims", dims), ("hidden", hidden)):
            if min(values) < 1:
                raise GenlabError(f"{role}.{key}: {list(values)} must all be >= 1")
        if num_classes:
            raise GenlabError(f"{role}.num_classes={num_classes}: {name} is unconditional")
        self.latent_dims, self.latent_dim, self.num_classes = dims, dims[0], 0
        self.shape = (channels, image_size, image_size)
        self.pixels, self.hidden = channels * image_size**2, [int(h) for h in hidden]
        # (z_l, width between, z_l+1) for each pair of neighbouring stochastic layers
        self.build(list(zip(dims, self.hidden[1:], dims[1:], strict=False)))

    def build(self, steps: list[tuple[int, int, int]]) -> None:
        raise NotImplementedError


class HierarchicalEncoder(StochasticLayers):
    """q(z1 | x) from flattened pixels, then q(z_{l+1} | z_l) in ``upper``; unconditional."""

    role = "model.encoder"

    def build(self, steps: list[tuple[int, int, int]]) -> None:
        self.first = GaussianLayer(self.pixels, self.hidden[0], self.latent_dim)
        self.upper = nn.ModuleList(GaussianLayer(z, h, above) for z, h, above in steps)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.first(x.flatten(1))  # (B, Z1) each


class HierarchicalDecoder(StochasticLayers):
    """p(x | z1) as Bernoulli logits (B, C, H, W); p(z_l | z_{l+1}) in ``priors``.

    Args:
        output_bias: ``data_logodds``: the logits' bias starts at the training data's log-odds
            (set by ``init_output_bias`` at fit start, as the IWAE authors'); ``zero``: stays 0.
    """

    role = "model.decoder"

    def __init__(
        self,
        image_size: int,
        channels: int,
        latent_dim: int = 100,
        upper_dims: Sequence[int] = (50,),
        hidden: Sequence[int] = (200, 100),
        num_classes: int = 0,
        output_bias: OutputBias = "data_logodds",
    ) -> None:
        check_choice("model.decoder.output_bias", output_bias, OutputBias.__args__)
        super().__init__(image_size, channels, latent_dim, upper_dims, hidden, num_classes)
        self.output_bias = output_bias

    def build(self, steps: list[tuple[int, int, int]]) -> None:
        # priors[l] maps z_{l+1} to p(z_l | z_{l+1}), through the widths between the two layers
        self.priors = nn.ModuleList(GaussianLayer(above, h, z) for z, h, above in steps)
        layers = [tanh_mlp(self.latent_dim, self.hidden[0]), nn.Linear(self.hidden[0], self.pixels)]
        self.net = glorot(nn.Sequential(*layers))

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.net(z).view(z.shape[0], *self.shape)  # (B, C, H, W) logits

    @torch.no_grad()
    def init_output_bias(self, mean: Tensor) -> None:
        """Set the logits' bias to ``data_logodds(mean)``; ``mean``: (C, H, W) pixels in [0, 1]."""
        if tuple(mean.shape) != self.shape:
            raise GenlabError(
                f"the training images' mean is {tuple(mean.shape)}, but model.decoder makes "
                f"{self.shape} images"
            )
        bias = self.net[-1].bias  # (C * H * W,), in the order forward's view reads it
        bias.copy_(data_logodds(mean.flatten().to(bias)))
