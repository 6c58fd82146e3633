"""The GAN LightningModule: manual optimisation, D step then G step, injected networks."""

import copy
from collections.abc import Callable
from typing import Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from genlab import losses
from genlab.augment import diff_augment
from genlab.config import check_optimizer
from genlab.errors import GenlabError, finite_or_skip
from genlab.loop import logs_written
from genlab.swd import sliced_wasserstein

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]
GANLoss = Literal["ns", "minimax", "hinge", "wgan", "ls"]

# Real validation images kept for val/swd; enough for a stable estimate, cheap on CPU.
SWD_MAX_IMAGES = 1024


class GAN(pl.LightningModule):
    """Adversarial training of ``generator`` against ``discriminator``.

    Step counting: every batch makes one discriminator step; every ``n_critic``-th batch also
    makes one generator step. Lightning's ``trainer.global_step`` counts both (manual
    optimisation); ``train/g_steps`` logs the generator steps alone.
    """

    default_monitor = "val/fid"
    fallback_monitor = "val/swd"  # when FID is off (no Inception weights)

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        optimizer_g: OptimizerFactory,
        optimizer_d: OptimizerFactory,
        scheduler_g: SchedulerFactory | None = None,
        scheduler_d: SchedulerFactory | None = None,
        loss: GANLoss = "ns",
        n_critic: int = 1,
        gp_weight: float = 0.0,
        r1_gamma: float = 0.0,
        diffaugment: str = "",
        ema_decay: float = 0.0,
        nonfinite: Literal["stop", "skip", "off"] = "stop",
        num_grid: int = 64,
    ) -> None:
        super().__init__()
        if loss not in GANLoss.__args__:
            raise GenlabError(f"model.loss={loss!r} is not one of {', '.join(GANLoss.__args__)}")
        if n_critic < 1:
            raise GenlabError(f"model.n_critic={n_critic} must be >= 1")
        if gp_weight < 0 or r1_gamma < 0:
            raise GenlabError("model.gp_weight and model.r1_gamma must be >= 0")
        if nonfinite not in ("stop", "skip", "off"):
            raise GenlabError(f"model.nonfinite={nonfinite!r}: use stop, skip or off")
        if not 0.0 <= ema_decay < 1.0:
            raise GenlabError(f"model.ema_decay={ema_decay} must be in [0, 1)")
        self.save_hyperparameters(
            ignore=["generator", "discriminator", "optimizer_g", "optimizer_d"]
            + ["scheduler_g", "scheduler_d"],
            logger=False,
        )
        self.automatic_optimization = False
        self.generator = generator
        self.discriminator = discriminator
        self.generator_ema = copy.deepcopy(generator).requires_grad_(False) if ema_decay else None
        check_optimizer(optimizer_g, "model.optimizer_g")
        check_optimizer(optimizer_d, "model.optimizer_d")
        self.optimizer_g, self.optimizer_d = optimizer_g, optimizer_d
        self.scheduler_g, self.scheduler_d = scheduler_g, scheduler_d
        if generator.num_classes != discriminator.num_classes:
            raise GenlabError(
                f"model.generator.num_classes={generator.num_classes} but "
                f"model.discriminator.num_classes={discriminator.num_classes}"
            )
        self.latent_dim: int = generator.latent_dim
        self.num_classes: int = getattr(generator, "num_classes", 0)
        g = torch.Generator().manual_seed(0)
        self.register_buffer("fixed_z", torch.randn(num_grid, self.latent_dim, generator=g))
        self.register_buffer("fixed_labels", self._grid_labels(num_grid))
        self.batches_seen = 0
        self.skipped_steps = 0
        self._last_g_loss: Tensor | None = None
        self._val_real: list[Tensor] = []

    def _grid_labels(self, n: int) -> Tensor:
        return torch.arange(n) % max(self.num_classes, 1)

    def configure_optimizers(self):
        opt_g = self.optimizer_g(self.generator.parameters())
        opt_d = self.optimizer_d(self.discriminator.parameters())
        schedulers = [
            make(opt)
            for make, opt in ((self.scheduler_g, opt_g), (self.scheduler_d, opt_d))
            if make
        ]
        return [opt_g, opt_d], schedulers

    def networks(self) -> list[nn.Module]:
        """The networks a speed-up (compile, channels-last) applies to."""
        nets = [self.generator, self.discriminator]
        return nets + ([self.generator_ema] if self.generator_ema is not None else [])

    @property
    def sampling_generator(self) -> nn.Module:
        """The generator that samples and metrics use: the EMA copy when enabled."""
        return self.generator_ema if self.generator_ema is not None else self.generator

    def sample(self, n: int, labels: Tensor | None = None) -> Tensor:
        """Draw ``n`` images (B, C, H, W) in [-1, 1]; random labels for a conditional model."""
        z = torch.randn(n, self.latent_dim, device=self.device)
        if self.num_classes and labels is None:
            labels = torch.randint(self.num_classes, (n,), device=self.device)
        return self.sampling_generator(z, labels)

    def grid_images(self) -> dict[str, Tensor]:
        """Images for the per-epoch grid: the fixed noise through the sampling generator."""
        labels = self.fixed_labels if self.num_classes else None
        return {"samples": self.sampling_generator(self.fixed_z, labels)}

    def _labels(self, labels: Tensor) -> Tensor | None:
        return labels if self.num_classes else None

    def _augment(self, x: Tensor) -> Tensor:
        return diff_augment(x, self.hparams.diffaugment) if self.hparams.diffaugment else x

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        real, labels = batch  # (B, C, H, W), (B,)
        y = self._labels(labels)
        opt_g, opt_d = self.optimizers()
        hp = self.hparams
        log_now = logs_written(self.trainer)  # each self.log costs ~0.5 ms on a small CPU
        logged: dict[str, Tensor] = {}

        with self.toggled_optimizer(opt_d):
            z = torch.randn(real.shape[0], self.latent_dim, device=self.device)
            with torch.no_grad():
                fake = self.generator(z, y)
            if hp.r1_gamma:
                real.requires_grad_(True)
            d_real = self.discriminator(self._augment(real), y)
            d_fake = self.discriminator(self._augment(fake), y)
            d_loss = losses.d_loss(hp.loss, d_real, d_fake)
            if hp.gp_weight:
                gp = losses.gradient_penalty(self.discriminator, real, fake, y)
                d_loss = d_loss + hp.gp_weight * gp
                logged["train/gp"] = gp
            if hp.r1_gamma:
                r1 = losses.r1_penalty(d_real, real)
                d_loss = d_loss + 0.5 * hp.r1_gamma * r1
                logged["train/r1"] = r1
            self._step(opt_d, d_loss, "train/d_loss")

        self.batches_seen += 1
        if self.batches_seen % hp.n_critic == 0:
            with self.toggled_optimizer(opt_g):
                z = torch.randn(real.shape[0], self.latent_dim, device=self.device)
                g_loss = losses.g_loss(
                    hp.loss, self.discriminator(self._augment(self.generator(z, y)), y)
                )
                self._step(opt_g, g_loss, "train/g_loss")
            self._update_ema()
            # schedules count generator steps (mimicry's linear decay over G iterations)
            for scheduler in self._schedulers():
                scheduler.step()
            # kept for the next written step, which may fall between G steps (n_critic > 1)
            self._last_g_loss = g_loss.detach()
        update_scaler = getattr(self.trainer.precision_plugin, "update_scaler", None)
        if update_scaler is not None:
            update_scaler()  # 16-mixed: once per iteration, after D and G stepped
        if log_now:  # the progress bar's values refresh at the same steps
            self.log("train/d_loss", d_loss, prog_bar=True)
            if self._last_g_loss is not None:
                self.log("train/g_loss", self._last_g_loss, prog_bar=True)
            self.log("train/d_real", d_real.mean())
            self.log("train/d_fake", d_fake.mean())
            for name, value in logged.items():
                self.log(name, value)
            self.log("train/g_steps", float(self.batches_seen // hp.n_critic))
            if self.skipped_steps:
                self.log("train/skipped_steps", float(self.skipped_steps))

    def _step(self, optimizer, loss: Tensor, name: str) -> None:
        """Backward and step ``optimizer`` on ``loss``; a non-finite loss stops or is skipped."""
        if finite_or_skip(self, loss, name, self.hparams.nonfinite):
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            optimizer.step()
        else:
            self.skipped_steps += 1

    def _schedulers(self) -> list:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return []
        return schedulers if isinstance(schedulers, list) else [schedulers]

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.generator_ema is None:
            return
        decay = self.hparams.ema_decay
        for ema_p, p in zip(
            self.generator_ema.parameters(), self.generator.parameters(), strict=True
        ):
            ema_p.lerp_(p, 1.0 - decay)
        # BatchNorm running statistics are copied, not averaged (as in BigGAN/StyleGAN).
        for ema_b, b in zip(self.generator_ema.buffers(), self.generator.buffers(), strict=True):
            ema_b.copy_(b)

    def on_validation_epoch_start(self) -> None:
        self._val_real = []

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        kept = sum(len(x) for x in self._val_real)
        if kept < SWD_MAX_IMAGES:
            self._val_real.append(batch[0][: SWD_MAX_IMAGES - kept])

    def on_validation_epoch_end(self) -> None:
        if not self._val_real:
            return
        real = torch.cat(self._val_real)
        fake = self.sample(len(real))
        self.log("val/swd", sliced_wasserstein(real, fake), sync_dist=True)
        self._val_real = []

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["genlab_batches_seen"] = self.batches_seen
        checkpoint["genlab_skipped_steps"] = self.skipped_steps

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.batches_seen = checkpoint.get("genlab_batches_seen", 0)
        self.skipped_steps = checkpoint.get("genlab_skipped_steps", 0)
