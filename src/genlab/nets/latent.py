"""FactorVAE's discriminator on latent codes (Kim & Mnih 2018, Appendix, Table 1)."""

from torch import Tensor, nn

from genlab.errors import GenlabError


class LatentDiscriminator(nn.Module):
    """``depth`` LeakyReLU(0.2) layers of width ``hidden`` on z (B, Z), then 2 logits (B, 2).

    The paper's: 6 linear layers, 5 of 1000 units and the 2-logit output (also pythae's
    FactorVAEDiscriminator). Logit 0 scores "a draw of q(z)", logit 1 "dimension-permuted".
    """

    def __init__(self, latent_dim: int, hidden: int = 1000, depth: int = 5) -> None:
        super().__init__()
        for key, value in (("latent_dim", latent_dim), ("hidden", hidden), ("depth", depth)):
            if value < 1:
                raise GenlabError(f"model.discriminator.{key}={value} must be >= 1")
        layers: list[nn.Module] = []
        width = latent_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, 2))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)  # (B, 2)
