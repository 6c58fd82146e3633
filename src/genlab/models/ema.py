"""The generator's exponential moving average: what samples, grids and metrics use.

Only the generator is averaged (Lightning's own ``WeightAveraging`` would average the whole
module, discriminator included). A BatchNorm generator's EMA copy gets statistics of its own
weights: averaged like the weights, or recomputed on fixed noise (standing statistics). A
generator without BatchNorm can copy its buffers instead, as StyleGAN2-ADA and R3GAN do (their
``w_avg``: the truncation centre tracked by the raw generator).
"""

import copy
from typing import Literal

import torch
from torch import nn

from genlab.rng import seeded

EMAStats = Literal["standing", "average", "copy"]

# Standing statistics of the EMA generator (BigGAN's accumulate_standing_stats): the BatchNorm
# average over this many batches of fixed noise, recomputed whenever the EMA weights changed.
STANDING_BATCHES, STANDING_BATCH_SIZE, STANDING_SEED = 8, 128, 0


def _stale_standing(module: "GeneratorEMA", incompatible_keys) -> None:
    """After load_state_dict: the loaded EMA weights need standing statistics of their own."""
    module._standing_at = -1  # a module-level function, so the module still pickles (DDP spawn)


class GeneratorEMA:
    """Mixin for a LightningModule with ``generator``, ``latent_dim``, ``num_classes`` and
    ``hparams.ema_decay`` / ``hparams.ema_stats``: keeps ``generator_ema`` (a state-dict entry,
    so checkpoints carry it) and samples through it."""

    generator: nn.Module
    generator_ema: nn.Module | None

    def init_ema(self, generator: nn.Module, enabled: bool) -> None:
        """Start the EMA copy of ``generator`` (none when not ``enabled``)."""
        self.generator_ema = copy.deepcopy(generator).requires_grad_(False) if enabled else None
        self._ema_updates, self._standing_at = 0, -1  # standing stats are stale when they differ
        # loaded EMA weights (resume, genlab-eval, genlab-sample) need their own statistics
        self.register_load_state_dict_post_hook(_stale_standing)

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

    def _standing_stats(self) -> None:
        """Set the EMA generator's BatchNorm statistics to its own, on fixed noise."""
        standing_stats(self.generator_ema, self.latent_dim, self.num_classes, self.device)
        self._standing_at = self._ema_updates

    @torch.no_grad()
    def load_posthoc(self, state: dict[str, torch.Tensor]) -> None:
        """Sample through ``state`` (``generator.*`` tensors: a post-hoc EMA profile).

        Into the EMA copy when there is one (standing statistics recomputed before use); else
        into the generator, with standing statistics computed now. Either way the state dict
        keeps its keys, so a checkpoint written from it loads with the run's config.
        """
        named = {k.removeprefix("generator."): v for k, v in state.items()}
        if self.generator_ema is None:
            self.generator.load_state_dict(named, strict=False)
            standing_stats(self.generator, self.latent_dim, self.num_classes, self.device)
            return
        self.generator_ema.load_state_dict(named, strict=False)
        self.hparams.ema_stats = "standing"  # averaged statistics belong to no profile here
        self._ema_updates += 1  # the standing statistics are stale

    @torch.no_grad()
    def _update_ema(self, decay: float | None = None) -> None:
        """Average G into its EMA copy with ``decay`` (default ``model.ema_decay``)."""
        if self.generator_ema is None:
            return
        decay = self.hparams.ema_decay if decay is None else decay
        self._ema_updates += 1
        for ema_p, p in zip(
            self.generator_ema.parameters(), self.generator.parameters(), strict=True
        ):
            ema_p.lerp_(p, 1.0 - decay)
        # BatchNorm statistics averaged like the weights (BigGAN-PyTorch's ema): copied ones
        # would normalise the averaged weights by statistics of the raw weights. Under
        # ema_stats="standing" these are replaced before use; "copy" copies every buffer
        # (StyleGAN2-ADA's training_loop: b_ema.copy_(b), w_avg included).
        average = self.hparams.ema_stats != "copy"
        for ema_b, b in zip(self.generator_ema.buffers(), self.generator.buffers(), strict=True):
            if average and ema_b.is_floating_point():
                ema_b.lerp_(b, 1.0 - decay)
            else:
                ema_b.copy_(b)  # num_batches_tracked: a count, not a statistic


@torch.no_grad()
def standing_stats(g: nn.Module, latent_dim: int, num_classes: int, device: torch.device) -> None:
    """Set generator ``g``'s BatchNorm statistics to its own weights', on fixed noise."""
    # _BatchNorm: the base of BatchNorm1d/2d/3d and SyncBatchNorm
    norms = [m for m in g.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    norms = [m for m in norms if m.track_running_stats]
    momenta, was_training = [m.momentum for m in norms], g.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the batches, not a running one
    g.train()
    with seeded(STANDING_SEED, device):  # deterministic; training noise untouched
        for _ in range(STANDING_BATCHES if norms else 0):
            z = torch.randn(STANDING_BATCH_SIZE, latent_dim, device=device)
            g(z, torch.randint(num_classes, (len(z),), device=device) if num_classes else None)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    g.train(was_training)
