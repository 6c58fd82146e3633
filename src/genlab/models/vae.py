"""The VAE LightningModule: Gaussian posterior, Bernoulli, Gaussian or 8-bit likelihood, ELBO."""

import logging
import math
from collections.abc import Callable
from functools import partial
from typing import Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from genlab import losses
from genlab.config import check_optimizer
from genlab.data.datasets import Binarized, fetch
from genlab.errors import GenlabError
from genlab.models.diagnostics import LatentMoments, LayerTerms
from genlab.models.loop import finite_or_skip, logs_written
from genlab.models.vae_options import Likelihood, Posterior, Prior, check_options
from genlab.nets.iaf import IAF
from genlab.nets.priors import VampPrior, log_normal_mixture

log = logging.getLogger("genlab")

OptimizerFactory = Callable[..., torch.optim.Optimizer]
# likelihoods of the 8-bit data themselves: val/nll is a probability, val/nll_bpd the papers' bpd
DISCRETE = ("discretized_gaussian", "categorical")


def reconstruction_rows(model: nn.Module, x: Tensor, labels: Tensor, nrow: int) -> Tensor:
    """Rows of ``nrow`` inputs, each followed by a row of their reconstructions."""
    n = len(x) // nrow * nrow
    x, labels = x[:n], labels[:n]
    pairs = torch.stack([x, model.reconstruct(x, labels)])  # (2, N, C, H, W)
    rows = pairs.view(2, n // nrow, nrow, *x.shape[1:]).transpose(0, 1)  # (R, 2, nrow, C, H, W)
    return rows.reshape(-1, *x.shape[1:])


def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
    """A draw of N(mu, exp(logvar)) that gradients flow through: (B, Z)."""
    return mu + torch.randn_like(mu) * (0.5 * logvar).exp()


def check_categorical(out: Tensor, channels: int | None = None) -> None:
    """A categorical decoder gives 256 logits per image channel: (B, 256 * C, H, W)."""
    n = out.shape[1]
    if n % losses.LEVELS or not n or (channels is not None and n != losses.LEVELS * channels):
        want = f"{losses.LEVELS * channels}" if channels is not None else "a multiple of 256"
        raise GenlabError(
            f"model.likelihood=categorical needs {want} decoder channels (256 per image "
            f"channel), got {n}: set model.decoder.channels"
        )


def pixel_mean(dataset: Dataset, chunk: int = 4096) -> Tensor:
    """Mean image (C, H, W) in [0, 1] of a dataset's grey levels, before any binarisation."""
    if isinstance(dataset, Binarized):
        dataset = dataset.base  # the IWAE authors average the grey levels they binarise per batch
    total = 0
    for start in range(0, len(dataset), chunk):
        images = fetch(dataset, list(range(start, min(start + chunk, len(dataset))))).images
        total = total + images.double().sum(0)  # float64: the same mean in any chunking
    return ((total / len(dataset) + 1) / 2).float()


def density_warning(likelihood: str) -> str:
    """Why val/nll is not the probability of the data under ``likelihood``, in one line."""
    what = (
        "model.likelihood=bernoulli on non-binary pixels (data.binarize=false) is not normalised"
        if likelihood == "bernoulli"
        else f"model.likelihood={likelihood} is a density on [-1, 1]"
    )
    return (
        f"{what}: val/nll is not -log P of the 8-bit data and val/nll_bpd is not logged; "
        "model.likelihood=discretized_gaussian (or categorical) gives bits/dim"
    )


class VAE(pl.LightningModule):
    """Variational autoencoder; ``encoder(x) -> (mu, logvar)``, ``decoder(z) -> logits or means``.

    Bernoulli: the decoder gives per-pixel logits of (x + 1) / 2. Gaussian: it gives the mean
    in [-1, 1] pixel units, with a fixed ``gaussian_std`` or one learned scalar scale (a density).
    Discretized Gaussian: the same mean and scale, scored as the mass of each pixel's 8-bit bin.
    Categorical: the decoder gives 256 logits per subpixel, (B, 256 * C, H, W).
    ``binarized`` says the data are binary (``data.binarize``): only then is Bernoulli a
    probability of the data. Stochastic layers above z1 come from the nets (``encoder.upper``,
    ``decoder.priors``: genlab.nets.hvae); ``prior=vamp`` puts a VampPrior on the top layer.
    """

    default_monitor = "val/elbo"
    fallback_monitor = "val/elbo"
    # what post-hoc EMA averages
    sampling_state = ("encoder.", "decoder.", "vamp.", "flow.", "log_std")

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        likelihood: Likelihood = "bernoulli",
        gaussian_std: float | None = None,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        iwae_k: int = 1,
        nll_k: int = 8,
        binarized: bool = False,
        nonfinite: Literal["stop", "skip", "off"] = "stop",
        num_grid: int = 64,
        prior: Prior = "standard",
        prior_components: int = 500,
        pseudo_inputs_mean: float = 0.05,
        pseudo_inputs_std: float = 0.01,
        image_shape: tuple[int, int, int] | None = None,
        posterior: Posterior = "gaussian",
        iaf_steps: int = 2,
        iaf_hidden: int = 128,
    ) -> None:
        super().__init__()
        check_options(
            likelihood=likelihood, gaussian_std=gaussian_std, beta=beta,
            kl_warmup_steps=kl_warmup_steps, iwae_k=iwae_k, nll_k=nll_k, nonfinite=nonfinite,
            prior=prior, posterior=posterior, iaf_steps=iaf_steps, iaf_hidden=iaf_hidden,
        )  # fmt: skip
        # checked at fit start, not here: a saved config without the key must still load
        self.bias_from_data = getattr(decoder, "output_bias", "zero") == "data_logodds"
        self.save_hyperparameters(
            ignore=["encoder", "decoder", "optimizer", "scheduler"], logger=False
        )
        self.encoder, self.decoder = encoder, decoder
        check_optimizer(optimizer, "model.optimizer")
        self.optimizer, self.scheduler = optimizer, scheduler
        if getattr(encoder, "num_classes", 0) != getattr(decoder, "num_classes", 0):
            raise GenlabError("model.encoder.num_classes and model.decoder.num_classes differ")
        self.latent_dim: int = encoder.latent_dim
        self.num_classes: int = getattr(decoder, "num_classes", 0)
        dims = [getattr(encoder, "latent_dims", [encoder.latent_dim])]
        dims.append(getattr(decoder, "latent_dims", dims[0]))
        if len(self.upper) != len(self.priors) or dims[0] != dims[1]:
            raise GenlabError(
                f"model.encoder's stochastic layers {dims[0]} and model.decoder's {dims[1]} differ"
                " (latent_dim, upper_dims)"
            )
        self.top_dim: int = dims[0][-1]
        self.flow = IAF(self.latent_dim, iaf_steps, iaf_hidden) if posterior == "iaf" else None
        self._moments = LatentMoments()  # the validation epoch's, for the diagnostics
        self.vamp = None
        if prior == "vamp":
            self.vamp = self.build_vamp(prior_components, image_shape)
        if not self.nll_is_probability():
            log.warning(density_warning(likelihood))
        learned = likelihood in ("gaussian", "discretized_gaussian") and gaussian_std is None
        self.log_std = nn.Parameter(torch.zeros(())) if learned else None
        g = torch.Generator().manual_seed(0)
        self.register_buffer("fixed_z", torch.randn(num_grid, self.latent_dim, generator=g))
        self.register_buffer("fixed_labels", torch.arange(num_grid) % max(self.num_classes, 1))
        self._grid_batch: tuple[Tensor, Tensor] | None = None

    def build_vamp(self, components: int, image_shape: tuple[int, int, int] | None) -> VampPrior:
        """The VampPrior over z1 of a one-stochastic-layer, unconditional encoder."""
        if components < 1:
            raise GenlabError(f"model.prior_components={components} must be >= 1")
        if self.num_classes:
            raise GenlabError("model.prior=vamp needs an unconditional model (num_classes=0)")
        if self.upper:
            # q(z2 | u) = integral of q(z2 | z1) q(z1 | u) has no closed form in this hierarchy
            raise GenlabError(
                "model.prior=vamp needs one stochastic layer (model=vae or iwae), but "
                f"model.encoder.upper_dims={self.encoder.latent_dims[1:]} adds more"
            )
        if image_shape is None:
            raise GenlabError("model.prior=vamp needs model.image_shape (channels, size, size)")
        hp = self.hparams
        return VampPrior(components, image_shape, hp.pseudo_inputs_mean, hp.pseudo_inputs_std)

    def on_fit_start(self) -> None:
        """The decoder's output bias from the training images (nets.hvae), once, before step 1.

        Not on resume: the checkpoint holds the trained bias.
        """
        if not self.bias_from_data or self.trainer.ckpt_path:
            return
        if self.hparams.likelihood != "bernoulli":
            raise GenlabError(
                "model.decoder.output_bias=data_logodds starts Bernoulli logits at the data's "
                f"log-odds, but model.likelihood={self.hparams.likelihood}: set it to zero"
            )
        datamodule = self.trainer.datamodule
        if not hasattr(datamodule, "dataset"):
            raise GenlabError(
                "model.decoder.output_bias=data_logodds needs the training images of an "
                "ImageDataModule (trainer.fit(model, datamodule=...)); or set it to zero"
            )
        mean = pixel_mean(datamodule.dataset("train")) if self.trainer.is_global_zero else None
        self.decoder.init_output_bias(self.trainer.strategy.broadcast(mean, src=0))
        self.bias_from_data = False  # a second fit of this module continues from its weights

    def configure_optimizers(self):
        optimizer = self.optimizer(self.parameters())
        if self.scheduler is None:
            return optimizer
        # stepped once per epoch (the IWAE paper's schedule is in epochs)
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler(optimizer)}

    def networks(self) -> list[nn.Module]:
        """The networks a speed-up (compile, channels-last) applies to."""
        return [self.encoder, self.decoder]

    def _y(self, labels: Tensor | None) -> Tensor | None:
        return labels if self.num_classes else None

    def _log_std(self) -> Tensor | float:
        return self.log_std if self.log_std is not None else math.log(self.hparams.gaussian_std)

    def nll_is_probability(self) -> bool:
        """True when val/nll is -log P of the (8-bit or binary) data, so bits/dim are defined."""
        likelihood = self.hparams.likelihood
        return likelihood in DISCRETE or (likelihood == "bernoulli" and self.hparams.binarized)

    def decode_mean(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Mean image of p(x | z) in [-1, 1]."""
        out = self.decoder(z, self._y(labels))
        if self.hparams.likelihood == "bernoulli":
            return torch.sigmoid(out) * 2 - 1
        if self.hparams.likelihood == "categorical":
            check_categorical(out)
            return losses.categorical_mean(out, out.shape[1] // losses.LEVELS)
        return out.clamp(-1, 1)

    def sample(self, n: int, labels: Tensor | None = None) -> Tensor:
        """Decode ``n`` prior draws to mean images (B, C, H, W) in [-1, 1]."""
        if self.num_classes and labels is None:
            labels = torch.randint(self.num_classes, (n,), device=self.device)
        return self.decode_mean(self.prior_draw(n), labels)

    def prior_draw(self, n: int) -> Tensor:
        """z1 (n, Z1) from the generative model: the top prior, then each p(z_l | z_l+1) down."""
        if self.vamp is not None:
            z = self.vamp.sample(n, self.encoder)
        else:
            z = torch.randn(n, self.top_dim, device=self.device)
        for layer in reversed(self.priors):
            z = reparameterize(*layer(z))
        return z

    def posterior_draw(self, first: tuple[Tensor, Tensor]) -> tuple[list[Tensor], Tensor]:
        """One reparameterised draw [z1, ..., zL] of q(z | x) and its log q (B,).

        ``first`` is q(z1 | x)'s (mu, logvar), computed once for all draws.
        """
        zs, log_qs = self.posterior_layers(first)
        log_q = log_qs[0]
        for term in log_qs[1:]:
            log_q = log_q + term
        return zs, log_q

    def posterior_layers(self, first: tuple[Tensor, Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """One draw [z1, ..., zL] of q(z | x) and each layer's log q (B,), bottom up."""
        z, log_q = self.first_draw(first)
        zs, log_qs = [z], [log_q]
        for layer in self.upper:
            mu, logvar = layer(zs[-1])
            zs.append(reparameterize(mu, logvar))
            log_qs.append(losses.log_normal(zs[-1], mu, logvar))
        return zs, log_qs

    def first_draw(self, first: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """z1 (B, Z) from q(z1 | x) and its log q (B,): Gaussian, or flowed by the IAF."""
        if self.flow is not None:
            return self.flow(*first, torch.randn_like(first[0]))
        z = reparameterize(*first)
        return z, losses.log_normal(z, *first)

    def log_prior(self, zs: list[Tensor], top: tuple[Tensor, Tensor] | None) -> Tensor:
        """log p(zL) + sum_l log p(z_l | z_l+1) per example (B,); ``top``: VampPrior components."""
        log_ps = self.prior_layers(zs, top)
        log_p = log_ps[-1]
        for term in log_ps[:-1]:
            log_p = log_p + term
        return log_p

    def prior_layers(self, zs: list[Tensor], top: tuple[Tensor, Tensor] | None) -> list[Tensor]:
        """Each layer's log p (B,), bottom up: log p(z_l | z_l+1) for l < L, then log p(zL)."""
        log_ps = [
            losses.log_normal(z, *layer(above))
            for layer, z, above in zip(self.priors, zs, zs[1:], strict=False)
        ]
        if top is not None:
            log_ps.append(log_normal_mixture(zs[-1], *top))
        else:
            log_ps.append(losses.log_standard_normal(zs[-1]))
        return log_ps

    @property
    def upper(self) -> nn.ModuleList | tuple:
        """q(z_l+1 | z_l) for the stochastic layers above z1 (HierarchicalEncoder), else ()."""
        return getattr(self.encoder, "upper", ())

    @property
    def priors(self) -> nn.ModuleList | tuple:
        """p(z_l | z_l+1) for the stochastic layers above z1 (HierarchicalDecoder), else ()."""
        return getattr(self.decoder, "priors", ())

    @property
    def analytic_kl(self) -> bool:
        """One Gaussian layer under N(0, I): the KL term has a closed form.

        Not with an IAF posterior: its KL is the one-draw estimate log q(z_T | x) - log p(z_T).
        """
        return self.vamp is None and not self.upper and self.flow is None

    def reconstruct(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Decode the posterior mean of ``x`` (with IAF: the flowed mean, eps = 0)."""
        mu, logvar = self.encoder(x, self._y(labels))
        if self.flow is not None:
            mu = self.flow(mu, logvar, torch.zeros_like(mu))[0]
        return self.decode_mean(mu, labels)

    def nll(self, out: Tensor, x: Tensor) -> Tensor:
        """-log p(x | z) per example (B,), from decoder output ``out``."""
        likelihood = self.hparams.likelihood
        if likelihood == "bernoulli":
            return losses.bernoulli_nll(out, x)
        if likelihood == "categorical":
            check_categorical(out, x.shape[1])
            return losses.categorical_nll(out, x)
        if likelihood == "discretized_gaussian":
            return losses.discretized_gaussian_nll(out, x, self._log_std())
        return losses.gaussian_nll(out, x, self._log_std())

    def elbo_terms(self, x: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        """Reconstruction NLL and KL per example (B,), one reparameterised draw.

        The KL is in closed form for one layer under N(0, I), else the one-draw estimate
        log q(z | x) - log p(z), so that recon + kl is -log_weights(x, 1) for the same draw.
        """
        y = self._y(labels)
        first = self.encoder(x, y)  # (mu, logvar) of q(z1 | x), (B, Z) each
        if self.analytic_kl:
            z = reparameterize(*first)
            return {"recon": self.nll(self.decoder(z, y), x), "kl": losses.kl_normal(*first)}
        zs, log_q = self.posterior_draw(first)
        kl = log_q - self.log_prior(zs, self.vamp_components())
        return {"recon": self.nll(self.decoder(zs[0], y), x), "kl": kl}

    def vamp_components(self) -> tuple[Tensor, Tensor] | None:
        """The VampPrior's component means and log-variances (K, Z), or None (standard prior)."""
        return None if self.vamp is None else self.vamp.components(self.encoder)

    def log_weights(self, x: Tensor, k: int, labels: Tensor | None = None) -> Tensor:
        """Importance weights log p(x, z_i) - log q(z_i | x) for k posterior draws: (k, B)."""
        y = self._y(labels)
        first, top = self.encoder(x, y), self.vamp_components()  # shared by the k draws
        out = []
        for _ in range(k):
            zs, log_q = self.posterior_draw(first)
            log_px_z = -self.nll(self.decoder(zs[0], y), x)
            out.append(log_px_z + self.log_prior(zs, top) - log_q)
        return torch.stack(out)

    def iw_nll(self, x: Tensor, k: int, labels: Tensor | None = None) -> Tensor:
        """Importance-weighted estimate of -log p(x) per example (B,), in nats (Burda et al. 2016).

        An upper bound on the true NLL that tightens as k grows; k = 1 is the negative ELBO.
        """
        return math.log(k) - torch.logsumexp(self.log_weights(x, k, labels), 0)

    def kl_weight(self) -> float:
        """Beta, ramped linearly from 0 over ``kl_warmup_steps`` optimizer steps."""
        warmup = self.hparams.kl_warmup_steps
        if warmup == 0:
            return self.hparams.beta
        return self.hparams.beta * min(1.0, self.global_step / warmup)

    def training_loss(self, terms: dict[str, Tensor]) -> Tensor:
        """The minimised objective from ``elbo_terms``: recon + kl_weight * KL, batch mean."""
        return (terms["recon"] + self.kl_weight() * terms["kl"]).mean()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        x, labels = batch
        written = logs_written(self.trainer)  # each self.log costs about as much as a tiny conv
        if self.hparams.iwae_k > 1:
            lw = self.log_weights(x, self.hparams.iwae_k, labels)  # (k, B)
            bound = torch.logsumexp(lw, 0) - math.log(self.hparams.iwae_k)
            loss = -bound.mean()
            if written:
                self.log("train/iwae_bound", bound.mean())
        else:
            terms = self.elbo_terms(x, labels)
            loss = self.training_loss(terms)
            if written:
                self.log("train/recon", terms["recon"].mean())
                self.log("train/kl", terms["kl"].mean())
                self.log("train/elbo", -(terms["recon"] + terms["kl"]).mean())
        if written:  # the progress bar's value refreshes at the same steps
            self.log("train/loss", loss, prog_bar=True)
        # returning None makes Lightning skip backward and the optimizer step
        return loss if finite_or_skip(self, loss, "train/loss", self.hparams.nonfinite) else None

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, labels = batch
        if batch_idx == 0 and self._grid_batch is None:
            n = len(self.fixed_z)
            self._grid_batch = (x[:n].clone(), labels[:n].clone())
        terms = self.elbo_terms(x, labels)
        kw = {"sync_dist": True, "batch_size": len(x)}
        self.log("val/recon", terms["recon"].mean(), **kw)
        self.log("val/kl", terms["kl"].mean(), **kw)
        self.log("val/elbo", -(terms["recon"] + terms["kl"]).mean(), prog_bar=True, **kw)
        self.log("val/mse", ((self.reconstruct(x, labels) - x) ** 2).mean(), **kw)
        if self.hparams.nll_k:
            nll = self.iw_nll(x, self.hparams.nll_k, labels).mean()
            self.log("val/nll", nll, **kw)
            if self.nll_is_probability():
                self.log("val/nll_bpd", nll / (x[0].numel() * math.log(2)), **kw)
        self.accumulate_diagnostics(x, labels)

    def diagnostic_terms(self, x: Tensor, labels: Tensor | None = None) -> list[LayerTerms]:
        """Per stochastic layer: posterior mean (B, Z_l), KL per dim (B, Z_l) or None, KL (B,).

        The mean is E_q[z_l | x] along the mean path (each layer's mean given the means below,
        not the mean over the draws of the layers below); with IAF it is z_T at eps = 0. The
        per-dimension KL has a closed form for one diagonal Gaussian layer under N(0, I) only;
        each layer's KL is otherwise the one-draw estimate log q(z_l | .) - log p(z_l | z_l+1).
        """
        y = self._y(labels)
        first = self.encoder(x, y)  # (mu, logvar), (B, Z) each
        if self.analytic_kl:
            mu, logvar = first
            dims = 0.5 * (mu**2 + logvar.exp() - 1 - logvar)  # (B, Z), KL per dim in closed form
            return [(mu, dims, dims.sum(1))]
        mean = first[0] if self.flow is None else self.flow(*first, torch.zeros_like(first[0]))[0]
        means = [mean]
        for layer in self.upper:
            means.append(layer(means[-1])[0])
        zs, log_qs = self.posterior_layers(first)
        log_ps = self.prior_layers(zs, self.vamp_components())
        return [(m, None, q - p) for m, q, p in zip(means, log_qs, log_ps, strict=True)]

    @torch.no_grad()
    def accumulate_diagnostics(self, x: Tensor, labels: Tensor | None = None) -> None:
        """Add a batch's sums of posterior means, their squares and KLs to the epoch's."""
        self._moments.add(self.diagnostic_terms(x, labels))

    def on_validation_epoch_start(self) -> None:
        self._moments = LatentMoments()

    def on_validation_epoch_end(self) -> None:
        for name, value in self.diagnostics().items():
            # the same value on every process (its sums were reduced): averaging it changes nothing
            self.log(name, value, sync_dist=True)

    def diagnostics(self) -> dict[str, float]:
        """Active units, KL per layer and per dimension over the epoch's validation batches
        (genlab.models.diagnostics), summed over processes under DDP."""
        trainer, reduce = self._trainer, None
        if trainer is not None and trainer.world_size > 1:
            reduce = partial(trainer.strategy.reduce, reduce_op="sum")
        return self._moments.summary(reduce)

    def grid_images(self) -> dict[str, Tensor]:
        """Prior samples from the fixed noise; validation inputs above their reconstructions."""
        labels = self.fixed_labels if self.num_classes else None
        z = self.fixed_z
        if not self.analytic_kl:  # a VampPrior or layers above z1: the same seeded draw each time
            cuda = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(0)
                z = self.prior_draw(len(self.fixed_z))
        images = {"samples": self.decode_mean(z, labels)}
        if self._grid_batch is not None and len(self._grid_batch[0]) >= 8:
            x, y = (t[:32].to(self.device) for t in self._grid_batch)
            images["reconstructions"] = reconstruction_rows(self, x, y, nrow=8)
        return images
