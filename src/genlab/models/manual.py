"""The manual-optimisation idiom of the two-optimizer modules (GAN, VQGAN), written once."""

import torch
from torch import Tensor, nn

from genlab.config import check_manual_trainer
from genlab.models.loop import finite_or_skip


class ManualOptimization:
    """Mixin for a LightningModule that steps its optimizers itself.

    Needs ``hparams.grad_clip`` and ``hparams.nonfinite``; counts ``skipped_steps``. The module
    sets ``automatic_optimization = False``, calls ``_step`` per optimizer and
    ``_update_scaler`` once at the end of each iteration.
    """

    skipped_steps = 0

    def configure_callbacks(self) -> list:
        """No callbacks; refuses Trainer clipping and accumulation, which manual optimisation
        cannot apply (genlab-train refuses them earlier, from the config)."""
        # the first module hook of a fit, before Lightning's own check raises with a traceback
        trainer = self.trainer
        check_manual_trainer(
            type(self).__name__, trainer.gradient_clip_val, trainer.accumulate_grad_batches
        )
        return []

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip the stepping network's gradient norm to ``model.grad_clip``; with
        ``model.grad_nan_to_num``, first replace NaN by 0 and +-inf by +-1e5 in its gradients
        (StyleGAN2-ADA's training_loop.py does so after every backward, for its float16 blocks)."""
        # runs after GradScaler.unscale_ under 16-mixed (GANMixedPrecision): true gradients
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if self.hparams.get("grad_nan_to_num"):
            for p in params:
                if p.grad is not None:
                    torch.nan_to_num(p.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=p.grad)
        if self.hparams.grad_clip:
            nn.utils.clip_grad_norm_(params, self.hparams.grad_clip)

    def _loss_scale(self) -> float | None:
        """The fp16 GradScaler's current scale, which the penalties' autograd.grad must apply."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        return scaler.get_scale() if scaler is not None and scaler.is_enabled() else None

    def _step(self, optimizer, loss: Tensor, name: str) -> bool:
        """Backward and step ``optimizer`` on ``loss``; a non-finite loss stops or is skipped."""
        if finite_or_skip(self, loss, name, self.hparams.nonfinite):
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            optimizer.step()
            return True
        self.skipped_steps += 1
        return False

    def _update_scaler(self) -> None:
        """16-mixed: update the loss scale once per iteration, after every optimizer stepped."""
        update_scaler = getattr(self.trainer.precision_plugin, "update_scaler", None)
        if update_scaler is not None:
            update_scaler()
