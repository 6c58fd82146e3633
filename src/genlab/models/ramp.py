"""Training values ramped from a start to an end over a number of images (R3GAN's schedules).

A ramp is a pure function of the images seen, which the GAN checkpoints: a resumed run
continues on the same values.
"""

import math
from collections.abc import Mapping
from typing import Literal

from genlab.errors import GenlabError, check_choice

RampShape = Literal["cosine", "linear"]
# What a ramp may drive; ema_half_life is in images, as R3GAN's ema_nimg; ada_p is ADA's p
# (R3GAN's aug_scheduler)
RAMPED = ("lr", "beta2", "r1_gamma", "r2_gamma", "ema_half_life", "ada_p")


def ramp_value(start: float, end: float, images: float, length: float, shape: RampShape) -> float:
    """The value after ``images`` of a ramp of ``length`` images; ``end`` from then on.

    cosine is R3GAN's ``cosine_decay_with_warmup`` without warm-up or hold:
    start + (1 - (1 + cos(pi t / T)) / 2) (end - start).
    """
    t = min(images / length, 1.0)
    frac = (1 - math.cos(math.pi * t)) / 2 if shape == "cosine" else t
    return start + frac * (end - start)


class Ramp:
    """The ``model.ramp`` block: ``images`` (length), ``shape`` and ``name: [start, end]`` pairs."""

    def __init__(self, config: Mapping | None) -> None:
        config = dict(config or {})
        self.length = config.pop("images", None)
        self.shape = config.pop("shape", "cosine")
        self.values: dict[str, tuple[float, float]] = {}
        for name, pair in config.items():
            if pair is None:
                continue
            if name not in RAMPED:
                known = ", ".join(("images", "shape", *RAMPED))
                raise GenlabError(f"model.ramp.{name}: not a ramped value (use {known})")
            if len(pair) != 2:
                raise GenlabError(f"model.ramp.{name}={list(pair)} must be [start, end]")
            self.values[name] = (float(pair[0]), float(pair[1]))
        check_choice("model.ramp.shape", self.shape, RampShape.__args__)
        if self.values and not (isinstance(self.length, (int, float)) and self.length > 0):
            raise GenlabError(f"model.ramp.images={self.length} must be > 0 (the ramps' length)")

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def at(self, images: float) -> dict[str, float]:
        """Every ramped value after ``images`` images."""
        return {
            name: ramp_value(start, end, images, self.length, self.shape)
            for name, (start, end) in self.values.items()
        }
