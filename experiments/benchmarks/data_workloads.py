"""The data-loading workloads: ImageDataModule's loaders against the hand-written DCGAN step's
rate (``workloads.py data``), data=folder against data=prepared (``prepared``), and one epoch over
a prepared array in one or several processes (``share``), whose memory run.py samples; the
DCGAN-64 step's appetite on this CPU and on a GPU (``feed``, for sources.py)."""

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from hand_loop import build_gan, datamodule, train_config
from hydra import compose, initialize_config_dir
from peak_rss import PeakRSS
from torch import nn

from genlab.config import CONFIG_DIR

# No GPU figure is recorded yet (gpu.sh has not run on one), so the GPU a DCGAN-64 step runs on
# is an estimate: this many sustained TFLOP/s, a third of an A100's 312 TFLOP/s dense bf16 peak
# (NVIDIA's datasheet), divided by the step's FLOPs per image counted below.
GPU_TFLOPS = 100.0


def loader_rate(dm, epochs: int, before_epoch: Callable[[], None] | None = None) -> dict:
    """Iterate the training loader ``epochs`` times; batches/s of each epoch after the first.
    ``before_epoch`` runs before each epoch, outside the timing."""
    loader = dm.train_dataloader()
    times, batches = [], 0
    for _ in range(epochs):
        if before_epoch is not None:
            before_epoch()
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


def step_flops_per_image(cfg) -> float:
    """FLOPs per real image of one hand-written DCGAN step at this config's size and batch
    (G forward, D forward and backward on real and fake, G through a frozen D), by torch's
    FLOP counter: the same count on any device."""
    from torch.utils.flop_counter import FlopCounterMode

    step = build_gan(cfg, torch.device("cpu"))
    x = torch.rand(cfg.data.batch_size, cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    with FlopCounterMode(display=False) as counter:
        step(x * 2 - 1)
    return counter.get_total_flops() / cfg.data.batch_size


def feed(model_steps: int) -> dict:
    """What a DCGAN-64 step consumes (batch 64, RGB): images/s measured on this CPU at its
    thread setting, and estimated on a GPU sustaining GPU_TFLOPS from the step's FLOPs."""
    cfg = train_config("model=gan", "data=folder", "data.root=.", "data.image_size=64")
    flops = step_flops_per_image(cfg)
    return {
        "image_size": cfg.data.image_size,
        "batch_size": cfg.data.batch_size,
        "flops_per_image": flops,
        "gpu_tflops": GPU_TFLOPS,
        "gpu_images_per_s": GPU_TFLOPS * 1e12 / flops,
        "cpu_images_per_s": model_rate(cfg, model_steps),
    }


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


def photo_folder(root: Path, n: int, suffix: str) -> Path:
    """``n`` 128 px RGB images as PNG or JPEG (q=90): blobs with sensor-like noise, so files
    compress about as photos do (a flat synthetic image would decode unrealistically fast)."""
    from PIL import Image

    from genlab.data.sources import synthetic_images

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
    from genlab.preparation import prepare

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
