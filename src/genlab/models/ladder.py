"""Ladder VAE (Sønderby et al. 2016): top-down inference that shares the generative path.

The encoder's deterministic bottom-up pass gives (mu_hat_l, sigma_hat_l) for every layer; the top
layer's posterior is its estimate, q(z_L | x) = N(mu_hat_L, sigma_hat_L^2). Going down, the
generative path's p(z_l | z_l+1) = N(mu_p, sigma_p^2) at the drawn z_l+1 is precision-weighted
with the estimate into q(z_l | z_l+1, x). The KL of each layer is the one-draw
log q(z_l | .) - log p(z_l | z_l+1), so recon + kl is -log_weights(x, 1) of the same draw and
val/nll is the exact importance-weighted estimate.

Training adds KL warm-up (the paper's temperature beta from 0 to 1 over ``kl_warmup_steps``,
or one ramp per layer, ``layer_warmup_steps``) and free bits (Kingma et al. 2016, IAF paper,
appendix: each layer's batch-mean KL enters the objective as max(free_bits, KL_l), in nats per
layer, a layer being the paper's group of latents).
"""

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from genlab import losses
from genlab.errors import GenlabError
from genlab.models.diagnostics import LayerTerms
from genlab.models.vae import VAE, Likelihood, OptimizerFactory, reparameterize

Pair = tuple[Tensor, Tensor]


def precision_weighted(
    mu_hat: Tensor, logvar_hat: Tensor, mu_p: Tensor, logvar_p: Tensor
) -> tuple[Tensor, Tensor]:
    """The Gaussian with precision sigma_hat^-2 + sigma_p^-2 and the precision-weighted mean.

    mu = (mu_hat sigma_hat^-2 + mu_p sigma_p^-2) / (sigma_hat^-2 + sigma_p^-2), in log space.
    """
    logvar = -torch.logaddexp(-logvar_hat, -logvar_p)  # (B, Z)
    mu = mu_hat * (logvar - logvar_hat).exp() + mu_p * (logvar - logvar_p).exp()
    return mu, logvar


class LadderVAE(VAE):
    """Ladder VAE over ``encoder`` (LadderEncoder) and ``decoder`` (LadderDecoder).

    Args:
        free_bits: lambda of free bits, nats per stochastic layer (0: off).
        layer_warmup_steps: one KL warm-up length per layer, bottom up (null: kl_warmup_steps
            for every layer, as the paper).
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        likelihood: Likelihood = "bernoulli",
        gaussian_std: float | None = None,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        iwae_k: int = 1,
        nll_k: int = 8,
        binarized: bool = False,
        nonfinite: Literal["stop", "skip", "off"] = "stop",
        num_grid: int = 64,
        free_bits: float = 0.0,
        layer_warmup_steps: Sequence[int] | None = None,
    ) -> None:
        if free_bits < 0:
            raise GenlabError(f"model.free_bits={free_bits} must be >= 0 (nats per layer)")
        layers = len(getattr(encoder, "latent_dims", ()))
        if layer_warmup_steps is not None:
            layer_warmup_steps = [int(n) for n in layer_warmup_steps]
            if len(layer_warmup_steps) != layers or min(layer_warmup_steps) < 0:
                raise GenlabError(
                    f"model.layer_warmup_steps={layer_warmup_steps} needs {layers} steps >= 0, "
                    "one per stochastic layer (or null)"
                )
        if iwae_k > 1 and (free_bits or layer_warmup_steps):
            raise GenlabError(
                f"model.free_bits and model.layer_warmup_steps change the ELBO's KL terms, which "
                f"the IWAE bound (model.iwae_k={iwae_k}) does not have: set them to 0 and null"
            )
        if not (hasattr(encoder, "mlps") and hasattr(decoder, "top_down")):
            raise GenlabError(
                "model=ladder_vae needs model.encoder=genlab.nets.ladder.LadderEncoder and "
                f"model.decoder=genlab.nets.ladder.LadderDecoder, got {type(encoder).__name__} "
                f"and {type(decoder).__name__}"
            )
        super().__init__(
            encoder, decoder, optimizer, scheduler, likelihood, gaussian_std, beta,
            kl_warmup_steps, iwae_k, nll_k, binarized, nonfinite, num_grid,
        )  # fmt: skip

    @property
    def analytic_kl(self) -> bool:
        return False

    def top_down(self, ups: list[Pair], draw: bool = True) -> tuple[list[Tensor], list, list]:
        """z_l per layer, z1 first, with log q(z_l | .) and log p(z_l | z_l+1) (B,) each.

        ``ups``: the bottom-up (mu_hat, logvar_hat) per layer. ``draw=False``: the mean path,
        each z_l the mean of its q given the means above (the log densities there are unused).
        """
        mu, logvar = ups[-1]  # q(z_L | x): the bottom-up estimate alone
        z = reparameterize(mu, logvar) if draw else mu
        zs, log_q, log_p = [z], [losses.log_normal(z, mu, logvar)], [losses.log_standard_normal(z)]
        for up, layer in zip(ups[-2::-1], reversed(self.decoder.top_down), strict=True):
            prior = layer(z)  # (mu_p, logvar_p) of p(z_l | z_l+1), (B, Z_l) each
            mu, logvar = precision_weighted(*up, *prior)
            z = reparameterize(mu, logvar) if draw else mu
            zs.append(z)
            log_q.append(losses.log_normal(z, mu, logvar))
            log_p.append(losses.log_normal(z, *prior))
        return zs[::-1], log_q[::-1], log_p[::-1]

    def elbo_terms(self, x: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        """Recon, KL (B,) and each layer's KL ``kl_layers`` (L, B), one top-down draw."""
        zs, log_q, log_p = self.top_down(self.encoder(x))
        kl_layers = torch.stack(log_q) - torch.stack(log_p)  # (L, B)
        recon = self.nll(self.decoder(zs[0]), x)
        return {"recon": recon, "kl": kl_layers.sum(0), "kl_layers": kl_layers}

    def log_weights(self, x: Tensor, k: int, labels: Tensor | None = None) -> Tensor:
        """log p(x | z1) + sum_l log p(z_l | z_l+1) + log p(z_L) - log q(z | x): (k, B)."""
        ups = self.encoder(x)  # shared by the k draws
        out = []
        for _ in range(k):
            zs, log_q, log_p = self.top_down(ups)
            out.append(-self.nll(self.decoder(zs[0]), x) + sum(log_p) - sum(log_q))
        return torch.stack(out)

    def layer_kl_weights(self) -> Tensor:
        """Each layer's KL weight (L,): beta ramped from 0 over its warm-up steps."""
        hp = self.hparams
        steps = hp.layer_warmup_steps or [hp.kl_warmup_steps] * len(self.encoder.latent_dims)
        ramp = [min(1.0, self.global_step / n) if n else 1.0 for n in steps]
        return hp.beta * torch.tensor(ramp, device=self.device)

    def training_loss(self, terms: dict[str, Tensor]) -> Tensor:
        """Recon + sum_l w_l max(free_bits, KL_l), each KL_l a batch mean (free bits per layer)."""
        kl = terms["kl_layers"].mean(1).clamp_min(self.hparams.free_bits)  # (L,)
        return terms["recon"].mean() + (self.layer_kl_weights() * kl).sum()

    def prior_draw(self, n: int) -> Tensor:
        """z1 (n, Z1): z_L ~ N(0, I), then each p(z_l | z_l+1) down the generative path."""
        z = torch.randn(n, self.top_dim, device=self.device)
        for layer in reversed(self.decoder.top_down):
            z = reparameterize(*layer(z))
        return z

    def reconstruct(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Decode z1 of the mean path (every layer at its posterior mean)."""
        return self.decode_mean(self.top_down(self.encoder(x), draw=False)[0][0])

    def diagnostic_terms(self, x: Tensor, labels: Tensor | None = None) -> list[LayerTerms]:
        """Per layer: the mean path's z_l, no per-dim KL (p(z_l | z_l+1) is no N(0, I)), KL_l."""
        ups = self.encoder(x)  # one bottom-up pass serves the mean path and the draw
        means = self.top_down(ups, draw=False)[0]
        _, log_q, log_p = self.top_down(ups)
        return [(m, None, q - p) for m, q, p in zip(means, log_q, log_p, strict=True)]
