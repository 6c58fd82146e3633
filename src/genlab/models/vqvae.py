"""The VQ-VAE LightningModule (van den Oord et al. 2017): encoder, vector quantiser, decoder."""

import math
from collections.abc import Callable
from typing import Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from genlab import losses
from genlab.config import check_optimizer
from genlab.errors import GenlabError, check_choice
from genlab.models.loop import NONFINITE, finite_or_skip, logs_written
from genlab.models.vae import reconstruction_rows
from genlab.rng import seeded

OptimizerFactory = Callable[..., torch.optim.Optimizer]
Likelihood = Literal["gaussian", "discretized_gaussian"]
# which quantiser term beta weighs: the paper's commitment, or the codebook term as
# taming-transformers' VectorQuantizer2(legacy=True), its default, does
BetaOn = Literal["commitment", "codebook"]
GRID_SEED = 0  # the grid's code draws: the same each epoch, training RNG untouched


def code_counts(codes: Tensor, num_codes: int) -> Tensor:
    """How often each of the K codes occurs in ``codes`` (any shape): (K,) float."""
    return torch.bincount(codes.flatten(), minlength=num_codes).float()


def perplexity(counts: Tensor) -> Tensor:
    """exp(entropy) of code frequencies ``counts`` (K,): K for uniform use, 1 for one code."""
    p = counts / counts.sum()
    return torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum())


def vq_loss(t: dict[str, Tensor], beta: float, beta_on: BetaOn) -> Tensor:
    """The quantiser's loss per example (B,) from its ``commitment`` and ``codebook_loss``.

    ``beta_on="commitment"`` (the paper): beta ||z - sg(e)||^2 + ||sg(z) - e||^2;
    ``"codebook"`` (taming's legacy=True): ||z - sg(e)||^2 + beta ||sg(z) - e||^2.
    """
    if beta_on == "commitment":
        return beta * t["commitment"] + t["codebook_loss"]
    return t["commitment"] + beta * t["codebook_loss"]


def sample_grids(model: pl.LightningModule) -> dict[str, Tensor]:
    """``num_grid`` samples drawn under a fixed seed; ``_grid_batch`` above its reconstructions."""
    with seeded(GRID_SEED, model.device):
        images = {"samples": model.sample(model.hparams.num_grid)}
    if model._grid_batch is not None and len(model._grid_batch) >= 8:
        x = model._grid_batch.to(model.device)
        images["reconstructions"] = reconstruction_rows(model, x, torch.zeros(len(x)), nrow=8)
    return images


class VQVAE(pl.LightningModule):
    """``encoder(x) -> z`` (B, D, h, w), nearest codes, ``decoder(codes) -> means`` (B, C, H, W).

    Loss per example: -log p(x | z_q) per pixel dimension + ``vq_loss`` (beta on the commitment,
    or on the codebook loss with ``beta_on="codebook"``; the codebook loss is zero unless
    ``quantizer.codebook="loss"``), the terms averaged over their elements as in sonnet's
    example. p(x | z_q) is a Gaussian (a density) or a discretised Gaussian (8-bit
    bins) with a fixed ``gaussian_std`` or one learned scale. ``val/nll_bpd`` (discretised
    only) is the bound with the uniform prior over codes, -log p(x | z_q) + h * w * log K;
    ``model=vq_prior`` replaces log K by a learned prior.
    """

    default_monitor = "val/mse"
    fallback_monitor = "val/mse"
    # what post-hoc EMA averages (VQGAN: its discriminator is left out)
    sampling_state = ("encoder.", "quantizer.", "decoder.", "log_std")

    def __init__(
        self,
        encoder: nn.Module,
        quantizer: nn.Module,
        decoder: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        likelihood: Likelihood = "gaussian",
        gaussian_std: float | None = None,
        beta: float = 0.25,
        beta_on: BetaOn = "commitment",
        nonfinite: Literal["stop", "skip", "off"] = "stop",
        num_grid: int = 64,
    ) -> None:
        super().__init__()
        check_choice("model.likelihood", likelihood, Likelihood.__args__)
        check_choice("model.beta_on", beta_on, BetaOn.__args__)
        check_choice("model.nonfinite", nonfinite, NONFINITE)
        if not (beta >= 0 and (gaussian_std is None or gaussian_std > 0)):
            raise GenlabError(
                f"model.beta={beta} must be >= 0 and model.gaussian_std={gaussian_std} > 0 "
                "(or null: learned)"
            )
        if encoder.embedding_dim != quantizer.embedding_dim:
            raise GenlabError(
                f"model.encoder.embedding_dim={encoder.embedding_dim} but "
                f"model.quantizer.embedding_dim={quantizer.embedding_dim}"
            )
        # Lightning reads the init arguments of every subclass frame too: VQGAN's discriminator
        # and optimizer_d would be saved (and warned about) here otherwise
        self.save_hyperparameters(
            ignore=["encoder", "quantizer", "decoder", "optimizer", "scheduler"]
            + ["discriminator", "optimizer_d"],
            logger=False,
        )
        self.encoder, self.quantizer, self.decoder = encoder, quantizer, decoder
        check_optimizer(optimizer, "model.optimizer")
        self.optimizer, self.scheduler = optimizer, scheduler
        self.num_classes = 0
        self.latent_dim = None  # discrete codes: no continuous latent to interpolate
        self.grid: tuple[int, int] = (encoder.grid, encoder.grid)
        self.log_std = nn.Parameter(torch.zeros(())) if gaussian_std is None else None
        self._grid_batch: Tensor | None = None
        self._val_counts: Tensor | None = None

    def configure_optimizers(self):
        optimizer = self.optimizer(p for p in self.parameters() if p.requires_grad)
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler(optimizer)}

    def networks(self) -> list[nn.Module]:
        """The networks a speed-up (compile, channels-last) applies to."""
        return [self.encoder, self.decoder]

    def _log_std(self) -> Tensor | float:
        return self.log_std if self.log_std is not None else math.log(self.hparams.gaussian_std)

    def encode(self, x: Tensor) -> dict[str, Tensor]:
        """The encoder's vectors ``z`` and the quantiser's outputs (see ``VectorQuantizer``)."""
        z = self.encoder(x)
        return {"z": z, **self.quantizer(z)}

    def decode_codes(self, codes: Tensor) -> Tensor:
        """Mean images (B, C, H, W) in [-1, 1] of code grids (B, h, w)."""
        return self.decoder(self.quantizer.lookup(codes)).clamp(-1, 1)

    def nll(self, out: Tensor, x: Tensor) -> Tensor:
        """-log p(x | z_q) per example (B,) in nats, from decoder output ``out``."""
        if self.hparams.likelihood == "discretized_gaussian":
            return losses.discretized_gaussian_nll(out, x, self._log_std())
        return losses.gaussian_nll(out, x, self._log_std())

    def code_bits(self) -> float:
        """-log of the uniform prior of one code grid, in nats: h * w * log K."""
        return self.grid[0] * self.grid[1] * math.log(self.quantizer.num_codes)

    def sample(self, n: int, labels: Tensor | None = None) -> Tensor:
        """Decode ``n`` grids of uniformly drawn codes (B, C, H, W); ``model=vq_prior`` learns
        the prior that makes these images."""
        k = self.quantizer.num_codes
        return self.decode_codes(torch.randint(k, (n, *self.grid), device=self.device))

    def reconstruct(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Decode the nearest codes of ``x``."""
        return self.decoder(self.encode(x)["quantized"]).clamp(-1, 1)

    def terms(self, x: Tensor) -> dict[str, Tensor]:
        """Per-example (B,) recon NLL (nats), commitment and codebook loss; codes; outputs."""
        enc = self.encode(x)
        out = self.decoder(enc["quantized"])
        return {**enc, "out": out, "recon": self.nll(out, x)}

    def objective(self, t: dict[str, Tensor], x: Tensor) -> Tensor:
        """The training loss (a scalar) from ``terms``."""
        per_dim = t["recon"] / x[0].numel()
        return (per_dim + vq_loss(t, self.hparams.beta, self.hparams.beta_on)).mean()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        x, _ = batch
        t = self.terms(x)
        loss = self.objective(t, x)
        if not finite_or_skip(self, loss, "train/loss", self.hparams.nonfinite):
            return None  # Lightning skips backward and the step
        self.quantizer.update(t["z"], t["codes"])
        if logs_written(self.trainer):
            self._log_train(t, loss)
        return loss

    def _log_train(self, t: dict[str, Tensor], loss: Tensor) -> None:
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/recon", t["recon"].mean())
        self.log("train/commitment", t["commitment"].mean())
        self.log("train/perplexity", perplexity(code_counts(t["codes"], self.quantizer.num_codes)))

    def on_validation_epoch_start(self) -> None:
        self._val_counts = torch.zeros(self.quantizer.num_codes, device=self.device)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, _ = batch
        if batch_idx == 0 and self._grid_batch is None:
            self._grid_batch = x[:32].clone()
        t = self.terms(x)
        self._val_counts += code_counts(t["codes"], self.quantizer.num_codes)
        kw = {"sync_dist": True, "batch_size": len(x)}
        self.log("val/recon", t["recon"].mean(), **kw)
        self.log("val/commitment", t["commitment"].mean(), **kw)
        self.log("val/loss", self.objective(t, x), **kw)
        mse = ((t["out"].clamp(-1, 1) - x) ** 2).mean()
        self.log("val/mse", mse, prog_bar=True, **kw)
        if self.hparams.likelihood == "discretized_gaussian":
            bpd = (t["recon"] + self.code_bits()).mean() / (x[0].numel() * math.log(2))
            self.log("val/nll_bpd", bpd, **kw)

    def on_validation_epoch_end(self) -> None:
        counts = self.trainer.strategy.reduce(self._val_counts, reduce_op="sum")
        if counts.sum() == 0:
            return
        # over the whole validation set: one batch sees too few vectors to use every code
        self.log("val/perplexity", perplexity(counts))
        self.log("val/codes_used", (counts > 0).sum().float())

    def grid_images(self) -> dict[str, Tensor]:
        """Samples (seeded); validation inputs above their reconstructions."""
        return sample_grids(self)
