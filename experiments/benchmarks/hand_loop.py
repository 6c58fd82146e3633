"""The hand-written PyTorch loops genlab-train is compared with: genlab's networks, losses, batch
size, optimisers and training images at ``genlab-train model=gan|vae``'s defaults, held in memory
as one tensor and sliced per batch, as a careful user would write without Lightning, Hydra or
loggers. ``workloads.py hand`` runs the loop; StepTimer(pair=True) and ``workloads.py floor`` run
``twin_step`` after each Lightning step.
"""

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from peak_rss import PeakRSS
from torch import Tensor, nn

from genlab import losses
from genlab.config import CONFIG_DIR
from genlab.nets import ConvDecoder, ConvEncoder, DCGANDiscriminator, DCGANGenerator


def train_config(*overrides: str):
    """conf/train.yaml composed as genlab-train would, so defaults come from one place."""
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return compose(config_name="train", overrides=list(overrides))


def datamodule(*overrides: str):
    from genlab.config import instantiate

    return instantiate(train_config(*overrides).data)


def in_memory(dataset) -> Tensor:
    """Every image of a dataset as one float tensor (N, C, H, W) in [-1, 1]."""
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def gan_step(
    g: nn.Module, d: nn.Module, opt_g, opt_d, real: Tensor, latent: int, backward=Tensor.backward
) -> None:
    """One D step then one G step, non-saturating loss (genlab's GAN at n_critic=1)."""
    z = torch.randn(len(real), latent, device=real.device)
    with torch.no_grad():
        fake = g(z)
    d_loss = losses.d_loss("ns", d(real), d(fake))
    opt_d.zero_grad(set_to_none=True)
    backward(d_loss)
    opt_d.step()
    # as Lightning's toggled_optimizer does: no discriminator weight gradients in the G step
    d.requires_grad_(False)
    z = torch.randn(len(real), latent, device=real.device)
    g_loss = losses.g_loss("ns", d(g(z)))
    opt_g.zero_grad(set_to_none=True)
    backward(g_loss)
    opt_g.step()
    d.requires_grad_(True)


def build_gan(cfg, device: torch.device):
    """DCGAN generator, discriminator and Adam optimisers with the config's settings."""
    torch.manual_seed(cfg.seed)
    m, data = cfg.model, cfg.data
    g = DCGANGenerator(m.generator.latent_dim, data.image_size, data.channels).to(device)
    d = DCGANDiscriminator(data.image_size, data.channels).to(device)
    opt_g = torch.optim.Adam(g.parameters(), lr=m.optimizer_g.lr, betas=tuple(m.optimizer_g.betas))
    opt_d = torch.optim.Adam(d.parameters(), lr=m.optimizer_d.lr, betas=tuple(m.optimizer_d.betas))
    return lambda real: gan_step(g, d, opt_g, opt_d, real, m.generator.latent_dim)


def vae_step(enc: nn.Module, dec: nn.Module, opt) -> Callable[[Tensor], None]:
    """One Bernoulli-ELBO step (genlab's VAE at its defaults), as a function of the batch."""

    def step(x: Tensor) -> None:
        mu, logvar = enc(x)  # (B, Z) each
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        loss = (losses.bernoulli_nll(dec(z), x) + losses.kl_normal(mu, logvar)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def build_vae(cfg, device: torch.device):
    """Conv encoder/decoder, Adam, Bernoulli ELBO with the config's settings."""
    torch.manual_seed(cfg.seed)
    m, data = cfg.model, cfg.data
    enc = ConvEncoder(data.image_size, data.channels, m.encoder.latent_dim).to(device)
    dec = ConvDecoder(m.encoder.latent_dim, data.image_size, data.channels).to(device)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=m.optimizer.lr)
    return vae_step(enc, dec, opt)


def twin_step(module) -> Callable[[Tensor], None]:
    """The hand-written step on copies of a genlab module's own networks and optimiser settings
    (``StepTimer(pair=True)`` runs it after each genlab step, in the same process)."""
    if hasattr(module, "generator"):
        g, d = copy.deepcopy(module.generator), copy.deepcopy(module.discriminator)
        opt_g, opt_d = module.optimizer_g(g.parameters()), module.optimizer_d(d.parameters())
        return lambda real: gan_step(g, d, opt_g, opt_d, real, module.latent_dim)
    enc, dec = copy.deepcopy(module.encoder), copy.deepcopy(module.decoder)
    return vae_step(enc, dec, module.optimizer([*enc.parameters(), *dec.parameters()]))


def hand(model: str, batches: int, out: Path) -> None:
    """Time ``batches`` steps of the hand-written loop; same JSON layout as StepTimer."""
    created = time.time()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = train_config(f"model={model}")
    dm = datamodule(f"model={model}")
    images = in_memory(dm.dataset("train")).to(device)  # (N, C, H, W)
    step = (build_gan if model == "gan" else build_vae)(cfg, device)
    bs = cfg.data.batch_size
    per_epoch = len(images) // bs  # drop_last, as the datamodule does
    rss = PeakRSS()
    fit_start = time.time()
    epochs, done = [], 0
    while done < batches:
        order = torch.randperm(len(images), device=device)
        epochs.append({"start": time.time(), "batch_end": []})
        for b in range(min(per_epoch, batches - done)):
            step(images[order[b * bs : (b + 1) * bs]])
            if device.type == "cuda":
                torch.cuda.synchronize()
            epochs[-1]["batch_end"].append(time.time())
        done += len(epochs[-1]["batch_end"])
    record = {
        "created": created,
        "fit_start": fit_start,
        "fit_end": time.time(),
        "epochs": epochs,
        "validation": [],
        "batch_size": bs,
        "image_size": cfg.data.image_size,
        "torch_threads": torch.get_num_threads(),
        "peak_rss_fit": rss.stop(),
        "cuda_peak_allocated": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
        "device": str(device),
    }
    out.write_text(json.dumps(record))
