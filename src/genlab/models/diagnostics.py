"""A VAE's latent diagnostics over an epoch: active units, KL per layer and per dimension.

The model gives, per validation batch and stochastic layer, the posterior means (B, Z), the KL
per dimension (B, Z) where it has a closed form, and the KL (B,). ``LatentMoments`` keeps their
sums, which add up across batches and (reduced by sum) across DDP processes, so the numbers are
the whole validation set's.
"""

from collections.abc import Callable

import torch
from torch import Tensor

# Burda et al. 2016 (IWAE paper): unit u is active when Cov_x(E_q(u|x)[u]) > 0.01
ACTIVE_THRESHOLD = 0.01
# per-dimension KL is logged dimension by dimension up to this many latents, else summarised
KL_DIMS_LOGGED = 16

# per layer: posterior means (B, Z), KL per dim (B, Z) or None, KL (B,)
LayerTerms = tuple[Tensor, Tensor | None, Tensor]


class LatentMoments:
    """Per layer, summed over batches: [n, sum KL, sum mean, sum mean^2, sum KL per dim]."""

    def __init__(self) -> None:
        self.sums: list[Tensor] = []
        self.has_dims: list[bool] = []  # per layer: whether the KL per dim has a closed form

    def add(self, terms: list[LayerTerms]) -> None:
        """Add one batch's terms, one entry per stochastic layer, bottom up."""
        if not self.sums:
            self.has_dims = [dims is not None for _, dims, _ in terms]
        for layer, (mean, dims, kl) in enumerate(terms):
            mean = mean.double()  # sums of squares over an epoch: float64 keeps the variance exact
            dims = torch.zeros_like(mean) if dims is None else dims.double()
            n = torch.stack([mean.new_tensor(float(len(mean))), kl.double().sum()])
            packed = torch.cat([n, mean.sum(0), (mean**2).sum(0), dims.sum(0)])  # (2 + 3 Z,)
            if len(self.sums) <= layer:
                self.sums.append(packed)
            else:
                self.sums[layer] = self.sums[layer] + packed

    def summary(self, reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
        """Active units, KL per layer and per dimension; ``reduce`` sums over processes.

        val/active_units counts every layer's (Burda et al. 2016: Cov_x(E_q[u | x]) > 0.01),
        val/active_units_l<l> each layer's in a hierarchy; val/kl_l<l> is layer l's mean KL.
        Per-dimension KL (one Gaussian layer only): val/kl_dim_max and val/kl_dim_min, and each
        val/kl_dim<i> (i from 0) when Z <= 16, as a per-epoch curve per dimension is noise
        beyond that.
        """
        out, total = {}, 0
        for layer, packed in enumerate(self.sums, start=1):
            if reduce is not None:
                packed = reduce(packed)
            n, kl = packed[0], packed[1]
            z = (len(packed) - 2) // 3
            s1, s2, dims = packed[2 : 2 + z], packed[2 + z : 2 + 2 * z], packed[2 + 2 * z :]
            cov = s2 / n - (s1 / n) ** 2  # (Z,) variance over x of the posterior mean
            active = int((cov > ACTIVE_THRESHOLD).sum())
            total += active
            if len(self.sums) > 1:
                out[f"val/active_units_l{layer}"] = float(active)
            out[f"val/kl_l{layer}"] = float(kl / n)
            if self.has_dims[layer - 1]:
                per_dim = dims / n
                out["val/kl_dim_max"], out["val/kl_dim_min"] = (
                    float(per_dim.max()),
                    float(per_dim.min()),
                )
                if z <= KL_DIMS_LOGGED:
                    out.update({f"val/kl_dim{i}": float(v) for i, v in enumerate(per_dim)})
        if self.sums:
            out["val/active_units"] = float(total)
        return out
