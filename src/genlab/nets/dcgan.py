"""DCGAN generator and discriminator (Radford et al. 2016) for 28, 32 and 64 pixel images.

The layout is the paper's; the widths are genlab's, set by ``base_channels``: its default 64 gives
the 64 px generator 512-256-128-64 channels (PyTorch's DCGAN example, ngf=64), while the paper's
LSUN generator (its Fig. 1) is 1024-512-256-128, i.e. ``base_channels=128``. The discriminator
leaves out the paper's BatchNorm (see DCGANDiscriminator).
"""

from torch import Tensor, nn

from genlab.nets.layers import (
    CONV_PLAN,
    ProjectionHead,
    apply_spectral_norm,
    check_args,
    require_labels,
    with_labels,
)

SIZES = tuple(CONV_PLAN)


def dcgan_init(net: nn.Module) -> None:
    """DCGAN init: conv/linear weights ~ N(0, 0.02), BN gains ~ N(1, 0.02), biases 0."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """Transposed-conv generator with BatchNorm and ReLU; one-hot labels join z if conditional.

    28 px: 7 -> 14 -> 28; 32 px: 4 -> 8 -> 16 -> 32; 64 px: 4 -> ... -> 64. Channels halve at
    each doubling and end at ``base_channels`` before the last, tanh, layer.
    """

    def __init__(
        self,
        latent_dim: int,
        image_size: int,
        channels: int,
        num_classes: int = 0,
        base_channels: int = 64,
        init: bool = True,
    ) -> None:
        super().__init__()
        check_args(
            type(self).__name__,
            "model.generator",
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
        # A full-size kernel on a 1x1 input is a dense layer to (width, start, start).
        # Convs feeding BatchNorm have no bias: BN would cancel it and its gradient is 0.
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim + num_classes, width, start, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        ]
        for _ in range(doublings - 1):
            layers += [
                nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(),
            ]
            width //= 2
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        if init:
            dcgan_init(self)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        require_labels(type(self).__name__, self.num_classes, labels)
        h = with_labels(z, labels, self.num_classes)  # (B, Z + K)
        return self.net(h[:, :, None, None])  # (B, C, H, W)


class DCGANDiscriminator(nn.Module):
    """Strided-conv discriminator with LeakyReLU(0.2) and a projection head; no BatchNorm.

    BatchNorm is left out so that gradient penalties (WGAN-GP, R1) and spectral norm are valid
    and a logit depends on its own image only.
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        num_classes: int = 0,
        spectral_norm: bool = False,
        base_channels: int = 64,
        init: bool = True,
    ) -> None:
        super().__init__()
        check_args(
            type(self).__name__,
            "model.discriminator",
            image_size,
            channels,
            num_classes,
            SIZES,
            base_channels=base_channels,
        )
        self.num_classes = num_classes
        start, doublings = CONV_PLAN[image_size]
        layers: list[nn.Module] = [nn.Conv2d(channels, base_channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = base_channels
        for _ in range(doublings - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1), nn.LeakyReLU(0.2)]
            width *= 2
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = ProjectionHead(width * start * start, num_classes)
        if init:
            dcgan_init(self.features)
            dcgan_init(self.head.linear)
        if spectral_norm:
            apply_spectral_norm(self)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        require_labels(type(self).__name__, self.num_classes, labels)
        h = self.features(x)  # (B, width * start * start)
        return self.head(h, labels)  # (B,)
