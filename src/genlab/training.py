"""What genlab-train runs: build data, model, callbacks, loggers and Trainer from a config, fit.

Imported by the entry point (``genlab.cli.train``) only once Hydra has composed a valid config.
"""

import contextlib
import inspect
import logging
import netrc
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.plugins.environments import SLURMEnvironment
from pytorch_lightning.strategies import StrategyRegistry
from pytorch_lightning.utilities import rank_zero_info
from pytorch_lightning.utilities.exceptions import SIGTERMException

from genlab.callbacks.axes import CommonAxes, EvaluationTable
from genlab.callbacks.checkpointing import (
    AtomicCheckpointIO,
    FinalValidation,
    LastCheckpoint,
    ResumeState,
    RunConfig,
)
from genlab.callbacks.precision import GANMixedPrecision
from genlab.callbacks.preemption import Preemption
from genlab.callbacks.sample_metrics import SampleMetrics
from genlab.callbacks.speed import FastPath
from genlab.checkpoints import check_checkpoint, trusting
from genlab.config import instantiate
from genlab.errors import GenlabError
from genlab.keys import MAXIMISED
from genlab.loggers import (
    GenlabCSVLogger,
    GenlabWandbLogger,
    UnsentRows,
    checkpoint_wandb,
    choose_run_id,
)
from genlab.metrics import MetricsUnavailable
from genlab.models.manual import ManualOptimization
from genlab.redact import redact

log = logging.getLogger("genlab")

# Keys logged by SampleMetrics, on its own schedule (val/fid, val/precision, val/modes, ...).
SAMPLE_METRICS = SampleMetrics.logged_keys()


def monitor_of(
    cfg: DictConfig,
    module: pl.LightningModule,
    metrics: SampleMetrics | None,
    off: str | None = None,
) -> tuple[str, str]:
    """The key (and its mode) that picks the best checkpoint and that sweepers optimise.

    ``off`` is why the sample metrics could not run: it and the monitor that replaces val/fid
    make one warning.
    """
    metric = cfg.get("optimized_metric") or type(module).default_monitor
    said = [] if off is None else [f"FID/IS/KID are off: {off}"]
    if metric in SAMPLE_METRICS and (metrics is None or not metrics.computes(metric)):
        fallback = type(module).fallback_monitor
        why = "sample metrics are off" if metrics is None else "not in metrics.metrics"
        said.append(f"{metric} is not computed{'' if said else f' ({why})'}; monitoring {fallback}")
        metric = fallback
    if said:
        log.warning("; ".join(said))
    return metric, "max" if metric in MAXIMISED else "min"


def build_metrics(cfg: DictConfig) -> tuple[SampleMetrics | None, str | None]:
    """The FID/IS/KID callback, or None and why it cannot run (None with metrics=none)."""
    if "_target_" not in (cfg.get("metrics") or {}):  # metrics=none
        return None, None
    try:
        return instantiate(cfg.metrics), None
    except MetricsUnavailable as e:
        return None, str(e)


def wandb_has_credentials() -> bool:
    """True when W&B can reach a server: an API key in the environment or in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].rstrip("/")
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def in_multirun() -> bool:
    """True inside a Hydra sweep job (``-m``)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_name() -> str | None:
    """The experiment choice, or for a sweep its directory name (DATE/TIME): the W&B group."""
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.runtime.choices.get("experiment"):
        return hc.runtime.choices["experiment"]
    if hc.mode == RunMode.MULTIRUN:
        return "/".join(Path(hc.sweep.dir).parts[-2:])
    return None


def prepare_wandb(cfg: DictConfig) -> None:
    """Offline when no credentials exist (saying how to sync); group runs of a sweep."""
    wandb_cfg = cfg.get("logger", {}).get("wandb") if cfg.get("logger") else None
    if wandb_cfg is None:
        return
    Path(wandb_cfg.save_dir).mkdir(parents=True, exist_ok=True)
    if wandb_cfg.get("group") is None:
        wandb_cfg.group = sweep_name()
    user_mode = os.environ.get("WANDB_MODE")
    if not wandb_cfg.offline and user_mode is None and not wandb_has_credentials():
        wandb_cfg.offline = True
        log.info(
            "W&B: no credentials found, logging offline; sync later with: "
            f"wandb sync {Path(wandb_cfg.save_dir).resolve()}/wandb/offline-run-*"
        )


def continue_wandb_run(cfg: DictConfig, ckpt: dict | None) -> None:
    """One W&B run per training run: the id (and group) of the run resumed, ``resume="allow"``."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is None:
        return
    wandb_cfg.id = choose_run_id(wandb_cfg, Path(cfg.paths.output_dir), ckpt)
    if wandb_cfg.get("group") is None:  # a run of its own is its group: eval runs join it
        wandb_cfg.group = checkpoint_wandb(ckpt).get("group") or wandb_cfg.id


def spawn_ddp_in_sweeps(cfg: DictConfig) -> None:
    """Inside ``-m``, make multi-process DDP spawn its workers instead of re-running the CLI.

    Plain ``ddp`` relaunches ``sys.argv`` per rank, which under Hydra multirun re-runs the whole
    sweep in each worker (the known hang); ``ddp_spawn`` forks from inside the job instead.
    """
    strategy = str(cfg.trainer.get("strategy", ""))
    relaunches = in_multirun() and strategy.startswith("ddp") and "spawn" not in strategy
    # under a SLURM allocation each task already is one rank: nothing to launch. Asked only
    # here: detect() warns where srun exists, and a bad data.root must be said first
    if relaunches and not SLURMEnvironment.detect():
        spawned = strategy.replace("ddp", "ddp_spawn", 1)
        log.info(f"multirun: trainer.strategy={strategy} becomes {spawned}")
        cfg.trainer.strategy = spawned


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as {"model.optimizer_g.lr": 2e-4, ...}: W&B filters and groups by key."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def last_checkpoint(callbacks: list[pl.Callback], cfg: DictConfig) -> LastCheckpoint:
    """The owner of ``last.ckpt``: the configured one, else (``callbacks=none``) SIGTERM-only."""
    owner = next((c for c in callbacks if isinstance(c, LastCheckpoint)), None)
    if owner is None:
        owner = LastCheckpoint(f"{cfg.paths.output_dir}/checkpoints", every_epoch=False)
        callbacks.append(owner)
    return owner


def resume_path(cfg: DictConfig, last: Path) -> str | None:
    """``ckpt_path`` (``build`` checks it); or with auto-resume, this run's ``last`` checkpoint.

    ``auto_resume: null`` means on under the SLURM launcher, whose requeued jobs (preemption,
    time limit) start again in the same directory, and in a SLURM job that was requeued
    (``SLURM_RESTART_COUNT``): an ``sbatch`` script with a fixed ``hydra.run.dir``.
    """
    if cfg.get("ckpt_path"):
        return str(cfg.ckpt_path)
    auto = cfg.get("auto_resume")
    if auto is None and int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0:
        auto = True
    if auto is None and HydraConfig.initialized():
        auto = "Slurm" in str(HydraConfig.get().launcher.get("_target_", ""))
    if auto and last.is_file():
        log.info(f"auto_resume: continuing from {last}")
        return str(last)
    return None


def check_shapes(model: pl.LightningModule, datamodule: pl.LightningDataModule) -> None:
    """The model's images must have the data's channels and size (a mixed-up override)."""
    was_training = model.training
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        # a GAN samples through its raw generator here: the EMA copy's standing statistics
        # would cost 1024 generator passes at every build
        sample = getattr(model, "shape_sample", model.sample)
        model.eval()  # BatchNorm takes any batch
        shape = tuple(sample(2).shape[1:])
    model.train(was_training)
    data = (datamodule.channels, datamodule.image_size, datamodule.image_size)
    if shape != data:
        raise GenlabError(
            f"model makes {shape} images but data.channels/data.image_size give {data}; "
            "set the model's channels and image_size from ${data.*}"
        )


def setup_data_early(cfg: DictConfig, datamodule: pl.LightningDataModule) -> None:
    """Load the data now, so a bad ``data.root`` fails before Lightning's GPU/TPU lines.

    ``setup`` runs once, so ``fit`` reuses what it loaded. Left to Lightning when it must do it:
    a download happens in ``prepare_data`` (local rank 0 first), and spawned DDP workers would
    be sent the loaded arrays by pickle.
    """
    if getattr(datamodule, "download", False) or "spawn" in str(cfg.trainer.get("strategy", "")):
        return
    datamodule.setup("fit")


def instantiate_trainer(trainer_cfg: DictConfig, **kwargs: Any) -> pl.Trainer:
    """The Trainer of a ``trainer`` config; its ``ddp_timeout`` (genlab's key, not Lightning's)
    becomes the DDP strategy's process-group timeout.

    A rank that hangs (SIGSTOP, a node lost under NCCL) holds the others in their next collective
    until that timeout, 30 minutes by default; a rank that dies is noticed at once under gloo
    (connection reset), but not always under NCCL. Set it to fail such a run in minutes.
    """
    node = OmegaConf.to_container(trainer_cfg, resolve=True)
    timeout = node.pop("ddp_timeout", None)
    if timeout is not None:
        name = node.get("strategy")
        entry = (
            StrategyRegistry[name] if isinstance(name, str) and name in StrategyRegistry else None
        )
        takes = entry is not None and "timeout" in inspect.signature(entry["strategy"]).parameters
        if not takes:
            raise GenlabError(
                f"trainer.ddp_timeout={timeout}: trainer.strategy={name} takes no timeout "
                "(choose trainer=ddp or trainer=ddp_cpu, or trainer.strategy=ddp)"
            )
        kwargs["strategy"] = entry["strategy"](
            **entry["init_params"], timeout=timedelta(seconds=timeout)
        )
    # under a `trainer` node again, so a bad value is named by its full key
    return instantiate(OmegaConf.create({"trainer": node}).trainer, **kwargs)


def build(cfg: DictConfig) -> dict[str, Any]:
    """Instantiate datamodule, model, callbacks, loggers and trainer from a composed config."""
    # silent: Lightning's "Seed set" line would come before the errors found while building
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    with trusting(cfg.trust_checkpoint):  # model.vqvae_ckpt
        model = instantiate(cfg.model, _convert_="object")
    check_shapes(model, datamodule)
    with open_dict(cfg):
        spawn_ddp_in_sweeps(cfg)  # before the data: a spawned DDP loads it in its workers
    setup_data_early(cfg, datamodule)  # a bad data.root fails before any warning
    metrics, off = build_metrics(cfg)
    metric, mode = monitor_of(cfg, model, metrics, off)
    callbacks_cfg = cfg.get("callbacks") or {}
    if "model_checkpoint" in callbacks_cfg:
        with open_dict(cfg):
            best = callbacks_cfg.model_checkpoint
            best.monitor, best.mode = metric, mode
            if metric in SAMPLE_METRICS:
                # the metric exists only on the epochs SampleMetrics runs
                best.every_n_epochs = cfg.metrics.every_n_epochs
    callbacks = [instantiate(c) for c in callbacks_cfg.values() if c]
    last = last_checkpoint(callbacks, cfg)
    with open_dict(cfg):
        cfg.ckpt_path = resume_path(cfg, last.path)
    ckpt = check_checkpoint(cfg.ckpt_path, model) if cfg.ckpt_path else None
    with open_dict(cfg):
        prepare_wandb(cfg)
        continue_wandb_run(cfg, ckpt)
    del ckpt  # a whole checkpoint: not kept through fit
    # first: its on_train_end validation runs before other callbacks (progress bar) end training
    callbacks.insert(0, FinalValidation(last, metrics))
    callbacks.append(RunConfig(redact(OmegaConf.to_container(cfg, resolve=True))))
    axes = CommonAxes()
    callbacks.append(axes)
    callbacks.append(ResumeState())
    preemption = Preemption()
    callbacks.append(preemption)
    speed = cfg.get("speed") or {}
    if speed.get("num_threads"):
        torch.set_num_threads(speed.num_threads)
    torch.set_float32_matmul_precision(speed.get("matmul_precision", "highest"))
    if speed.get("channels_last") or speed.get("compile"):
        callbacks.append(FastPath(speed.get("channels_last", False), speed.get("compile", False)))
    if metrics is not None:
        callbacks.append(metrics)
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    for logger in loggers:
        if isinstance(logger, GenlabCSVLogger):
            logger.resuming = cfg.ckpt_path is not None  # continues metrics.csv
        if isinstance(logger, GenlabWandbLogger):
            logger.monitor = (metric, mode)  # its summary keeps the best value
            callbacks.append(EvaluationTable(axes))
            callbacks.append(UnsentRows(logger))
    plugins: list = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        # genlab owns the signals (Preemption): Lightning's SIGUSR1 requeue would write a
        # checkpoint of its own inside the handler and requeue a second time
        plugins.append(SLURMEnvironment(auto_requeue=False))
    two_optimizers = isinstance(model, ManualOptimization)  # GAN, VQGAN
    if str(cfg.trainer.get("precision")) in ("16-mixed", "16") and two_optimizers:
        accelerator = str(cfg.trainer.get("accelerator", "auto"))
        device = "cpu" if accelerator == "cpu" or not torch.cuda.is_available() else "cuda"
        plugins.append(GANMixedPrecision("16-mixed", device=device))
        with open_dict(cfg):
            cfg.trainer.precision = None  # the plugin carries it
    trainer = instantiate_trainer(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins
    )
    rank_zero_info(f"Seed set to {cfg.seed}")
    return {
        "datamodule": datamodule,
        "model": model,
        "trainer": trainer,
        "monitor": metric,
        "preemption": preemption,
    }


def train(cfg: DictConfig) -> float:
    """Fit; return the final value of the monitored metric (what a sweeper minimises).

    NaN when the metric was never logged, so a sweeper records a failed trial, not a crash.
    """
    objs = build(cfg)
    trainer: pl.Trainer = objs["trainer"]
    preemption: Preemption = objs["preemption"]
    preemption.install()  # a signal before fit starts stops it at the first batch
    failed, stopped = True, False
    try:
        for logger in trainer.loggers:
            flat = isinstance(logger, WandbLogger)
            logger.log_hyperparams(
                redact(flat_config(cfg) if flat else OmegaConf.to_container(cfg, resolve=True))
            )
        try:
            trainer.fit(
                objs["model"],
                datamodule=objs["datamodule"],
                ckpt_path=cfg.ckpt_path,
                weights_only=True,  # read_checkpoint refused pickled code already, in one line
            )
        except SIGTERMException:  # a signal: last.ckpt is saved
            stopped = True
            raise SystemExit(preemption.exit_code()) from None  # 128 + the signal
        failed = False
        record_best(trainer, objs["monitor"])
        value = trainer.callback_metrics.get(objs["monitor"])
        return float("nan") if value is None else float(value)
    finally:
        if "wandb" in sys.modules:
            import wandb

            # a crashed sweep job is marked failed and closed, so the next job starts clean
            # OSError: its service process ended (SLURM's SIGTERM); GenlabWandbLogger said so
            with contextlib.suppress(OSError):
                wandb.finish(exit_code=1 if failed else 0)
        if stopped:
            # after W&B has closed: at a requeue SLURM ends the job's processes, W&B's among them
            preemption.requeue(trainer)
        preemption.restore()  # a SIGTERM that SLURM sends at the requeue was only noted


def record_best(trainer: pl.Trainer, monitor: str) -> None:
    """Put the best monitored value and its checkpoint into the W&B run summary."""
    if not trainer.is_global_zero:  # other ranks' W&B experiment is a stand-in without summary
        return
    best = next((c for c in trainer.checkpoint_callbacks if c.monitor == monitor), None)
    for logger in trainer.loggers:
        if (
            isinstance(logger, WandbLogger)
            and best is not None
            and best.best_model_score is not None
        ):
            logger.experiment.summary[f"best/{monitor}"] = float(best.best_model_score)
            logger.experiment.summary["best/checkpoint"] = best.best_model_path
