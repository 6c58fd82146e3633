"""Precision/recall (Kynkaanniemi et al. 2019) and density/coverage (Naeem et al. 2020).

k-NN manifolds in feature space: a point lies in a set's manifold when it is within the distance
from some member of the set to that member's k-th nearest neighbour in the set. Precision and
recall use ``<=`` as torch-fidelity 0.4's ``prc`` does, density and coverage ``<`` as the
reference ``prdc`` package (clovaai) does; with continuous features the two differ only on ties.
"""

from typing import NamedTuple

import torch
from torch import Tensor

from genlab.metrics.knn import DEFAULT_BLOCK, knn_radii, row_blocks, sq_dists

PRECISION = "precision"
RECALL = "recall"
DENSITY = "density"
COVERAGE = "coverage"


class PRDC(NamedTuple):
    """The four numbers and, per sample, what memorisation reads."""

    precision: float
    recall: float
    density: float
    coverage: float
    fake_in_real: Tensor  # (M,) bool: fake j inside the real manifold (precision)
    real_in_fake: Tensor  # (N,) bool: real i inside the fake manifold (recall)
    fake_to_real: Tensor  # (M,) distance of fake j to its nearest real image (memorisation)
    real_to_real: Tensor  # (N,) distance of real i to its nearest other real image

    def values(self) -> dict[str, float]:
        """The four metrics by result key."""
        return {
            PRECISION: self.precision,
            RECALL: self.recall,
            DENSITY: self.density,
            COVERAGE: self.coverage,
        }


def prdc_from_features(
    real: Tensor,
    fake: Tensor,
    k_pr: int = 3,
    k_dc: int = 5,
    block: int = DEFAULT_BLOCK,
) -> PRDC:
    """Precision, recall (k = k_pr) and density, coverage (k = k_dc) of (M, D) fake vs (N, D) real.

    One blocked pass for each set's radii and one over (block, M) real-fake distance blocks,
    which also gives each fake image's nearest real one (the memorisation check reads it).

    Args:
        block: rows of every distance block; memory is block x max(N, M) float64.
    """
    real, fake = real.double(), fake.double()
    radii_real = knn_radii(real, {1, k_pr, k_dc}, block)  # squared distances
    radius_fake = knn_radii(fake, {k_pr}, block)[k_pr][None]  # (1, M)
    fake_in_real = torch.zeros(len(fake), dtype=torch.bool, device=fake.device)
    density_count = torch.zeros(len(fake), dtype=torch.float64, device=fake.device)
    fake_to_real = torch.full((len(fake),), torch.inf, dtype=torch.float64, device=fake.device)
    real_in_fake, covered = [], []
    for start, rows in row_blocks(real, block):
        d = sq_dists(rows, fake)  # (b, M)
        r_pr = radii_real[k_pr][start : start + len(rows), None]  # (b, 1)
        r_dc = radii_real[k_dc][start : start + len(rows), None]
        fake_in_real |= (d <= r_pr).any(0)
        density_count += (d < r_dc).sum(0)
        fake_to_real = torch.minimum(fake_to_real, d.min(0).values)
        real_in_fake.append((d <= radius_fake).any(1))  # inside some fake image's ball
        covered.append(d.min(1).values < r_dc[:, 0])
    real_in_fake = torch.cat(real_in_fake)
    return PRDC(
        precision=float(fake_in_real.double().mean()),
        recall=float(real_in_fake.double().mean()),
        density=float(density_count.mean() / k_dc),
        coverage=float(torch.cat(covered).double().mean()),
        fake_in_real=fake_in_real,
        real_in_fake=real_in_fake,
        fake_to_real=fake_to_real.sqrt(),
        real_to_real=radii_real[1].sqrt(),
    )
