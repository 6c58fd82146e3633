"""Latent samplers fitted after training on a VAE's aggregate posterior q(z1) = E_x q(z1 | x).

``gmm``: a Gaussian mixture fitted by EM on the training set's posterior means (pythae's
GaussianMixtureSampler: 10 components, full covariances; Ghosh et al. 2020's ex-post density
estimation). ``two_stage``: the two-stage VAE of Dai & Wipf 2019, a second VAE fitted on draws
of q(z1 | x). ``prior``: the model's own prior. All give ``latents(n) -> (n, Z)`` that the
model's decoder turns into images; a fitted one is saved beside its checkpoint as safetensors
(no pickled code) and reused while the checkpoint and the settings stay the same.
"""

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from genlab.atomic import atomic_write
from genlab.config import sampler_settings
from genlab.errors import GenlabError
from genlab.metrics import file_sha256
from genlab.models.mixture import Mixture, fit_mixture

log = logging.getLogger("genlab")

FORMAT = 1  # of the saved file; a file of another format is refitted
META_KEY = "genlab_sampler"
# ---------------------------------------------------------------- two-stage VAE


def mlp(dim: int, width: int, depth: int) -> nn.Sequential:
    """``depth`` ReLU layers of ``width`` (none for depth 0)."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(dim if i == 0 else width, width), nn.ReLU()]
    return nn.Sequential(*layers)


class SecondStage(nn.Module):
    """Dai & Wipf's second-stage VAE on latents z (B, Z): u = enc(z), z ~ N(dec(u), gamma^2 I).

    As in the authors' code (daib13/TwoStageVAE, network/two_stage_vae_model.py): fully
    connected ReLU layers, the input joined to the last hidden layer before each head, a
    log-sd head, and one learned scalar log gamma starting at 0.
    """

    def __init__(self, latent_dim: int, width: int, depth: int) -> None:
        super().__init__()
        hidden = latent_dim + (width if depth else 0)
        self.encoder, self.decoder = mlp(latent_dim, width, depth), mlp(latent_dim, width, depth)
        self.mu, self.log_sd = nn.Linear(hidden, latent_dim), nn.Linear(hidden, latent_dim)
        self.out = nn.Linear(hidden, latent_dim)
        self.log_gamma = nn.Parameter(torch.zeros(()))

    def encode(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """q(u | z): mean and log sd, (B, Z) each."""
        h = torch.cat([z, self.encoder(z)], 1)
        return self.mu(h), self.log_sd(h)

    def decode(self, u: Tensor) -> Tensor:
        """Mean of p(z | u): (B, Z)."""
        return self.out(torch.cat([u, self.decoder(u)], 1))

    def loss_terms(self, z: Tensor) -> dict[str, Tensor]:
        """-log p(z | u) and KL(q(u | z) || N(0, I)) per example (B,), one draw of u.

        The authors' gen_loss2 and kl_loss2: sum((z - z_hat)^2 / (2 gamma^2) + log gamma +
        log(2 pi) / 2) and sum(mu^2 + sd^2 - 2 log sd - 1) / 2.
        """
        mu, log_sd = self.encode(z)
        u = mu + torch.randn_like(mu) * log_sd.exp()
        z_hat = self.decode(u)
        gamma = self.log_gamma.exp()
        recon = ((z - z_hat) / gamma).square() / 2 + self.log_gamma + 0.5 * math.log(2 * math.pi)
        kl = (mu.square() + (2 * log_sd).exp() - 2 * log_sd - 1) / 2
        return {"recon": recon.sum(1), "kl": kl.sum(1)}

    def sample(self, n: int, device: torch.device) -> Tensor:
        """z (n, Z): u ~ N(0, I), then z ~ N(dec(u), gamma^2 I) (the authors' ``generate``)."""
        u = torch.randn(n, self.out.out_features, device=device)
        z_hat = self.decode(u)
        return z_hat + self.log_gamma.exp() * torch.randn_like(z_hat)


def gaussian_draw(mu: Tensor, logvar: Tensor) -> Tensor:
    """z = mu + sd * eps: a draw of N(mu, exp(logvar)), (B, Z)."""
    return mu + (0.5 * logvar).exp() * torch.randn_like(mu)


def fit_second_stage(
    mu: Tensor,
    logvar: Tensor,
    width: int = 1024,
    depth: int = 2,
    epochs: int = 100,
    batch_size: int = 64,
    lr: float = 1e-4,
    seed: int = 0,
    draw: Callable[[Tensor, Tensor], Tensor] = gaussian_draw,
) -> tuple[SecondStage, list[float]]:
    """Train the second stage on posterior draws ``draw(mu, logvar)``, fresh every batch as in
    the authors' demo.py; Adam at ``lr``. Returns the network (eval mode) and each epoch's mean
    loss."""
    device = mu.device
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        net = SecondStage(mu.shape[1], width, depth).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        losses = []
        for _ in range(epochs):
            order = torch.randperm(len(mu), device=device)
            total = 0.0
            for start in range(0, len(mu), batch_size):
                rows = order[start : start + batch_size]
                with torch.no_grad():
                    z = draw(mu[rows], logvar[rows])  # (B, Z)
                terms = net.loss_terms(z)
                loss = (terms["recon"] + terms["kl"]).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(rows)
            losses.append(total / len(mu))
    return net.eval(), losses


# ---------------------------------------------------------------- samplers


class LatentSampler(Protocol):
    """What every sampler gives: latents (n, Z) for the model's decoder, from the global RNG."""

    name: str
    record: dict[str, Any]  # its name, settings and file, for metrics.json

    def latents(self, n: int, device: torch.device) -> Tensor: ...


class PriorSampler:
    """The model's own prior (its ``prior_draw``: N(0, I), a VampPrior, or the layers above z1)."""

    name = "prior"

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.record = {"name": self.name}

    def latents(self, n: int, device: torch.device) -> Tensor:
        return self.model.prior_draw(n).to(device)


class GMMSampler:
    """Draws of a Gaussian mixture fitted on the posterior means."""

    name = "gmm"

    def __init__(self, mixture: Mixture) -> None:
        self.mixture = mixture
        self.record: dict[str, Any] = {"name": self.name}

    def latents(self, n: int, device: torch.device) -> Tensor:
        return self.mixture.sample(n, device).float()

    def tensors(self) -> dict[str, Tensor]:
        w, m, c = self.mixture.tensors()
        return {"weights": w, "means": m, "covariances": c}

    @classmethod
    def from_tensors(
        cls, tensors: Mapping[str, Tensor], settings: Mapping[str, Any]
    ) -> "GMMSampler":
        return cls(Mixture(tensors["weights"], tensors["means"], tensors["covariances"]))


class TwoStageSampler:
    """Draws of the second-stage VAE: u ~ N(0, I) through its decoder."""

    name = "two_stage"

    def __init__(self, net: SecondStage) -> None:
        self.net = net.eval()
        self.record: dict[str, Any] = {"name": self.name}

    @torch.no_grad()
    def latents(self, n: int, device: torch.device) -> Tensor:
        return self.net.to(device).sample(n, device)

    def tensors(self) -> dict[str, Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}

    @classmethod
    def from_tensors(
        cls, tensors: Mapping[str, Tensor], settings: Mapping[str, Any]
    ) -> "TwoStageSampler":
        latent_dim = tensors["mu.weight"].shape[0]
        net = SecondStage(latent_dim, settings["width"], settings["depth"])
        net.load_state_dict(dict(tensors))
        return cls(net)


FITTED = {"gmm": GMMSampler, "two_stage": TwoStageSampler}


def check_model(model: nn.Module, name: str) -> None:
    """A fitted sampler needs a Gaussian posterior q(z1 | x) and a decoder of z1."""
    if name == "prior":
        return
    from genlab.models.ladder import LadderVAE
    from genlab.models.vae import VAE

    if not isinstance(model, VAE):
        raise GenlabError(
            f"sampler={name}: {type(model).__name__} has no aggregate posterior to fit (a VAE "
            "has; a GAN or a VQ model does not): use sampler=prior"
        )
    if isinstance(model, LadderVAE):
        # its q(z1 | x) is drawn top-down through the generative path, not an encoder's Gaussian
        raise GenlabError(
            f"sampler={name}: the Ladder VAE's q(z1 | x) is no encoder Gaussian these samplers "
            "fit (it is drawn top-down): use sampler=prior"
        )


def sampler_path(ckpt_file: Path, name: str) -> Path:
    """``RUN/checkpoints/last.ckpt`` -> ``RUN/checkpoints/last.sampler-NAME.safetensors``."""
    return ckpt_file.with_name(f"{ckpt_file.stem}.sampler-{name}.safetensors")


@torch.no_grad()
def posterior_moments(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], device: torch.device
) -> tuple[Tensor, Tensor]:
    """The encoder's Gaussian q(z1 | x), mean and log-variance (N, Z), for every image."""
    mus, logvars = [], []
    for x, labels in batches:
        y = labels.to(device) if model.num_classes else None
        mu, logvar = model.encoder(x.to(device), y)
        mus.append(mu.float())
        logvars.append(logvar.float())
    return torch.cat(mus), torch.cat(logvars)


def posterior_draw(model: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    """z1 ~ q(z1 | x) from the encoder's (mu, logvar): the model's own draw (an IAF posterior
    flows the Gaussian one); mu itself for a deterministic encoder (WAE's default), whose
    logvar trains on nothing."""
    if getattr(getattr(model, "hparams", None), "encoder_noise", None) == "deterministic":
        return lambda mu, logvar: mu
    first_draw = getattr(model, "first_draw", None)
    if first_draw is None:
        return gaussian_draw
    return lambda mu, logvar: first_draw((mu, logvar))[0]


@torch.no_grad()
def posterior_mean(model: nn.Module, mu: Tensor, logvar: Tensor) -> Tensor:
    """What the model decodes as x's posterior mean (``reconstruct``'s): mu, or with an IAF
    posterior the flowed mu (eps = 0)."""
    flow = getattr(model, "flow", None)
    return mu if flow is None else flow(mu, logvar, torch.zeros_like(mu))[0]


def fit(
    model: nn.Module,
    settings: Mapping[str, Any],
    batches: Iterable[tuple[Tensor, Tensor]],
    device: torch.device,
) -> GMMSampler | TwoStageSampler:
    """Fit sampler ``settings["name"]`` on the posterior of ``model`` over ``batches``."""
    s = dict(settings)
    training, home = model.training, model.device
    model.eval().to(device)
    cuda = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):  # a dynamic binarisation draws from it
            torch.manual_seed(s["seed"])
            mu, logvar = posterior_moments(model, batches, device)
        if s["name"] == "gmm":
            return fit_gmm(posterior_mean(model, mu, logvar), s)
        return fit_two_stage(mu, logvar, s, posterior_draw(model))
    finally:
        model.train(training).to(home)


def fit_gmm(means: Tensor, s: Mapping[str, Any]) -> GMMSampler:
    """The mixture of ``s`` fitted on posterior means (N, Z)."""
    n = len(means)
    if s["components"] > n:
        raise GenlabError(
            f"sampler.components={s['components']} is more than the {n} training points "
            "the mixture is fitted on: lower it"
        )
    result = fit_mixture(means, s["components"], s["max_iter"], s["tol"], s["reg_covar"],
                         s["seed"])  # fmt: skip
    how = "converged" if result.converged else "did not converge"
    log.info(
        f"sampler=gmm: EM {how} in {result.iterations} iterations on {n} posterior means, "
        f"log-likelihood {result.lower_bound:.4f} per point"
    )
    return GMMSampler(result.mixture)


def fit_two_stage(
    mu: Tensor, logvar: Tensor, s: Mapping[str, Any], draw: Callable[[Tensor, Tensor], Tensor]
) -> TwoStageSampler:
    """The second stage of ``s`` trained on fresh posterior draws."""
    with torch.enable_grad():
        net, losses = fit_second_stage(mu, logvar, s["width"], s["depth"], s["epochs"],
                                       s["batch_size"], s["lr"], s["seed"], draw)  # fmt: skip
    log.info(
        f"sampler=two_stage: {s['epochs']} epochs on {len(mu)} posterior draws, loss "
        f"{losses[0]:.3f} -> {losses[-1]:.3f}, gamma {net.log_gamma.exp().item():.4f}"
    )
    return TwoStageSampler(net)


def save(sampler: GMMSampler | TwoStageSampler, path: Path, meta: dict[str, Any]) -> None:
    """The sampler's tensors and ``meta`` (JSON in the safetensors header), atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in sampler.tensors().items()}
    data = safetensors_bytes(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)})
    atomic_write(path, lambda f: f.write(data))


def read(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
    """(meta, tensors) of a saved sampler, or None when the file is absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[META_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 -- not a dict
    except Exception as e:  # damaged, or not a sampler file: fitted again
        log.warning(f"{path}: not a readable sampler file ({type(e).__name__}); fitting again")
        return None
    return meta, tensors


def load_or_fit(
    model: nn.Module,
    spec: Mapping[str, Any],
    ckpt_file: Path | None,
    batches: Callable[[], Iterable[tuple[Tensor, Tensor]]],
    device: torch.device,
) -> LatentSampler:
    """The sampler ``spec`` names for ``model``: the prior, the one saved beside ``ckpt_file``
    when it was fitted on this very checkpoint with these settings, or a new fit (saved there).

    ``batches`` gives the training split's (images, labels); it is called only to fit.
    """
    settings = sampler_settings(spec)
    name = settings["name"]
    check_model(model, name)
    if name == "prior":
        return PriorSampler(model)
    path = sampler_path(ckpt_file, name) if ckpt_file is not None else None
    meta = {"format": FORMAT, "settings": settings}
    if ckpt_file is not None:
        meta["checkpoint_sha256"] = file_sha256(ckpt_file)
    saved = read(path) if path is not None else None
    if saved is not None and saved[0] == meta:
        log.info(f"sampler={name}: reusing {path}")
        sampler = FITTED[name].from_tensors(saved[1], settings)
        sampler.record = {**settings, "file": str(path)}
        return sampler
    if saved is not None:
        same_ckpt = saved[0].get("checkpoint_sha256") == meta.get("checkpoint_sha256")
        what = "settings" if same_ckpt else "checkpoint"
        log.info(f"sampler={name}: the {what} changed since {path} was fitted; fitting again")
    sampler = fit(model, settings, batches(), device)
    sampler.record = {**settings, "file": None}
    if path is not None:
        try:
            save(sampler, path, meta)
            sampler.record["file"] = str(path)
            log.info(f"sampler={name}: wrote {path}")
        except OSError as e:  # a read-only checkpoint folder: sample anyway, refit next time
            log.warning(f"sampler={name}: cannot write {path} ({e.strerror}); not saved")
    return sampler


class SamplerDraws:
    """``model.sample``'s contract through a sampler: decode_mean of its latents (B, C, H, W)."""

    def __init__(self, model: nn.Module, sampler: LatentSampler) -> None:
        self.model, self.sampler = model, sampler

    def __call__(self, n: int, labels: Tensor | None = None) -> Tensor:
        model = self.model
        if model.num_classes and labels is None:
            labels = torch.randint(model.num_classes, (n,), device=model.device)
        return model.decode_mean(self.sampler.latents(n, model.device), labels)


def sample_through(model: nn.Module, sampler: LatentSampler) -> None:
    """Make ``model.sample`` (what the sample metrics and grids call) draw from ``sampler``.

    The prior leaves the model as it is: its own ``sample`` is the prior's.
    """
    if sampler.name != "prior":
        model.sample = SamplerDraws(model, sampler)
