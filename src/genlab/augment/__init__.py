"""Differentiable augmentations of the images a discriminator sees: DiffAugment and ADA."""

from genlab.augment.ada import ADA
from genlab.augment.diffaugment import (
    OPS,
    brightness,
    contrast,
    cutout,
    diff_augment,
    parse_policy,
    saturation,
    translation,
)

__all__ = [
    "ADA",
    "OPS",
    "brightness",
    "contrast",
    "cutout",
    "diff_augment",
    "parse_policy",
    "saturation",
    "translation",
]
