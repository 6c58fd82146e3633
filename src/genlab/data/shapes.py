"""dSprites-like shapes with known factors (Matthey et al. 2017), rendered from their definition.

Five factors, dSprites' grid: shape (square, ellipse, heart), scale (6 values in [0.5, 1]),
orientation (40 values in [0, 2 pi], both ends included as in dSprites), posX and posY (32 values
in [0, 1] each): 737,280 binary images. Nothing is stored: an image is drawn on access from its
index (mixed radix over the factors, the last factor fastest, as dSprites orders them), so the
whole grid costs no memory and every size renders the same geometry. The sprites are analytic
(a square, a 2:1 ellipse, the implicit heart (x^2 + y^2 - 1)^3 <= x^2 y^3), not dSprites' bitmaps;
like dSprites', the square's orientation repeats every 90 degrees and the ellipse's every 180.
"""

import math

import torch
from torch import Tensor
from torch.utils.data import Dataset

from genlab.data.datasets import Batch

FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
SHAPES = ("square", "ellipse", "heart")
HALF_SIZE = 0.16  # a sprite's half extent at scale 1, in image widths (20 px of 64)
MARGIN = 0.2  # pos 0 and 1 put the centre this far from the edges


def factor_values(sizes: tuple[int, ...] = FACTOR_SIZES) -> list[Tensor]:
    """Each factor's values: shape ids, scales, orientations (radians) and positions."""
    return [
        torch.arange(sizes[0], dtype=torch.float64),
        torch.linspace(0.5, 1.0, sizes[1], dtype=torch.float64),
        torch.linspace(0.0, 2 * math.pi, sizes[2], dtype=torch.float64),
        torch.linspace(0.0, 1.0, sizes[3], dtype=torch.float64),
        torch.linspace(0.0, 1.0, sizes[4], dtype=torch.float64),
    ]


def render(factors: Tensor, image_size: int, sizes: tuple[int, ...] = FACTOR_SIZES) -> Tensor:
    """Binary uint8 images (N, 1, S, S) in {0, 255} of factor indices (N, 5)."""
    values = factor_values(sizes)
    shape, scale, angle, px, py = (values[k][factors[:, k].long()] for k in range(5))  # (N,) each
    grid = (torch.arange(image_size, dtype=torch.float64) + 0.5) / image_size  # pixel centres
    cx = MARGIN + (1 - 2 * MARGIN) * px
    cy = MARGIN + (1 - 2 * MARGIN) * py
    dx = grid.view(1, 1, -1) - cx.view(-1, 1, 1)  # (N, 1, S)
    dy = grid.view(1, -1, 1) - cy.view(-1, 1, 1)  # (N, S, 1)
    r = (HALF_SIZE * scale).view(-1, 1, 1)
    cos, sin = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
    u = (cos * dx + sin * dy) / r  # (N, S, S) sprite coordinates, rotated by -angle
    v = (-sin * dx + cos * dy) / r
    square = torch.maximum(u.abs(), v.abs()) <= 0.8
    ellipse = u**2 + (v / 0.5) ** 2 <= 1
    hx, hy = 1.15 * u, 0.1 - 1.15 * v  # the heart points down: image rows grow downwards
    heart = (hx**2 + hy**2 - 1) ** 3 <= hx**2 * hy**3
    kind = shape.view(-1, 1, 1)
    inside = torch.where(kind == 0, square, torch.where(kind == 1, ellipse, heart))
    return (inside.to(torch.uint8) * 255).unsqueeze(1)


class Shapes(Dataset):
    """Every factor combination of the grid ``factor_sizes``, one image each, drawn on access.

    Items are ``(image, label)``: a float image in [-1, 1] (C, S, S) and its shape id. The factors
    of item i are ``factors[i]``; ``images_of(factors)`` draws any combination (the FactorVAE score
    fixes one factor and draws the rest).
    """

    factor_names = FACTOR_NAMES

    def __init__(
        self, image_size: int = 64, channels: int = 1, factor_sizes: tuple[int, ...] = FACTOR_SIZES
    ) -> None:
        self.image_size, self.channels = image_size, channels
        self.factor_sizes = tuple(int(k) for k in factor_sizes)
        # item i -> factors: mixed radix, the last factor fastest
        self.strides = torch.tensor(
            [math.prod(self.factor_sizes[k + 1 :]) for k in range(len(self.factor_sizes))]
        )
        self._factors: Tensor | None = None

    def __len__(self) -> int:
        return math.prod(self.factor_sizes)

    @property
    def factors(self) -> Tensor:
        """Every item's factor indices (N, K) int64 (built on first use: 29 MB at full size)."""
        if self._factors is None:
            self._factors = self.factors_of(torch.arange(len(self)))
        return self._factors

    def factors_of(self, indices: Tensor) -> Tensor:
        """Factor indices (B, K) of items ``indices`` (B,)."""
        return indices.long().view(-1, 1) // self.strides % torch.tensor(self.factor_sizes)

    def index_of(self, factors: Tensor) -> Tensor:
        """Items (B,) of factor indices (B, K)."""
        return (factors.long() * self.strides).sum(1)

    def images_of(self, factors: Tensor) -> Tensor:
        """Float images in [-1, 1] (B, C, S, S) of factor indices (B, K)."""
        images = render(factors, self.image_size, self.factor_sizes).float() / 127.5 - 1
        return images.expand(-1, self.channels, -1, -1).contiguous()

    def sample_factors(self, n: int, gen: torch.Generator) -> Tensor:
        """n uniform draws (n, K) from the factor grid."""
        return torch.stack([torch.randint(k, (n,), generator=gen) for k in self.factor_sizes], 1)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        factors = self.factors_of(torch.tensor([i]))
        return self.images_of(factors)[0], factors[0, 0]

    def __getitems__(self, indices: list[int]) -> Batch:
        """A batch drawn in one call (the DataLoader calls this instead of B ``__getitem__``)."""
        factors = self.factors_of(torch.as_tensor(indices))
        return Batch(self.images_of(factors), factors[:, 0].clone())
