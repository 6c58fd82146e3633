"""A learned autoregressive prior over a frozen VQ-VAE's codes: the VQ-VAE's second stage."""

import math
from collections.abc import Callable
from typing import Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.checkpoints import load_model
from genlab.config import check_optimizer
from genlab.errors import GenlabError, check_choice
from genlab.models.loop import NONFINITE, finite_or_skip, logs_written
from genlab.models.vqvae import VQVAE, sample_grids

OptimizerFactory = Callable[..., torch.optim.Optimizer]


def load_vqvae(path: str) -> VQVAE:
    """The trained VQ-VAE (or VQGAN) of checkpoint ``path``, frozen, or a one-line error."""
    key = "model.vqvae_ckpt"
    if not path:
        raise GenlabError(f"{key} is not set: pass a VQ-VAE run's checkpoints/last.ckpt")
    _, model = load_model(str(path), key=key)
    if not isinstance(model, VQVAE):
        raise GenlabError(f"{key}={path}: saved by {type(model).__name__}, not a VQ-VAE")
    return model.requires_grad_(False).eval()


class VQPrior(pl.LightningModule):
    """Trains ``prior(num_codes=K)`` (logits (B, K, h, w) of code grids) on a frozen VQ-VAE.

    ``sample`` draws code grids from the prior and decodes them with the VQ-VAE's decoder.
    ``val/prior_nll`` is -log p(codes) per image in nats; with a discretised decoder,
    ``val/nll_bpd`` is the pair's bits/dim as in the VQ-VAE paper: (-log p(codes of x)
    - log p(x | z_q)) / (number of subpixels * ln 2).
    """

    default_monitor = "val/prior_nll"
    fallback_monitor = "val/prior_nll"
    sampling_state = ("prior.",)  # what post-hoc EMA averages; the VQ-VAE is frozen

    def __init__(
        self,
        prior: Callable[..., nn.Module],
        optimizer: OptimizerFactory,
        vqvae_ckpt: str | None = None,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        temperature: float = 1.0,
        nonfinite: Literal["stop", "skip", "off"] = "stop",
        num_grid: int = 64,
    ) -> None:
        super().__init__()
        check_choice("model.nonfinite", nonfinite, NONFINITE)
        if not temperature > 0:
            raise GenlabError(f"model.temperature={temperature} must be > 0")
        self.save_hyperparameters(ignore=["prior", "optimizer", "scheduler"], logger=False)
        self.vqvae = load_vqvae(vqvae_ckpt)
        self.prior = prior(num_codes=self.vqvae.quantizer.num_codes)
        check_optimizer(optimizer, "model.optimizer")
        self.optimizer, self.scheduler = optimizer, scheduler
        self.num_classes, self.latent_dim = 0, None
        self.grid = self.vqvae.grid
        self._grid_batch: Tensor | None = None

    def train(self, mode: bool = True) -> "VQPrior":
        super().train(mode)
        self.vqvae.eval()  # frozen: the first stage stays as it was trained
        return self

    def configure_optimizers(self):
        optimizer = self.optimizer(self.prior.parameters())
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler(optimizer)}

    def networks(self) -> list[nn.Module]:
        """The networks a speed-up (compile, channels-last) applies to."""
        return [self.prior]

    def code_nll(self, codes: Tensor) -> Tensor:
        """-log p(codes) per example (B,) in nats, for code grids (B, h, w)."""
        logits = self.prior(codes).float()  # (B, K, h, w)
        return F.cross_entropy(logits, codes, reduction="none").flatten(1).sum(1)

    def sample(self, n: int, labels: Tensor | None = None) -> Tensor:
        """Draw ``n`` code grids from the prior and decode them: (B, C, H, W) in [-1, 1]."""
        codes = self.prior.sample(n, self.grid, self.hparams.temperature)
        return self.vqvae.decode_codes(codes)

    def reconstruct(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """The VQ-VAE's reconstruction of ``x`` (the prior does not change it)."""
        return self.vqvae.reconstruct(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        x, _ = batch
        with torch.no_grad():
            codes = self.vqvae.encode(x)["codes"]
        nll = self.code_nll(codes)
        loss = nll.mean() / codes[0].numel()  # nats per code
        if logs_written(self.trainer):
            self.log("train/loss", loss, prog_bar=True)
            self.log("train/prior_nll", nll.mean())
        return loss if finite_or_skip(self, loss, "train/loss", self.hparams.nonfinite) else None

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, _ = batch
        if batch_idx == 0 and self._grid_batch is None:
            self._grid_batch = x[:32].clone()
        t = self.vqvae.terms(x)
        nll = self.code_nll(t["codes"])
        kw = {"sync_dist": True, "batch_size": len(x)}
        self.log("val/prior_nll", nll.mean(), prog_bar=True, **kw)
        # the uniform prior's -log p(codes), for comparison: the prior must beat it
        self.log("val/uniform_nll", torch.tensor(self.vqvae.code_bits()), **kw)
        if self.vqvae.hparams.likelihood == "discretized_gaussian":
            bpd = (nll + t["recon"]).mean() / (x[0].numel() * math.log(2))
            self.log("val/nll_bpd", bpd, **kw)

    def grid_images(self) -> dict[str, Tensor]:
        """Prior samples (seeded); validation inputs above their reconstructions."""
        return sample_grids(self)
