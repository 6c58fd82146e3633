"""The command each benchmark workload runs by, in its own process started by run.py;
and the two workloads that measure Lightning's loop itself (``attribute``, ``floor``).

    python workloads.py hand MODEL BATCHES OUT.json   # minimal PyTorch loop, MODEL = gan | vae
    python workloads.py data ROOT N_FILES OUT.json     # ImageDataModule batches/s vs model
    python workloads.py attribute MODEL BATCHES OUT.json  # where genlab's step time goes
    python workloads.py floor MODEL BATCHES OUT.json   # a minimal LightningModule, paired
    python workloads.py prepared WORK N_FILES OUT.json EPOCHS  # data=folder vs data=prepared
    python workloads.py share DIR SIZE RANKS WORKERS OUT.json  # one epoch of a prepared array

``hand`` is in hand_loop.py; ``data``, ``prepared`` and ``share`` are in data_workloads.py;
``attribute`` and ``floor`` are here.
"""

import copy
import json
import sys
import time
from pathlib import Path

import torch
from data_workloads import data, prepared, share
from hand_loop import datamodule, gan_step, hand, train_config, twin_step
from torch import nn

from genlab import losses


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

    import genlab.models.gan
    import genlab.models.manual
    import genlab.models.vae
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

    module_cls = genlab.models.vae.VAE if model == "vae" else genlab.models.gan.GAN
    wrap(fetchers._PrefetchDataFetcher, "__next__", "DataLoader: next batch")
    wrap(module_cls, "training_step", "training_step (all of it)")
    wrap(pl.LightningModule, "log", "self.log")
    # the GAN checks losses in the manual-optimisation mixin it shares with VQGAN
    wrap(
        genlab.models.vae if model == "vae" else genlab.models.manual,
        "finite_or_skip",
        "finite_or_skip",
    )
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
