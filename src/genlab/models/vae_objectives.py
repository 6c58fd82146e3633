"""VAEs trained on other objectives than the ELBO: beta-TCVAE, FactorVAE, InfoVAE, WAE-MMD.

Each keeps the VAE's networks, likelihoods, sampling and validation (val/elbo, val/nll), and
replaces its training step. ``objective(x, labels)`` gives the loss and its terms for a batch,
so a test can score the same objective before and after training.
"""

import warnings
from typing import Literal

import torch
from torch import Tensor, nn

from genlab import losses
from genlab.config import check_optimizer
from genlab.errors import GenlabError, check_choice
from genlab.models.loop import finite_or_skip, logs_written
from genlab.models.manual import ManualOptimization
from genlab.models.vae import VAE, OptimizerFactory, reparameterize

Encoder = Literal["gaussian", "deterministic"]


def check_weights(name: str, **weights: float) -> None:
    """Each objective weight is a number >= 0; the message names its key."""
    for key, value in weights.items():
        if value < 0:
            raise GenlabError(f"model.{key}={value} must be >= 0 ({name})")


class ObjectiveVAE(VAE):
    """A VAE whose ``objective`` replaces the ELBO in training; validation stays the VAE's."""

    objective_name = "objective"

    def __init__(self, *args, **kwargs) -> None:
        iwae_k, warmup = kwargs.get("iwae_k", 1), kwargs.get("kl_warmup_steps", 0)
        if iwae_k != 1 or warmup:
            raise GenlabError(
                f"model.iwae_k={iwae_k} and model.kl_warmup_steps={warmup}: {self.objective_name}"
                " trains on its own objective, not the (warmed-up) ELBO or IWAE bound; set "
                "model.iwae_k=1 and model.kl_warmup_steps=0"
            )
        super().__init__(*args, **kwargs)
        if not self.analytic_kl:
            # the decompositions below need q(z | x) Gaussian and p(z) = N(0, I), one layer
            raise GenlabError(
                f"{self.objective_name} needs one Gaussian latent layer under N(0, I): "
                "model.prior=standard, model.posterior=gaussian and no model.encoder.upper_dims"
            )

    def objective(self, x: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        """Scalar ``loss`` and the per-batch means of its terms."""
        raise NotImplementedError

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        x, labels = batch
        terms = self.objective(x, labels)
        loss = terms.pop("loss")
        if logs_written(self.trainer):
            for key, value in terms.items():
                self.log(f"train/{key}", value)
            self.log("train/loss", loss, prog_bar=True)
        return loss if finite_or_skip(self, loss, "train/loss", self.hparams.nonfinite) else None


class TCVAE(ObjectiveVAE):
    """beta-TCVAE (Chen et al. 2018): recon + alpha MI + beta TC + gamma dimension-wise KL.

    MI, TC and dimension-wise KL by minibatch-weighted sampling (losses.tc_vae_terms), which
    needs N, the training set's size: ``dataset_size``, or read from the datamodule at fit start.
    ``mss``: minibatch stratified sampling instead (losses.mss_log_weights).
    ``beta`` is the TC weight here (the paper's name), not the KL weight.
    """

    objective_name = "model=beta_tcvae"

    def __init__(
        self,
        *args,
        alpha: float = 1.0,
        gamma: float = 1.0,
        dataset_size: int | None = None,
        mss: bool = False,
        **kwargs,
    ) -> None:
        check_weights(self.objective_name, alpha=alpha, gamma=gamma)
        if dataset_size is not None and dataset_size < 1:
            raise GenlabError(f"model.dataset_size={dataset_size} must be >= 1 (or null)")
        super().__init__(*args, **kwargs)
        self.dataset_size = dataset_size

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.hparams.dataset_size is not None:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if not hasattr(datamodule, "dataset"):
            raise GenlabError(
                "model=beta_tcvae needs the training set's size N: set model.dataset_size, "
                "or fit with an ImageDataModule"
            )
        self.dataset_size = len(datamodule.dataset("train"))

    def objective(self, x: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        if self.dataset_size is None:
            raise GenlabError("model.dataset_size is unknown before fit: set it (N)")
        y = self._y(labels)
        mu, logvar = self.encoder(x, y)  # (B, Z) each
        z = reparameterize(mu, logvar)
        recon = self.nll(self.decoder(z, y), x)
        t = losses.tc_vae_terms(z, mu, logvar, self.dataset_size, self.hparams.mss)
        hp = self.hparams
        loss = recon + hp.alpha * t["mi"] + hp.beta * t["tc"] + hp.gamma * t["dim_kl"]
        return {
            "loss": loss.mean(),
            "recon": recon.mean(),
            "mi": t["mi"].mean(),
            "tc": t["tc"].mean(),
            "dim_kl": t["dim_kl"].mean(),
        }


class FactorVAE(ManualOptimization, ObjectiveVAE):
    """FactorVAE (Kim & Mnih 2018): recon + beta KL + gamma TC, TC from a discriminator.

    The discriminator tells draws of q(z) from dimension-wise permuted ones (prod_d q(z_d)); TC
    is its log density ratio (losses.factor_tc). Each batch is split in halves: the first trains
    the VAE and gives D its q(z) draws, the second is permuted for D (the paper's Alg. 1 draws
    two batches). Two optimizer steps a batch: VAE, then D; global_step counts both.
    """

    objective_name = "model=factor_vae"

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        optimizer: OptimizerFactory,
        discriminator: nn.Module,
        optimizer_d: OptimizerFactory,
        gamma: float = 35.0,
        grad_clip: float = 0.0,
        **kwargs,
    ) -> None:
        check_weights(self.objective_name, gamma=gamma, grad_clip=grad_clip)
        with warnings.catch_warnings():  # VAE's hparams see the discriminator; dropped below
            warnings.filterwarnings("ignore", message="Attribute 'discriminator'")
            super().__init__(encoder, decoder, optimizer, **kwargs)
        if self.scheduler is not None:
            raise GenlabError("model.scheduler: model=factor_vae steps no scheduler; set null")
        check_optimizer(optimizer_d, "model.optimizer_d")
        # VAE's save_hyperparameters reads every subclass frame: keep the nets out of hparams
        self.save_hyperparameters(
            ignore=["encoder", "decoder", "optimizer", "scheduler", "discriminator", "optimizer_d"],
            logger=False,
        )
        self.discriminator, self.optimizer_d = discriminator, optimizer_d
        self.automatic_optimization = False

    def configure_optimizers(self):
        vae = [p for n, p in self.named_parameters() if not n.startswith("discriminator.")]
        return self.optimizer(vae), self.optimizer_d(self.discriminator.parameters())

    def objective(self, x: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        terms, _ = self._vae_terms(x, labels)
        return terms

    def _vae_terms(self, x: Tensor, labels: Tensor | None) -> tuple[dict[str, Tensor], Tensor]:
        """The VAE's loss and terms on one half-batch, and its posterior draws z (B, Z)."""
        y = self._y(labels)
        mu, logvar = self.encoder(x, y)
        z = reparameterize(mu, logvar)
        recon, kl = self.nll(self.decoder(z, y), x), losses.kl_normal(mu, logvar)
        tc = losses.factor_tc(self.discriminator(z))
        loss = (recon + self.hparams.beta * kl + self.hparams.gamma * tc).mean()
        return {"loss": loss, "recon": recon.mean(), "kl": kl.mean(), "tc": tc.mean()}, z

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, labels = batch
        if len(x) < 4:
            raise GenlabError(
                f"model=factor_vae halves each batch, and {len(x)} images leave too few to "
                "permute: set data.batch_size >= 4"
            )
        (x_vae, x_perm), (y_vae, y_perm) = x.chunk(2), labels.chunk(2)
        opt_vae, opt_d = self.optimizers()
        with self.toggled_optimizer(opt_vae):
            terms, z = self._vae_terms(x_vae, y_vae)
            self._step(opt_vae, terms["loss"], "train/loss")
        with torch.no_grad():  # draws of prod_d q(z_d): the other half, each column shuffled
            z_perm = losses.permute_dims(reparameterize(*self.encoder(x_perm, self._y(y_perm))))
        with self.toggled_optimizer(opt_d):
            d_loss = losses.factor_d_loss(
                self.discriminator(z.detach()), self.discriminator(z_perm)
            )
            self._step(opt_d, d_loss, "train/d_loss")
        self._update_scaler()
        if logs_written(self.trainer):
            loss = terms.pop("loss")
            for key, value in terms.items():
                self.log(f"train/{key}", value)
            self.log("train/d_loss", d_loss)
            self.log("train/loss", loss, prog_bar=True)

    def networks(self) -> list[nn.Module]:
        return [*super().networks(), self.discriminator]


class MMDVAE(ObjectiveVAE):
    """An autoencoder whose aggregate posterior q(z) is pulled to p(z) = N(0, I) by MMD.

    MMD is the unbiased estimate between the batch's z and as many prior draws
    (losses.mmd_unbiased), with the IMQ kernel summed over ``scales`` (WAE's code) or one RBF,
    both at C = 2 Z ``kernel_bandwidth``^2 (pythae's ``kernel_choice``, ``kernel_bandwidth``).
    """

    def __init__(
        self,
        *args,
        lbd: float,
        kernel: losses.Kernel = "imq",
        kernel_bandwidth: float = 1.0,
        scales: tuple[float, ...] = losses.IMQ_SCALES,
        **kwargs,
    ) -> None:
        check_choice("model.kernel", kernel, losses.Kernel.__args__)
        if kernel_bandwidth <= 0 or not scales or min(scales) <= 0:
            raise GenlabError(
                f"model.kernel_bandwidth={kernel_bandwidth} and model.scales={list(scales)} "
                "must be > 0 (scales: a non-empty list)"
            )
        check_weights(self.objective_name, lbd=lbd)
        if kwargs.get("beta", 1.0) != 1:
            raise GenlabError(
                f"model.beta={kwargs['beta']} would be ignored by {self.objective_name} (its "
                "weights are model.alpha and model.lbd): set model.beta=1"
            )
        super().__init__(*args, **kwargs)

    def kernel(self, a: Tensor, b: Tensor) -> Tensor:
        """The configured kernel's matrix (N, M) between rows of a and b."""
        hp = self.hparams
        c = 2 * self.latent_dim * hp.kernel_bandwidth**2
        if hp.kernel == "imq":
            return losses.imq_kernel(a, b, c, tuple(hp.scales))
        return losses.rbf_kernel(a, b, c)

    def mmd_to_prior(self, z: Tensor) -> Tensor:
        """Unbiased MMD^2 between posterior draws z (B, Z) and B fresh N(0, I) draws: scalar."""
        return losses.mmd_unbiased(z, torch.randn_like(z), self.kernel)


class InfoVAE(MMDVAE):
    """InfoVAE with the MMD divergence (Zhao et al. 2019, eq. 6 and Sec. 4.1; pythae's
    INFOVAE_MMD): recon + (1 - alpha) KL + (alpha + lbd - 1) MMD."""

    objective_name = "model=info_vae"

    def __init__(self, *args, alpha: float = 0.0, lbd: float = 1000.0, **kwargs) -> None:
        check_weights(self.objective_name, lbd=lbd)
        # a weight below 0 rewards a divergence: the objective then has no lower bound
        if alpha > 1 or alpha + lbd - 1 < 0:
            raise GenlabError(
                f"model.alpha={alpha} and model.lbd={lbd} weight KL by 1 - alpha = {1 - alpha:g}"
                f" and MMD by alpha + lbd - 1 = {alpha + lbd - 1:g}: both must be >= 0"
            )
        super().__init__(*args, lbd=lbd, **kwargs)

    def objective(self, x: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        hp = self.hparams
        y = self._y(labels)
        mu, logvar = self.encoder(x, y)  # (B, Z) each
        z = reparameterize(mu, logvar)
        recon, kl = self.nll(self.decoder(z, y), x), losses.kl_normal(mu, logvar)
        mmd = self.mmd_to_prior(z)
        loss = (recon + (1 - hp.alpha) * kl).mean() + (hp.alpha + hp.lbd - 1) * mmd
        return {"loss": loss, "recon": recon.mean(), "kl": kl.mean(), "mmd": mmd}


class WAE(MMDVAE):
    """WAE-MMD (Tolstikhin et al. 2018, Alg. 1): cost_scale ||x - G(z)||^2 + lbd MMD, no KL.

    The cost is the authors' l2sq on pixels in [0, 1] (tolstikhin/wae wae.py: 0.05 x the summed
    squares; lambda 10 on MNIST), on the decoder's mean image. The encoder is deterministic,
    z = mu (pythae's WAE_MMD; the paper's experiments), unless ``encoder_noise=gaussian``.
    Its logvar then trains on nothing: val/elbo means nothing, and val/mse picks the checkpoint.
    """

    objective_name = "model=wae_mmd"
    default_monitor = "val/mse"
    fallback_monitor = "val/mse"

    def __init__(
        self,
        *args,
        lbd: float = 10.0,
        cost_scale: float = 0.05,
        encoder_noise: Encoder = "deterministic",
        **kwargs,
    ) -> None:
        check_choice("model.encoder_noise", encoder_noise, Encoder.__args__)
        check_weights(self.objective_name, cost_scale=cost_scale)
        super().__init__(*args, lbd=lbd, **kwargs)

    def objective(self, x: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        hp = self.hparams
        mu, logvar = self.encoder(x, self._y(labels))  # (B, Z) each
        z = mu if hp.encoder_noise == "deterministic" else reparameterize(mu, logvar)
        # [-1, 1] pixels halved: the authors' [0, 1] units, where their cost_scale and lbd apply
        cost = ((self.decode_mean(z, labels) - x) / 2).pow(2).flatten(1).sum(1)
        recon, mmd = hp.cost_scale * cost.mean(), self.mmd_to_prior(z)
        return {"loss": recon + hp.lbd * mmd, "recon": recon, "mmd": mmd}
