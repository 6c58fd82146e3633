"""Mixed precision for the GAN's two optimizers."""

from pytorch_lightning.plugins.precision import MixedPrecision


class GANMixedPrecision(MixedPrecision):
    """16-mixed for the GAN's two optimizers: one GradScaler update per iteration, not per step.

    Lightning's plugin calls ``scaler.update()`` after every optimizer step, so a D step that
    overflows lowers the scale before G has stepped with it. PyTorch's recipe for several
    optimizers is ``step`` each, then ``update`` once; ``GAN.training_step`` calls
    ``update_scaler`` after its last step. An iteration that stepped no optimizer (a skipped
    non-finite D loss on a batch without a G step) leaves the scale alone: GradScaler cannot
    update without an inf check of this iteration.
    """

    _stepped = False

    def optimizer_step(self, optimizer, model, closure, **kwargs):
        if self.scaler is None:  # bf16: no scaler
            return super().optimizer_step(optimizer, model=model, closure=closure, **kwargs)
        closure()
        self.scaler.unscale_(optimizer)  # here, so gradient clipping sees true gradients
        self._after_closure(model, optimizer)  # the GAN clips its gradients (model.grad_clip) here
        self._stepped = True
        return self.scaler.step(optimizer, **kwargs)  # skips the step on inf/NaN gradients

    def update_scaler(self) -> None:
        """Adjust the loss scale once, after all of this iteration's optimizer steps."""
        if self.scaler is not None and self._stepped:
            self.scaler.update()
        self._stepped = False
