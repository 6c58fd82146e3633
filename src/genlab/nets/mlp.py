"""Fully connected generator and discriminator for any image size (small data, quick tests)."""

from torch import Tensor, nn

from genlab.nets.layers import (
    ProjectionHead,
    apply_spectral_norm,
    check_args,
    require_labels,
    with_labels,
)


class MLPGenerator(nn.Module):
    """``depth`` ReLU layers of width ``hidden``, then a tanh layer to C*H*W pixels.

    A class-conditional generator reads one-hot labels concatenated to z.
    """

    def __init__(
        self,
        latent_dim: int,
        image_size: int,
        channels: int,
        num_classes: int = 0,
        hidden: int = 256,
        depth: int = 2,
    ) -> None:
        super().__init__()
        check_args(
            type(self).__name__,
            "model.generator",
            image_size,
            channels,
            num_classes,
            latent_dim=latent_dim,
            hidden=hidden,
            depth=depth,
        )
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.shape = (channels, image_size, image_size)
        layers: list[nn.Module] = []
        width = latent_dim + num_classes
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers += [nn.Linear(width, channels * image_size * image_size), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        require_labels(type(self).__name__, self.num_classes, labels)
        h = with_labels(z, labels, self.num_classes)  # (B, Z + K)
        return self.net(h).view(z.shape[0], *self.shape)  # (B, C, H, W)


class MLPDiscriminator(nn.Module):
    """``depth`` LeakyReLU(0.2) layers of width ``hidden`` on flattened pixels; projection head."""

    def __init__(
        self,
        image_size: int,
        channels: int,
        num_classes: int = 0,
        spectral_norm: bool = False,
        hidden: int = 256,
        depth: int = 2,
    ) -> None:
        super().__init__()
        check_args(
            type(self).__name__,
            "model.discriminator",
            image_size,
            channels,
            num_classes,
            hidden=hidden,
            depth=depth,
        )
        self.num_classes = num_classes
        layers: list[nn.Module] = [nn.Flatten()]
        width = channels * image_size * image_size
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
            width = hidden
        self.features = nn.Sequential(*layers)
        self.head = ProjectionHead(hidden, num_classes)
        if spectral_norm:
            apply_spectral_norm(self)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        require_labels(type(self).__name__, self.num_classes, labels)
        return self.head(self.features(x), labels)  # (B,)
