"""The VAE module's options, checked before it is built: one line naming the model key for each
bad value or combination (genlab.models.vae builds from what passes)."""

from typing import Literal

from genlab.errors import GenlabError, check_choice
from genlab.models.loop import NONFINITE

Likelihood = Literal["bernoulli", "gaussian", "discretized_gaussian", "categorical"]
Prior = Literal["standard", "vamp"]
Posterior = Literal["gaussian", "iaf"]


def check_iwae(iwae_k: int, beta: float, kl_warmup_steps: int) -> None:
    """The IWAE bound has no KL term to weight: reject beta and KL warm-up with it."""
    ignored = [f"model.beta={beta}"] if beta != 1 else []
    ignored += [f"model.kl_warmup_steps={kl_warmup_steps}"] if kl_warmup_steps else []
    if iwae_k > 1 and ignored:
        raise GenlabError(
            f"{' and '.join(ignored)} would be ignored by the IWAE bound (model.iwae_k={iwae_k}):"
            " set model.beta=1 and model.kl_warmup_steps=0, or model.iwae_k=1"
        )


def check_options(
    *,
    likelihood: str,
    gaussian_std: float | None,
    beta: float,
    kl_warmup_steps: int,
    iwae_k: int,
    nll_k: int,
    nonfinite: str,
    prior: str,
    posterior: str,
    iaf_steps: int,
    iaf_hidden: int,
) -> None:
    """VAE's constructor options checked in one place."""
    check_choice("model.posterior", posterior, Posterior.__args__)
    if posterior == "iaf" and (iaf_steps < 1 or iaf_hidden < 1):
        raise GenlabError(
            f"model.iaf_steps={iaf_steps} and model.iaf_hidden={iaf_hidden} must be >= 1"
        )
    if posterior == "iaf" and prior == "vamp":
        # the VampPrior is the mixture of the model's own posteriors: Gaussian ones here
        raise GenlabError("model.posterior=iaf with model.prior=vamp: use one of the two")
    check_choice("model.prior", prior, Prior.__args__)
    check_choice("model.likelihood", likelihood, Likelihood.__args__)
    check_choice("model.nonfinite", nonfinite, NONFINITE)
    if beta < 0:
        raise GenlabError(f"model.beta={beta} must be >= 0")
    if gaussian_std is not None and gaussian_std <= 0:
        raise GenlabError(f"model.gaussian_std={gaussian_std} must be > 0 (or null: learned)")
    if iwae_k < 1 or kl_warmup_steps < 0 or nll_k < 0:
        raise GenlabError(
            "model.iwae_k must be >= 1, model.kl_warmup_steps >= 0 and model.nll_k >= 0"
        )
    check_iwae(iwae_k, beta, kl_warmup_steps)
