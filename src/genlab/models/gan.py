"""The GAN LightningModule: manual optimisation, D step then G step, injected networks."""

from collections.abc import Callable
from typing import Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from genlab import losses
from genlab.augment import diff_augment
from genlab.config import check_optimizer
from genlab.data.datasets import labels_of
from genlab.errors import GenlabError
from genlab.metrics.swd import sliced_wasserstein
from genlab.models.ema import EMAStats, GeneratorEMA
from genlab.models.gan_options import checked_options
from genlab.models.loop import logs_written
from genlab.models.manual import ManualOptimization
from genlab.rng import seeded

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]

# Real validation images kept for val/swd; enough for a stable estimate, cheap on CPU.
SWD_MAX_IMAGES = 1024
# val/swd samples its fakes under this seed (plus the rank) in a forked RNG: the same noise each
# epoch, and the training noise does not depend on the validation schedule.
SWD_SEED = 0


def _lazy_regularisation(optimizer: torch.optim.Optimizer, interval: int) -> None:
    """StyleGAN2's correction for a penalty every ``interval`` steps: lr and betas ** (N / (N+1)).

    As StyleGAN2-ADA's training_loop.py (and StudioGAN), whenever the interval is not 1.
    """
    if interval == 1:
        return
    ratio = interval / (interval + 1)
    for group in optimizer.param_groups:
        group["lr"] *= ratio
        if "betas" in group:
            group["betas"] = tuple(beta**ratio for beta in group["betas"])


class GAN(GeneratorEMA, ManualOptimization, pl.LightningModule):
    """Adversarial training of ``generator`` against ``discriminator``.

    Step counting: every batch makes one discriminator step; every ``n_critic``-th batch also
    makes one generator step. Lightning's ``trainer.global_step`` counts both (manual
    optimisation); ``train/g_steps`` logs the generator steps alone.
    """

    default_monitor = "val/fid"
    fallback_monitor = "val/swd"  # when FID is off (no Inception weights)
    sampling_state = ("generator.",)  # what post-hoc EMA averages

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        optimizer_g: OptimizerFactory,
        optimizer_d: OptimizerFactory,
        scheduler_g: SchedulerFactory | None = None,
        scheduler_d: SchedulerFactory | None = None,
        loss: losses.GANLoss = "ns",
        n_critic: int = 1,
        gp_weight: float = 0.0,
        r1_gamma: float = 0.0,
        r2_gamma: float = 0.0,
        ortho_reg: float = 0.0,
        pack: int = 1,
        ramp: dict | None = None,
        r1_interval: int = 1,
        pl_weight: float = 0.0,
        pl_interval: int = 1,
        pl_decay: float = 0.01,
        pl_batch_shrink: int = 2,
        style_mixing: float = 0.0,
        diffaugment: str = "",
        ada: dict | None = None,
        ema_decay: float = 0.0,
        ema_stats: EMAStats = "standing",
        fake_labels: Literal["batch", "uniform", "dataset"] = "batch",
        lazy_step: Literal["joint", "separate"] = "joint",
        g_real: Literal["shared", "own"] = "shared",
        grad_clip: float = 0.0,
        grad_nan_to_num: bool = False,
        nonfinite: Literal["stop", "skip", "off"] = "stop",
        num_grid: int = 64,
    ) -> None:
        super().__init__()
        self.ramp, self.ada = checked_options(
            generator, discriminator, scheduler_g, scheduler_d, loss=loss, n_critic=n_critic,
            gp_weight=gp_weight, r1_gamma=r1_gamma, r2_gamma=r2_gamma, ortho_reg=ortho_reg,
            pack=pack, ramp=ramp, r1_interval=r1_interval, pl_weight=pl_weight,
            pl_interval=pl_interval, pl_decay=pl_decay, pl_batch_shrink=pl_batch_shrink,
            style_mixing=style_mixing, diffaugment=diffaugment, ada=ada, ema_decay=ema_decay,
            ema_stats=ema_stats, fake_labels=fake_labels, lazy_step=lazy_step, g_real=g_real,
            grad_clip=grad_clip, nonfinite=nonfinite,
        )  # fmt: skip
        self.save_hyperparameters(
            ignore=["generator", "discriminator", "optimizer_g", "optimizer_d"]
            + ["scheduler_g", "scheduler_d"],
            logger=False,
        )
        self.automatic_optimization = False
        self.generator = generator
        self.discriminator = discriminator
        self.init_ema(generator, bool(ema_decay or "ema_half_life" in self.ramp))
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
        if pl_weight:  # the running mean path length, state that must travel with the weights
            self.register_buffer("pl_mean", torch.zeros(()))
        self.batches_seen = 0
        self.images_seen = 0  # real images D saw, all ranks: the clock of model.ramp
        self.skipped_steps = 0
        self._last_g_loss: Tensor | None = None
        self._val_real: list[Tensor] = []

    def _grid_labels(self, n: int) -> Tensor:
        return torch.arange(n) % max(self.num_classes, 1)

    def configure_optimizers(self):
        opt_g = self.optimizer_g(self.generator.parameters())
        opt_d = self.optimizer_d(self.discriminator.parameters())
        _lazy_regularisation(opt_g, self.hparams.pl_interval)  # before schedulers read the lr
        _lazy_regularisation(opt_d, self.hparams.r1_interval)
        schedulers = [
            make(opt)
            for make, opt in ((self.scheduler_g, opt_g), (self.scheduler_d, opt_d))
            if make
        ]
        return [opt_g, opt_d], schedulers

    def double_backward_networks(self) -> dict[str, nn.Module]:
        """Networks a penalty differentiates twice (torch.compile cannot), by the keys that do."""
        penalties = ("gp_weight", "r1_gamma", "r2_gamma")
        keys = [f"model.{k}" for k in penalties if self.hparams[k] or k in self.ramp]
        nets = {f"model.discriminator ({', '.join(keys)})": self.discriminator} if keys else {}
        if self.hparams.pl_weight:
            nets["model.generator (model.pl_weight)"] = self.generator
        return nets

    def networks(self) -> list[nn.Module]:
        """The networks a speed-up (compile, channels-last) applies to."""
        nets = [self.generator, self.discriminator]
        return nets + ([self.generator_ema] if self.generator_ema is not None else [])

    def sample(self, n: int, labels: Tensor | None = None) -> Tensor:
        """Draw ``n`` images (B, C, H, W) in [-1, 1]; random labels for a conditional model."""
        z = torch.randn(n, self.latent_dim, device=self.device)
        if self.num_classes and labels is None:
            labels = torch.randint(self.num_classes, (n,), device=self.device)
        return self.sampling_generator(z, labels)

    def shape_sample(self, n: int) -> Tensor:
        """``n`` images of the raw generator: their shape is the EMA copy's, at no standing cost."""
        z = torch.randn(n, self.latent_dim, device=self.device)
        labels = torch.zeros(n, dtype=torch.long, device=self.device) if self.num_classes else None
        return self.generator(z, labels)

    def grid_images(self) -> dict[str, Tensor]:
        """Images for the per-epoch grid: the fixed noise through the sampling generator."""
        labels = self.fixed_labels if self.num_classes else None
        return {"samples": self.sampling_generator(self.fixed_z, labels)}

    def _labels(self, labels: Tensor) -> Tensor | None:
        return labels if self.num_classes else None

    def _fake_labels(self, y: Tensor | None) -> Tensor | None:
        """Labels for a batch of fakes, as ``model.fake_labels`` says: the real batch's, uniform
        over the classes, or drawn from the training set's labels."""
        mode = self.hparams.fake_labels
        if y is None or mode == "batch":
            return y
        if mode == "uniform":
            return torch.randint(self.num_classes, y.shape, device=y.device)
        return torch.multinomial(self._label_weights.to(y.device), len(y), replacement=True)

    def on_fit_start(self) -> None:
        """``model.fake_labels=dataset``: how often each class occurs among the training images."""
        if self.hparams.fake_labels != "dataset" or not self.num_classes:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if not hasattr(datamodule, "dataset"):
            raise GenlabError("model.fake_labels=dataset needs genlab's ImageDataModule")
        labels = labels_of(datamodule.dataset("train"))
        self._label_weights = torch.bincount(labels, minlength=self.num_classes).float()

    def _augment(self, x: Tensor) -> Tensor:
        if self.ada is not None:
            return self.ada(x)
        return diff_augment(x, self.hparams.diffaugment) if self.hparams.diffaugment else x

    def _pack(self, x: Tensor) -> Tensor:
        """PacGAN: each ``model.pack`` consecutive images stacked on channels (B/m, m*C, H, W)."""
        m = self.hparams.pack
        if m == 1:
            return x
        if x.shape[0] % m:
            raise GenlabError(
                f"model.pack={m} does not divide a batch of {x.shape[0]} images: "
                "make data.batch_size a multiple of it"
            )
        return x.reshape(x.shape[0] // m, m * x.shape[1], *x.shape[2:])

    def _critic(self, x: Tensor, y: Tensor | None) -> Tensor:
        """D's logits (B / model.pack,) on images as D sees them: augmented, then packed."""
        return self.discriminator(self._pack(self._augment(x)), y)

    def _generate(self, z: Tensor, y: Tensor | None) -> Tensor:
        """G(z) as training sees it: with ``model.style_mixing``, through mixed styles."""
        if not self.hparams.style_mixing:
            return self.generator(z, y)
        return self.generator.synthesis(self._mixed_ws(z, y))

    def _mixed_ws(self, z: Tensor, y: Tensor | None) -> Tensor:
        """ws (B, num_ws, w_dim) of ``z``; with probability ``model.style_mixing`` the layers
        from a random cutoff in [1, num_ws) on take the ws of fresh latents (StyleGAN2-ADA's
        run_G; the second mapping leaves ``w_avg`` alone)."""
        ws = self.generator.mapping(z, y)
        p = self.hparams.style_mixing
        if p and torch.rand(()) < p:
            cutoff = int(torch.randint(1, ws.shape[1], ()))
            other = self.generator.mapping(torch.randn_like(z), y, update_w_avg=False)
            ws = torch.cat([ws[:, :cutoff], other[:, cutoff:]], 1)
        return ws

    def _path_length(self, z: Tensor, y: Tensor | None) -> Tensor:
        """StyleGAN2's path length penalty on the first B / ``model.pl_batch_shrink`` latents."""
        n = max(len(z) // self.hparams.pl_batch_shrink, 1)
        ws = self._mixed_ws(z[:n], None if y is None else y[:n])
        penalty, mean = losses.path_length_penalty(
            self.generator.synthesis(ws), ws, self.pl_mean, self.hparams.pl_decay,
            scale=self._loss_scale(),
        )  # fmt: skip
        self.pl_mean.copy_(mean)
        return penalty

    def set_truncation(self, psi: float) -> None:
        """Sample with StyleGAN's truncation trick, w pulled toward ``w_avg`` (``psi`` 1 = off)."""
        generators = [g for g in (self.generator, self.generator_ema) if g is not None]
        if not all(hasattr(g, "truncation_psi") for g in generators):
            if psi == 1:
                return
            raise GenlabError(
                f"truncation={psi}: {type(self.generator).__name__} has no truncation "
                "(StyleGAN2Generator has)"
            )
        for g in generators:
            g.truncation_psi = psi

    def _ramped(self, optimizers) -> dict[str, float]:
        """``model.ramp``'s values at the images seen so far; lr and beta2 go to both optimizers."""
        values = self.ramp.at(self.images_seen)
        for group in (g for opt in optimizers for g in opt.param_groups):
            if "lr" in values:
                group["lr"] = values["lr"]
            if "beta2" in values:
                group["betas"] = (group["betas"][0], values["beta2"])
        return values

    def _ortho_weights(self) -> list[Tensor]:
        """G's weights under BigGAN's orthogonal regulariser: 2-d and up, no embeddings."""
        # BigGAN-PyTorch leaves out G.shared ("really we should blacklist any embeddings")
        embedded = {
            id(p) for m in self.generator.modules() if isinstance(m, nn.Embedding)
            for p in m.parameters()
        }  # fmt: skip
        return [p for p in self.generator.parameters() if p.dim() >= 2 and id(p) not in embedded]

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        real, labels = batch  # (B, C, H, W), (B,)
        real_g, labels_g = real, labels
        if self.hparams.g_real == "own":  # R3GAN: D and G steps each get half the batch
            if real.shape[0] % 2:
                raise GenlabError(
                    f"model.g_real=own halves each batch, and {real.shape[0]} images do not "
                    "halve: make data.batch_size even"
                )
            (real, real_g), (labels, labels_g) = real.chunk(2), labels.chunk(2)
        y, y_g = self._labels(labels), self._labels(labels_g)
        opt_g, opt_d = self.optimizers()
        hp = self.hparams
        log_now = logs_written(self.trainer)  # each self.log costs ~0.5 ms on a small CPU
        logged: dict[str, Tensor] = {}
        ramped = self._ramped((opt_g, opt_d))
        r1_gamma, r2_gamma = (ramped.get(k, hp[k]) for k in ("r1_gamma", "r2_gamma"))
        if "ada_p" in ramped:  # R3GAN: p set from the images seen before each iteration
            self.ada.p.fill_(ramped["ada_p"])

        with self.toggled_optimizer(opt_d):
            z = torch.randn(real.shape[0], self.latent_dim, device=self.device)
            y_fake = self._fake_labels(y)
            with torch.no_grad():
                fake = self._generate(z, y_fake)
            # lazy R1 (StyleGAN2): on every model.r1_interval-th D step, weighted by the interval;
            # in that step's loss (joint) or in an optimizer step of its own (separate)
            lazy_r1 = bool(r1_gamma) and self.batches_seen % hp.r1_interval == 0
            joint_r1 = lazy_r1 and hp.lazy_step == "joint"
            if joint_r1:
                real.requires_grad_(True)
            if r2_gamma:
                fake.requires_grad_(True)
            d_real = self._critic(real, y)
            d_fake = self._critic(fake, y_fake)
            d_loss = losses.d_loss(hp.loss, d_real, d_fake)
            scale = self._loss_scale() if hp.gp_weight or r1_gamma or r2_gamma else None
            if hp.gp_weight:
                gp = losses.gradient_penalty(
                    self.discriminator, self._pack(real), self._pack(fake), y, scale=scale
                )
                d_loss = d_loss + hp.gp_weight * gp
                logged["train/gp"] = gp
            if joint_r1:
                r1 = losses.r1_penalty(d_real, real, scale=scale)
                d_loss = d_loss + 0.5 * r1_gamma * hp.r1_interval * r1
                logged["train/r1"] = r1
            if r2_gamma:
                r2 = losses.r2_penalty(d_fake, fake, scale=scale)
                d_loss = d_loss + 0.5 * r2_gamma * r2
                logged["train/r2"] = r2
            self._step(opt_d, d_loss, "train/d_loss")
            if lazy_r1 and not joint_r1:  # StyleGAN2-ADA's Dreg phase: R1 alone, its own step
                real_r1 = real.detach().requires_grad_(True)
                r1 = losses.r1_penalty(self._critic(real_r1, y), real_r1, scale=self._loss_scale())
                self._step(opt_d, 0.5 * r1_gamma * hp.r1_interval * r1, "train/r1")
                logged["train/r1"] = r1.detach()

        self.batches_seen += 1
        self.images_seen += real.shape[0] * self.trainer.world_size
        if self.batches_seen % hp.n_critic == 0:
            with self.toggled_optimizer(opt_g):
                z = torch.randn(real.shape[0], self.latent_dim, device=self.device)
                y_fake = self._fake_labels(y_g)
                d_fake_g = self._critic(self._generate(z, y_fake), y_fake)
                # rpgan pairs each fake logit with a real one, so G's loss needs D(real) too
                d_real_g = self._critic(real_g.detach(), y_g) if hp.loss == "rpgan" else None
                g_loss = losses.g_loss(hp.loss, d_fake_g, d_real_g)
                if hp.ortho_reg:
                    ortho = losses.orthogonal_reg(self._ortho_weights())
                    g_loss = g_loss + hp.ortho_reg * ortho
                    logged["train/ortho"] = ortho.detach()
                # path length (StyleGAN2): on every model.pl_interval-th G step, x the interval,
                # in that step's loss (joint) or in a step of its own after it (separate)
                lazy_pl = bool(hp.pl_weight)
                lazy_pl &= (self.batches_seen // hp.n_critic - 1) % hp.pl_interval == 0
                if lazy_pl and hp.lazy_step == "joint":
                    pl_penalty = self._path_length(z, y_fake)
                    g_loss = g_loss + hp.pl_weight * hp.pl_interval * pl_penalty
                self._step(opt_g, g_loss, "train/g_loss")
                if lazy_pl and hp.lazy_step == "separate":  # StyleGAN2-ADA's Greg phase
                    z = torch.randn(real.shape[0], self.latent_dim, device=self.device)
                    pl_penalty = self._path_length(z, self._fake_labels(y_g))
                    self._step(opt_g, hp.pl_weight * hp.pl_interval * pl_penalty, "train/pl")
                if lazy_pl:
                    logged["train/pl"] = pl_penalty.detach()
                    logged["train/pl_mean"] = self.pl_mean.clone()
            half_life = ramped.get("ema_half_life")
            images = hp.n_critic * real.shape[0] * self.trainer.world_size
            # R3GAN's EMA: beta = 0.5 ** (images per update / half-life in images)
            self._update_ema(None if half_life is None else 0.5 ** (images / max(half_life, 1e-8)))
            # schedules count generator steps (mimicry's linear decay over G iterations)
            for scheduler in self._schedulers():
                scheduler.step()
            # kept for the next written step, which may fall between G steps (n_critic > 1)
            self._last_g_loss = g_loss.detach()
        if self.ada is not None:  # after the batch, as StyleGAN2-ADA; one p on every DDP rank
            signs = self.ada.real_signs(d_real, real.shape[0])
            self.ada.update(self.trainer.strategy.reduce(signs, reduce_op="sum"))
        self._update_scaler()  # 16-mixed: once per iteration, after D and G stepped
        if log_now:  # the progress bar's values refresh at the same steps
            self.log("train/d_loss", d_loss, prog_bar=True)
            if self._last_g_loss is not None:
                self.log("train/g_loss", self._last_g_loss, prog_bar=True)
            self.log("train/d_real", d_real.mean())
            self.log("train/d_fake", d_fake.mean())
            for name, value in logged.items():
                self.log(name, value)
            for name, value in ramped.items():  # model.ramp: the values this batch used
                self.log(f"train/{name}", value)
            self.log("train/g_steps", float(self.batches_seen // hp.n_critic))
            if self.ada is not None:  # a ramped p is logged with the ramps
                if "ada_p" not in ramped:
                    self.log("train/ada_p", self.ada.p)
                self.log("train/ada_rt", self.ada.rt)
            if self.skipped_steps:
                self.log("train/skipped_steps", float(self.skipped_steps))

    def _schedulers(self) -> list:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return []
        return schedulers if isinstance(schedulers, list) else [schedulers]

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
        checkpoint["genlab_images_seen"] = self.images_seen
        checkpoint["genlab_skipped_steps"] = self.skipped_steps

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.batches_seen = checkpoint.get("genlab_batches_seen", 0)
        self.images_seen = checkpoint.get("genlab_images_seen", 0)
        self.skipped_steps = checkpoint.get("genlab_skipped_steps", 0)
