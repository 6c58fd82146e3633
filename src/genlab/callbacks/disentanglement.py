"""MIG and the FactorVAE score of a VAE's encoder mean on data with known factors (data=shapes)."""

import pytorch_lightning as pl
import torch
from torch import Tensor

from genlab.callbacks.checkpointing import fit_ends
from genlab.errors import GenlabError
from genlab.metrics.disentanglement import FACTOR_VAE_SCORE, MIG, NUM_BINS, factor_vae_score, mig

KEY = "callbacks.disentanglement"


class Disentanglement(pl.Callback):
    """Logs ``val/mig`` and ``val/factor_vae_score`` every ``every_n_epochs`` epochs (and at the
    end of fit), from the encoder mean of images drawn from the data's factors.

    The ``num_points`` factor draws are fixed by ``seed`` at setup, so every evaluation scores the
    same images; they serve MIG and the latents' global variances of the FactorVAE score (whose
    votes draw their own points, seeded too). Defaults: disentanglement_lib's MIG (10,000 points,
    20 bins) and its FactorVAE batch of 64 per vote, with 800 training and 800 evaluation votes
    (disentanglement_lib: 10,000 and 5,000; fewer keep an evaluation short).
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_points: int = 10_000,
        train_votes: int = 800,
        eval_votes: int = 800,
        batch_size: int = 64,
        bins: int = NUM_BINS,
        encode_batch: int = 256,
        seed: int = 0,
    ) -> None:
        for name, value, low in [
            ("every_n_epochs", every_n_epochs, 1), ("num_points", num_points, 2),
            ("train_votes", train_votes, 1), ("eval_votes", eval_votes, 1),
            ("batch_size", batch_size, 2), ("bins", bins, 2), ("encode_batch", encode_batch, 1),
        ]:  # fmt: skip
            if not isinstance(value, int) or value < low:
                raise GenlabError(f"{KEY}.{name}={value!r} must be an integer >= {low}")
        self.every_n_epochs, self.num_points, self.bins = every_n_epochs, num_points, bins
        self.train_votes, self.eval_votes, self.batch_size = train_votes, eval_votes, batch_size
        self.encode_batch, self.seed = encode_batch, seed
        self.source = None
        self.points: Tensor | None = None  # (num_points, K) factor indices
        self.results: dict[str, float] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Refuse data without known factors and models without an encoder; draw the points."""
        datamodule = trainer.datamodule
        known = getattr(datamodule, "known_factors", None)
        self.source = known() if callable(known) else None
        if self.source is None:
            source = getattr(datamodule, "source", type(datamodule).__name__)
            raise GenlabError(
                f"{KEY}: data.source={source} has no known factors; MIG and the FactorVAE score "
                "need data=shapes"
            )
        if not callable(getattr(pl_module, "encoder", None)) or not hasattr(pl_module, "_y"):
            raise GenlabError(
                f"{KEY}: {type(pl_module).__name__} has no Gaussian encoder whose mean to score "
                "(use a VAE: model=vae, beta_vae, ...)"
            )
        gen = torch.Generator().manual_seed(self.seed)
        self.points = self.source.sample_factors(self.num_points, gen)

    @torch.no_grad()
    def represent(self, pl_module: pl.LightningModule, factors: Tensor) -> Tensor:
        """The encoder mean (B, Z) of the images with factor indices (B, K)."""
        codes = []
        for chunk in factors.split(self.encode_batch):
            x = self.source.images_of(chunk).to(pl_module.device)
            y = pl_module._y(chunk[:, 0].to(pl_module.device))  # label = shape (conditional)
            out = pl_module.encoder(x, y)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise GenlabError(
                    f"{KEY}: {type(pl_module).__name__}'s encoder gives no (mean, log-variance)"
                )
            codes.append(out[0].flatten(1).double().cpu())
        return torch.cat(codes)

    def evaluate(self, pl_module: pl.LightningModule) -> dict[str, float]:
        """MIG, the FactorVAE score and its details for the module as it is now."""
        codes = self.represent(pl_module, self.points)  # (N, Z)
        out = {MIG: mig(codes, self.points, self.bins)}
        out.update(
            factor_vae_score(
                lambda f: self.represent(pl_module, f),
                self.source.factor_sizes,
                codes,
                self.train_votes,
                self.eval_votes,
                self.batch_size,
                seed=self.seed,
            )
        )
        return out

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs and not fit_ends(trainer):
            return
        self.results = self.evaluate(pl_module)
        for name in (MIG, FACTOR_VAE_SCORE, "factor_vae_active_latents"):
            pl_module.log(f"val/{name}", self.results[name], on_epoch=True)
