"""Convolutional VAE encoder and decoder for 28, 32 and 64 pixel images.

No BatchNorm: a per-example likelihood (ELBO, importance-weighted NLL) must not depend on the
other images in the batch. Class-conditional nets read one-hot labels, concatenated to the
flattened conv features (encoder) or to z (decoder).
"""

from torch import Tensor, nn

from genlab.nets.layers import CONV_PLAN, check_args, require_labels, with_labels

SIZES = tuple(CONV_PLAN)


class ConvEncoder(nn.Module):
    """Strided convs (4x4, stride 2, ReLU) then a linear layer to the posterior (mu, logvar).

    28 px: 28 -> 14 -> 7; 32 px: 32 -> ... -> 4; 64 px: 64 -> ... -> 4. Channels start at
    ``base_channels`` and double at each halving.
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        latent_dim: int,
        num_classes: int = 0,
        base_channels: int = 32,
    ) -> None:
        super().__init__()
        check_args(
            type(self).__name__,
            "model.encoder",
            image_size,
            channels,
            num_classes,
            SIZES,
            latent_dim=latent_dim,
            base_channels=base_channels,
        )
        self.latent_dim, self.num_classes = latent_dim, num_classes
        start, halvings = CONV_PLAN[image_size]
        layers: list[nn.Module] = []
        width_in, width = channels, base_channels
        for _ in range(halvings):
            layers += [nn.Conv2d(width_in, width, 4, 2, 1), nn.ReLU()]
            width_in, width = width, width * 2
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.posterior = nn.Linear(width_in * start * start + num_classes, 2 * latent_dim)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        require_labels(type(self).__name__, self.num_classes, labels)
        h = self.features(x)  # (B, F)
        h = with_labels(h, labels, self.num_classes)  # (B, F + K)
        mu, logvar = self.posterior(h).chunk(2, dim=1)  # (B, Z) each
        return mu, logvar


class ConvDecoder(nn.Module):
    """Linear layer to a small feature map, then transposed convs up to (B, C, H, W).

    The output is unbounded: the VAE module reads it as Bernoulli logits or Gaussian means.
    """

    def __init__(
        self,
        latent_dim: int,
        image_size: int,
        channels: int,
        num_classes: int = 0,
        base_channels: int = 32,
    ) -> None:
        super().__init__()
        check_args(
            type(self).__name__,
            "model.decoder",
            image_size,
            channels,
            num_classes,
            SIZES,
            latent_dim=latent_dim,
            base_channels=base_channels,
        )
        self.latent_dim, self.num_classes = latent_dim, num_classes
        start, doublings = CONV_PLAN[image_size]
        width = base_channels * 2 ** (doublings - 1)
        self.start = (width, start, start)
        self.linear = nn.Sequential(
            nn.Linear(latent_dim + num_classes, width * start**2), nn.ReLU()
        )
        layers: list[nn.Module] = []
        for _ in range(doublings - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1), nn.ReLU()]
            width //= 2
        layers.append(nn.ConvTranspose2d(width, channels, 4, 2, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        require_labels(type(self).__name__, self.num_classes, labels)
        h = with_labels(z, labels, self.num_classes)  # (B, Z + K)
        h = self.linear(h).view(z.shape[0], *self.start)  # (B, width, start, start)
        return self.net(h)  # (B, C, H, W)
