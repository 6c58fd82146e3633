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
from genlab.rng import seeded
from genlab.swd import sliced_wasserstein

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]
GANLoss = Literal["ns", "minimax", "hinge", "wgan", "ls"]
EMAStats = Literal["standing", "average"]

# Real validation images kept for val/swd; enough for a stable estimate, cheap on CPU.
SWD_MAX_IMAGES = 1024
# val/swd samples its fakes under this seed (plus the rank) in a forked RNG: the same noise each
# epoch, and the training noise does not depend on the validation schedule.
SWD_SEED = 0
# Standing statistics of the EMA generator (BigGAN's accumulate_standing_stats): the BatchNorm
# average over this many batches of fixed noise, recomputed whenever the EMA weights changed.
STANDING_BATCHES, STANDING_BATCH_SIZE, STANDING_SEED = 8, 128, 0


def _stale_standing(module: "GAN", incompatible_keys) -> None:
    """After load_state_dict: the loaded EMA weights need standing statistics of their own."""
    module._standing_at = -1  # a module-level function, so the module still pickles (DDP spawn)


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
        ema_stats: EMAStats = "standing",
        grad_clip: float = 0.0,
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
        if ema_stats not in EMAStats.__args__:
            raise GenlabError(f"model.ema_stats={ema_stats!r}: use standing or average")
        if not grad_clip >= 0:
            raise GenlabError(f"model.grad_clip={grad_clip} must be >= 0 (0 = off)")
        self.save_hyperparameters(
            ignore=["generator", "discriminator", "optimizer_g", "optimizer_d"]
            + ["scheduler_g", "scheduler_d"],
            logger=False,
        )
        self.automatic_optimization = False
        self.generator = generator
        self.discriminator = discriminator
        self.generator_ema = copy.deepcopy(generator).requires_grad_(False) if ema_decay else None
        self._ema_updates, self._standing_at = 0, -1  # standing stats are stale when they differ
        # loaded EMA weights (resume, genlab-eval, genlab-sample) need their own statistics
        self.register_load_state_dict_post_hook(_stale_standing)
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

    def configure_callbacks(self) -> list:
        """No callbacks; refuses Trainer clipping, which manual optimisation cannot apply."""
        # the first module hook of a fit, before Lightning's own check raises with a traceback
        if self.trainer.gradient_clip_val:
            raise GenlabError(
                f"trainer.gradient_clip_val={self.trainer.gradient_clip_val} does not apply to "
                "the GAN's manual optimisation; set model.grad_clip (max gradient norm) instead"
            )
        return []

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip the stepping network's gradient norm to ``model.grad_clip``."""
        # runs after GradScaler.unscale_ under 16-mixed (GANMixedPrecision): true gradients
        if self.hparams.grad_clip:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            nn.utils.clip_grad_norm_(params, self.hparams.grad_clip)

    def double_backward_networks(self) -> dict[str, nn.Module]:
        """Networks a penalty differentiates twice (torch.compile cannot), by the keys that do."""
        keys = [f"model.{k}" for k in ("gp_weight", "r1_gamma") if self.hparams[k]]
        return {f"model.discriminator ({', '.join(keys)})": self.discriminator} if keys else {}

    def networks(self) -> list[nn.Module]:
        """The networks a speed-up (compile, channels-last) applies to."""
        nets = [self.generator, self.discriminator]
        return nets + ([self.generator_ema] if self.generator_ema is not None else [])

    @property
    def sampling_generator(self) -> nn.Module:
        """The generator that samples and metrics use: the EMA copy when enabled.

        With ``ema_stats="standing"`` its BatchNorm statistics are first recomputed from the
        EMA weights, if these changed since the last time.
        """
        if self.generator_ema is None:
            return self.generator
        if self.hparams.ema_stats == "standing" and self._standing_at != self._ema_updates:
            self._standing_stats()
        return self.generator_ema

    @torch.no_grad()
    def _standing_stats(self) -> None:
        """Set the EMA generator's BatchNorm statistics to its own, on fixed noise."""
        g = self.generator_ema
        # _BatchNorm: the base of BatchNorm1d/2d/3d and SyncBatchNorm
        norms = [m for m in g.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        norms = [m for m in norms if m.track_running_stats]
        momenta, was_training = [m.momentum for m in norms], g.training
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches, not a running one
        g.train()
        with seeded(STANDING_SEED, self.device):  # deterministic; training noise untouched
            for _ in range(STANDING_BATCHES if norms else 0):
                z = torch.randn(STANDING_BATCH_SIZE, self.latent_dim, device=self.device)
                n = self.num_classes
                g(z, torch.randint(n, (len(z),), device=self.device) if n else None)
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        g.train(was_training)
        self._standing_at = self._ema_updates

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
            scale = self._loss_scale() if hp.gp_weight or hp.r1_gamma else None
            if hp.gp_weight:
                gp = losses.gradient_penalty(self.discriminator, real, fake, y, scale=scale)
                d_loss = d_loss + hp.gp_weight * gp
                logged["train/gp"] = gp
            if hp.r1_gamma:
                r1 = losses.r1_penalty(d_real, real, scale=scale)
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

    def _loss_scale(self) -> float | None:
        """The fp16 GradScaler's current scale, which the penalties' autograd.grad must apply."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        return scaler.get_scale() if scaler is not None and scaler.is_enabled() else None

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
        self._ema_updates += 1
        for ema_p, p in zip(
            self.generator_ema.parameters(), self.generator.parameters(), strict=True
        ):
            ema_p.lerp_(p, 1.0 - decay)
        # BatchNorm statistics averaged like the weights (BigGAN-PyTorch's ema): copied ones
        # would normalise the averaged weights by statistics of the raw weights. Under
        # ema_stats="standing" these are replaced before use.
        for ema_b, b in zip(self.generator_ema.buffers(), self.generator.buffers(), strict=True):
            if ema_b.is_floating_point():
                ema_b.lerp_(b, 1.0 - decay)
            else:
                ema_b.copy_(b)  # num_batches_tracked: a count, not a statistic

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
        with seeded(SWD_SEED + self.global_rank, self.device):
            fake = self.sample(len(real))
        self.log("val/swd", sliced_wasserstein(real, fake), sync_dist=True)
        self._val_real = []

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["genlab_batches_seen"] = self.batches_seen
        checkpoint["genlab_skipped_steps"] = self.skipped_steps

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.batches_seen = checkpoint.get("genlab_batches_seen", 0)
        self.skipped_steps = checkpoint.get("genlab_skipped_steps", 0)
