"""The benchmark's reference workloads, each run in its own process by run.py.

    python workloads.py hand MODEL BATCHES OUT.json   # minimal PyTorch loop, MODEL = gan | vae
    python workloads.py data ROOT N_FILES OUT.json     # ImageDataModule batches/s vs model
    python workloads.py attribute MODEL BATCHES OUT.json  # where genlab's step time goes
    python workloads.py floor MODEL BATCHES OUT.json   # a minimal LightningModule, paired
    python workloads.py prepared WORK N_FILES OUT.json EPOCHS  # data=folder vs data=prepared
    python workloads.py share DIR SIZE RANKS WORKERS OUT.json  # one epoch of a prepared array

The hand-written loops use genlab's networks, losses, batch size, optimisers and the same
training images as ``genlab-train model=gan|vae`` at its defaults, held in memory as one tensor
and sliced per batch: what a careful user would write without Lightning, Hydra or loggers.
"""

import copy
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from steptimer import PeakRSS
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


def loader_rate(dm, epochs: int) -> dict:
    """Iterate the training loader ``epochs`` times; batches/s of each epoch after the first."""
    loader = dm.train_dataloader()
    times, batches = [], 0
    for _ in range(epochs):
        t0 = time.perf_counter()
        n = sum(1 for _ in loader)
        times.append(time.perf_counter() - t0)
        batches = n
    steady = times[1:] or times
    rate = batches * len(steady) / sum(steady)
    return {
        "batches_per_epoch": batches,
        "first_epoch_s": times[0],
        "batches_per_s": rate,
        "images_per_s": rate * dm.batch_size,
    }


def model_rate(cfg, steps: int) -> float:
    """Images/s of the hand-written DCGAN step at this data config's size, channels and batch."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    step = build_gan(cfg, device)
    x = (
        torch.rand(
            cfg.data.batch_size,
            cfg.data.channels,
            cfg.data.image_size,
            cfg.data.image_size,
            device=device,
        )
        * 2
        - 1
    )
    step(x)  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * cfg.data.batch_size / (time.perf_counter() - t0)


def data(root: Path, n_files: int, out: Path, epochs: int = 3, model_steps: int = 5) -> None:
    """ImageDataModule at its shipped defaults (mnist5k; folder of PNGs) vs the model's rate."""
    from genlab.callbacks.images import save_images

    rss = PeakRSS()
    results = {}
    # a folder of real digits written as PNGs, as genlab-eval save_samples=true writes them
    mnist = datamodule()
    train = mnist.dataset("train")
    root.mkdir(parents=True, exist_ok=True)
    if len(list(root.glob("*.png"))) != n_files:
        save_images(torch.stack([train[i][0] for i in range(n_files)]), root, 0)
    cases = {
        "mnist5k": [],
        "folder": ["data=folder", f"data.root={root}"],
        "folder_workers0": ["data=folder", f"data.root={root}", "data.num_workers=0"],
    }
    for name, overrides in cases.items():
        cfg = train_config(*overrides)
        t0 = time.perf_counter()
        dm = datamodule(*overrides)
        dm.setup("fit")
        setup_s = time.perf_counter() - t0
        row = {
            "overrides": overrides,
            "image_size": cfg.data.image_size,
            "channels": cfg.data.channels,
            "batch_size": cfg.data.batch_size,
            "num_workers": cfg.data.num_workers,
            "train_images": len(dm.dataset("train")),
            "setup_s": setup_s,
            **loader_rate(dm, epochs),
            "model_images_per_s": model_rate(cfg, model_steps),
        }
        row["loader_over_model"] = row["images_per_s"] / row["model_images_per_s"]
        results[name] = row
    results["peak_rss"] = rss.stop()
    results["torch_threads"] = torch.get_num_threads()
    out.write_text(json.dumps(results))


def attribute(model: str, batches: int, out: Path) -> None:
    """genlab's module in a Lightning Trainer, with wall-clock accumulators around the parts
    of a training step that the hand-written loop does not have (or does more cheaply).

    Loggers: csv only (W&B's offline writer runs in its own process); no validation.
    """
    import collections
    import functools

    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import RichProgressBar
    from pytorch_lightning.loggers import CSVLogger
    from pytorch_lightning.loops import fetchers

    import genlab.gan
    import genlab.models.manual
    import genlab.vae
    from genlab.config import instantiate

    spent: dict[str, float] = collections.defaultdict(float)
    calls: collections.Counter = collections.Counter()

    def wrap(owner, name: str, label: str) -> None:
        inner = getattr(owner, name)

        @functools.wraps(inner)
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - t
                calls[label] += 1

        setattr(owner, name, timed)

    module_cls = genlab.vae.VAE if model == "vae" else genlab.gan.GAN
    wrap(fetchers._PrefetchDataFetcher, "__next__", "DataLoader: next batch")
    wrap(module_cls, "training_step", "training_step (all of it)")
    wrap(pl.LightningModule, "log", "self.log")
    # the GAN checks losses in the manual-optimisation mixin it shares with VQGAN
    wrap(genlab.vae if model == "vae" else genlab.models.manual, "finite_or_skip", "finite_or_skip")
    wrap(RichProgressBar, "on_train_batch_end", "progress bar")
    cfg = train_config(f"model={model}", "metrics=none")
    module = instantiate(cfg.model, _convert_="object")
    trainer = pl.Trainer(
        accelerator="auto",
        max_epochs=1,
        limit_train_batches=batches,
        limit_val_batches=0,
        logger=CSVLogger(str(out.parent / f"attribute_{model}")),
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[RichProgressBar()],
        log_every_n_steps=cfg.trainer.log_every_n_steps,
    )
    trainer.fit(module, datamodule=datamodule(f"model={model}"))
    per_step = {k: 1000 * v / batches for k, v in spent.items()}
    per_call = {k: 1e6 * v / calls[k] for k, v in spent.items()}
    out.write_text(json.dumps({"ms_per_step": per_step, "us_per_call": per_call, "calls": calls}))


def floor(model: str, batches: int, out: Path) -> None:
    """The least a Lightning loop costs with these networks: a minimal LightningModule holding
    copies of the config's networks whose training_step is the hand-written step (VAE: returns
    the loss, automatic optimisation; GAN: manual optimisation with Lightning's optimizers and
    manual_backward, as Lightning's own GAN example), in a bare Trainer (no logger, callbacks,
    progress bar or checkpoints) fed by genlab's ImageDataModule; each step paired with the
    hand-written step, as StepTimer(pair=True) pairs genlab's steps."""
    import pytorch_lightning as pl
    from steptimer import StepTimer

    from genlab.config import instantiate

    cfg = train_config(f"model={model}", "metrics=none")
    genlab_module = instantiate(cfg.model, _convert_="object")

    class Minimal(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.nets = nn.ModuleList(copy.deepcopy(n) for n in genlab_module.networks())
            self.automatic_optimization = model == "vae"

        def training_step(self, batch, batch_idx):
            x = batch[0]
            if model == "vae":
                enc, dec = self.nets
                mu, logvar = enc(x)
                z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
                return (losses.bernoulli_nll(dec(z), x) + losses.kl_normal(mu, logvar)).mean()
            g, d = self.nets
            opt_g, opt_d = self.optimizers()
            gan_step(g, d, opt_g, opt_d, x, genlab_module.latent_dim, self.manual_backward)
            return None

        def configure_optimizers(self):
            if model == "vae":
                return genlab_module.optimizer(self.parameters())
            g, d = self.nets
            return genlab_module.optimizer_g(g.parameters()), genlab_module.optimizer_d(
                d.parameters()
            )

    timer = StepTimer(None)
    timer.twin = twin_step(genlab_module)
    trainer = pl.Trainer(
        accelerator="auto",
        max_steps=batches * (2 if model == "gan" else 1),  # manual: D and G steps both count
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        callbacks=[timer],
    )
    trainer.fit(Minimal(), datamodule=datamodule(f"model={model}"))
    pairs = timer.pairs[max(1, len(timer.pairs) // 10) :]  # the first tenth is warm-up
    out.write_text(json.dumps({"model": model, "pairs": pairs}))


def photo_folder(root: Path, n: int, suffix: str) -> Path:
    """``n`` 128 px RGB images as PNG or JPEG (q=90): blobs with sensor-like noise, so files
    compress about as photos do (a flat synthetic image would decode unrealistically fast)."""
    from PIL import Image

    from genlab.data import synthetic_images

    if len(list(root.glob(f"*{suffix}"))) == n:
        return root
    root.mkdir(parents=True, exist_ok=True)
    images, _ = synthetic_images(n, 8, 128, 3, seed=0)
    g = torch.Generator().manual_seed(0)
    noisy = (images.float() + 12 * torch.randn(images.shape, generator=g)).clamp(0, 255)
    for i, image in enumerate(noisy.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()):
        Image.fromarray(image).save(root / f"{i:06d}{suffix}", quality=90)
    return root


def prepared(work: Path, n_files: int, out: Path, epochs: int = 3) -> None:
    """images/s of data=folder (PNG, JPEG; 64 px, 2 workers) and of data=prepared at 32, 64 and
    128 px (no workers: one gather per batch in the training process), at one torch thread."""
    from genlab.prepare import prepare

    rss = PeakRSS()
    results: dict = {"n_files": n_files, "folder": {}, "prepared": {}}
    folders = {kind: photo_folder(work / kind, n_files, f".{kind}") for kind in ("png", "jpg")}
    for kind, root in folders.items():
        overrides = ["data=folder", f"data.root={root}", "data.image_size=64"]
        dm = datamodule(*overrides)
        results["folder"][kind] = {"image_size": 64, "num_workers": dm.num_workers}
        results["folder"][kind] |= loader_rate(dm, epochs)
    for size in (32, 64, 128):
        target = work / "prepared" / f"png-{size}"
        t0 = time.perf_counter()
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            cfg = compose(
                config_name="prepare",
                overrides=[
                    "data=folder",
                    f"data.root={folders['png']}",
                    f"data.image_size={size}",
                    f"out={target}",
                ],
            )
        prepare(cfg)
        prepare_s = time.perf_counter() - t0
        dm = datamodule("data=prepared", f"data.path={target}", f"data.image_size={size}")
        row = {"image_size": size, "num_workers": dm.num_workers, "prepare_s": prepare_s}
        results["prepared"][str(size)] = row | loader_rate(dm, epochs)
    folder = results["folder"]
    per_worker = {k: v["images_per_s"] / max(1, v["num_workers"]) for k, v in folder.items()}
    results["prepared_64_images_per_s"] = results["prepared"]["64"]["images_per_s"]
    # the prepared loader runs in the training process itself: one worker's worth of CPU
    results["ratio_per_worker"] = {
        k: results["prepared_64_images_per_s"] / v for k, v in per_worker.items()
    }
    results["ratio"] = {
        k: results["prepared_64_images_per_s"] / v["images_per_s"] for k, v in folder.items()
    }
    results["peak_rss"] = rss.stop()
    results["torch_threads"] = torch.get_num_threads()
    out.write_text(json.dumps(results))


def share(path: Path, size: int, ranks: int, workers: int, out: Path) -> None:
    """One epoch over a prepared array in a Trainer of ``ranks`` CPU processes (DDP when > 1),
    each with ``workers`` DataLoader workers, through a one-weight model: memory is the data's."""
    import pytorch_lightning as pl

    from genlab.data import ImageDataModule

    class Touch(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            return (self.w * batch[0].mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

        def on_train_epoch_end(self) -> None:
            time.sleep(1.5)  # every rank and worker alive, every page read: run.py samples now

    dm = ImageDataModule(
        source="prepared",
        path=str(path),
        image_size=size,
        channels=3,
        batch_size=64,
        num_workers=workers,
        val_fraction=0.0,
        pin_memory=False,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=ranks,
        strategy="ddp" if ranks > 1 else "auto",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    t0 = time.perf_counter()
    trainer.fit(Touch(), datamodule=dm)
    if trainer.is_global_zero:
        out.write_text(json.dumps({"fit_s": time.perf_counter() - t0, "ranks": ranks}))


if __name__ == "__main__":
    kind, *args = sys.argv[1:]
    if kind == "hand":
        hand(args[0], int(args[1]), Path(args[2]))
    elif kind == "data":
        data(Path(args[0]), int(args[1]), Path(args[2]), int(args[3]), int(args[4]))
    elif kind == "attribute":
        attribute(args[0], int(args[1]), Path(args[2]))
    elif kind == "floor":
        floor(args[0], int(args[1]), Path(args[2]))
    elif kind == "prepared":
        prepared(Path(args[0]), int(args[1]), Path(args[2]), int(args[3]))
    elif kind == "share":
        share(Path(args[0]), int(args[1]), int(args[2]), int(args[3]), Path(args[4]))
    else:
        sys.exit(f"unknown workload {kind!r}: use hand, data, attribute, floor, prepared or share")
