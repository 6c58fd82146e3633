"""VQGAN (Esser et al. 2021): a VQ-VAE trained with a patch discriminator and perceptual loss.

As taming-transformers' ``VQLPIPSWithDiscriminator`` (taming/modules/losses/vqperceptual.py):
reconstruction |x - x'| (+ LPIPS), the codebook and commitment terms (``beta_on="codebook"``
weighs them as taming's default ``legacy=True`` quantiser does), and the adversarial
loss weighted adaptively by ||grad_L(rec)|| / (||grad_L(g)|| + 1e-4) at the decoder's last
layer L, clamped to [0, 1e4], times ``disc_weight``, from batch ``disc_start`` on. Per batch
one autoencoder step, then one discriminator step on the same reconstructions (taming's order).
"""

from typing import Literal

import torch
from torch import Tensor, nn

from genlab import losses
from genlab.config import check_optimizer
from genlab.errors import GenlabError, check_choice
from genlab.metrics.lpips import load_lpips
from genlab.models.loop import logs_written
from genlab.models.manual import ManualOptimization
from genlab.models.vqvae import VQVAE, BetaOn, OptimizerFactory, vq_loss

GANLoss = Literal["ns", "hinge", "ls"]


def adaptive_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor) -> Tensor:
    """||grad_L rec_loss|| / (||grad_L g_loss|| + 1e-4), clamped to [0, 1e4], detached."""
    (rec_grad,) = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    (g_grad,) = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()


class VQGAN(ManualOptimization, VQVAE):
    """VQ-VAE + ``discriminator`` (patch logits); two optimizers stepped by hand.

    Step counting: ``trainer.global_step`` counts both optimizers (two per batch once the
    discriminator has started); ``disc_start`` and ``train/ae_steps`` count batches.
    """

    def __init__(
        self,
        encoder: nn.Module,
        quantizer: nn.Module,
        decoder: nn.Module,
        discriminator: nn.Module,
        optimizer: OptimizerFactory,
        optimizer_d: OptimizerFactory,
        scheduler: None = None,
        loss: GANLoss = "hinge",
        disc_start: int = 0,
        disc_weight: float = 0.8,
        perceptual_weight: float = 0.0,
        lpips_net: Literal["vgg", "alex", "squeeze"] = "vgg",
        lpips_weights: str | None = None,
        beta: float = 0.25,
        beta_on: BetaOn = "commitment",
        gaussian_std: float = 0.1,
        likelihood: Literal["gaussian", "discretized_gaussian"] = "gaussian",
        grad_clip: float = 0.0,
        nonfinite: Literal["stop", "skip", "off"] = "stop",
        num_grid: int = 64,
    ) -> None:
        check_choice("model.loss", loss, GANLoss.__args__)
        if disc_start < 0 or disc_weight < 0 or perceptual_weight < 0:
            raise GenlabError(
                "model.disc_start, model.disc_weight and model.perceptual_weight must be >= 0"
            )
        if not grad_clip >= 0:
            raise GenlabError(f"model.grad_clip={grad_clip} must be >= 0 (0 = off)")
        if scheduler is not None:
            raise GenlabError("model.scheduler: VQGAN steps its optimizers by hand; set it to null")
        if gaussian_std is None:
            raise GenlabError("model.gaussian_std must be a number: VQGAN's L1 learns no scale")
        super().__init__(
            encoder, quantizer, decoder, optimizer, likelihood=likelihood,
            gaussian_std=gaussian_std, beta=beta, beta_on=beta_on, nonfinite=nonfinite,
            num_grid=num_grid,
        )  # fmt: skip
        self.save_hyperparameters(
            ignore=["encoder", "quantizer", "decoder", "discriminator", "optimizer"]
            + ["optimizer_d", "scheduler"],
            logger=False,
        )
        self.automatic_optimization = False
        self.discriminator = discriminator
        check_optimizer(optimizer_d, "model.optimizer_d")
        self.optimizer_d = optimizer_d
        # a tuple keeps LPIPS out of state_dict (checkpoints) and of .parameters()
        self._lpips = ()
        if perceptual_weight:
            unset = "; or set model.perceptual_weight=0"
            self._lpips = (load_lpips(lpips_net, lpips_weights, "model.lpips_weights", unset),)
        self.batches_seen = 0

    def configure_optimizers(self):
        ae = [p for n, p in self.named_parameters() if not n.startswith("discriminator.")]
        return [self.optimizer(ae), self.optimizer_d(self.discriminator.parameters())]

    def networks(self) -> list[nn.Module]:
        """The networks a speed-up (compile, channels-last) applies to."""
        return [self.encoder, self.decoder, self.discriminator]

    def double_backward_networks(self) -> dict[str, nn.Module]:
        """None: the adaptive weight takes first-order gradients only."""
        return {}

    def rec_loss(self, out: Tensor, x: Tensor) -> Tensor:
        """Taming's nll_loss: mean over pixels of |x - x'| + perceptual_weight * LPIPS."""
        rec = (x - out).abs().mean()
        if self._lpips:
            net = self._lpips[0].to(x.device)
            rec = rec + self.hparams.perceptual_weight * net(x, out).mean()
        return rec

    def autoencoder_loss(
        self, x: Tensor, out: Tensor, vq: Tensor, last_layer: Tensor, adversarial: bool
    ) -> dict[str, Tensor]:
        """Taming's generator-step loss: ``rec`` + ``vq`` (+ ``weight`` * ``g_loss``), ``weight``
        the adaptive weight at ``last_layer`` times ``disc_weight``."""
        hp = self.hparams
        rec = self.rec_loss(out, x)
        terms = {"rec": rec, "loss": rec + vq}
        if adversarial:
            g_loss = losses.g_loss(hp.loss, self.discriminator(out).flatten())
            weight = adaptive_weight(rec, g_loss, last_layer) * hp.disc_weight
            terms.update(g_loss=g_loss, weight=weight, loss=terms["loss"] + weight * g_loss)
        return terms

    def discriminator_loss(self, x: Tensor, out: Tensor) -> dict[str, Tensor]:
        """Taming's discriminator-step loss ``d_loss`` and the ``real`` and ``fake`` logits."""
        real = self.discriminator(x).flatten()
        fake = self.discriminator(out.detach()).flatten()
        # taming's hinge_d_loss and vanilla_d_loss halve the sum of the two terms
        return {"d_loss": 0.5 * losses.d_loss(self.hparams.loss, real, fake), "real": real,
                "fake": fake}  # fmt: skip

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, _ = batch
        hp = self.hparams
        opt_ae, opt_d = self.optimizers()
        adversarial = self.batches_seen >= hp.disc_start
        log_now = logs_written(self.trainer)
        with self.toggled_optimizer(opt_ae):
            t = self.terms(x)
            vq = vq_loss(t, hp.beta, hp.beta_on).mean()
            ae = self.autoencoder_loss(x, t["out"], vq, self.decoder.last_layer, adversarial)
            if self._step(opt_ae, ae["loss"], "train/loss"):
                self.quantizer.update(t["z"], t["codes"])
        if adversarial:
            with self.toggled_optimizer(opt_d):
                d = self.discriminator_loss(x, t["out"])
                self._step(opt_d, d["d_loss"], "train/d_loss")
        self._update_scaler()
        self.batches_seen += 1
        if log_now:
            self._log_train(t, ae["loss"])
            self.log("train/rec", ae["rec"])
            self.log("train/ae_steps", float(self.batches_seen))
            if adversarial:
                self.log("train/g_loss", ae["g_loss"])
                self.log("train/d_weight", ae["weight"])
                self.log("train/d_loss", d["d_loss"], prog_bar=True)
                self.log("train/d_real", d["real"].mean())
                self.log("train/d_fake", d["fake"].mean())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["genlab_batches_seen"] = self.batches_seen
        checkpoint["genlab_skipped_steps"] = self.skipped_steps

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.batches_seen = checkpoint.get("genlab_batches_seen", 0)
        self.skipped_steps = checkpoint.get("genlab_skipped_steps", 0)
