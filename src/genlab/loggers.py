"""Loggers as genlab configures them: credentials redacted, W&B runs that survive resumes.

Every logger here passes hyperparameters through ``genlab.redact`` first. The W&B logger also
plots ``train/*`` and ``val/*`` against ``trainer/images_seen`` (see ``callbacks.axes``), keeps
the best value of each monitored key in the run summary, and says how to upload offline runs.
"""

import csv
import hashlib
import json
import logging
import os
import re
import secrets
import string
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

from genlab.console import rank_zero
from genlab.keys import G_STEPS, IMAGES_SEEN, MAXIMISED, SUMMARY_MIN, TRAIN_TIME
from genlab.redact import redact, redact_argv

log = logging.getLogger("genlab")

# Summary "best" of each key, next to its last value (genlab.keys: min or max).
SUMMARY_MAX = tuple(sorted(MAXIMISED))
# The file of a run directory holding its W&B run id: every start in the directory reuses it.
ID_FILE = ".genlab/wandb_id"


def new_run_id() -> str:
    """A W&B-style run id: 8 lowercase letters and digits."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


class RedactedHparams:
    """Mixin: hyperparameters reach the logger with credentials replaced by ``<redacted>``."""

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        if not isinstance(params, dict):
            params = vars(params)  # argparse.Namespace, as Lightning allows
        super().log_hyperparams(redact(params), *args, **kwargs)


class ContinuedCSV(ExperimentWriter):
    """Lightning's CSV writer, continuing the run's ``metrics.csv`` instead of deleting it.

    A resumed run (SIGTERM, preemption, a requeued job, ``ckpt_path`` in the same directory)
    logs on from the checkpoint's logging step. The first save keeps the rows before that step
    and drops those from it on, which a killed run wrote after its last checkpoint and the
    resumed run writes again: one history, no row repeated or missing. A run that does not
    resume replaces the file, as Lightning's writer does.
    """

    def __init__(self, log_dir: str, resuming: bool = False) -> None:
        self._continued = not resuming
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        if self._continued:  # not resuming: Lightning's check, which deletes metrics.csv
            super()._check_log_dir_exists()

    def save(self) -> None:
        if self.metrics and not self._continued:
            self._continued = True
            if self._fs.isfile(self.metrics_file_path):
                self._keep_rows_before(min(int(m["step"]) for m in self.metrics))
        super().save()

    def _keep_rows_before(self, first: int) -> None:
        """Rewrite ``metrics.csv`` with its rows before logging step ``first``; adopt its keys."""
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            kept = [r for r in reader if r.get("step") and int(r["step"]) < first]
            self.metrics_keys = sorted(set(reader.fieldnames or []) | set(self.metrics_keys))
        with self._fs.open(self.metrics_file_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(kept)


class GenlabCSVLogger(RedactedHparams, CSVLogger):
    """Lightning's CSVLogger; ``hparams.yaml`` holds no credentials, and a resumed run
    (``resuming``, set by ``training.build``) continues ``metrics.csv`` (``ContinuedCSV``)."""

    resuming = False

    @property
    @rank_zero_experiment
    def experiment(self) -> ContinuedCSV:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuedCSV(log_dir=self.log_dir, resuming=self.resuming)
        return self._experiment


class GenlabTensorBoardLogger(RedactedHparams, TensorBoardLogger):
    """Lightning's TensorBoardLogger; its hparams (event file and yaml) hold no credentials."""


class GenlabWandbLogger(RedactedHparams, WandbLogger):
    """Lightning's WandbLogger, with W&B's common axes, best-value summaries and no secrets.

    Not passing ``anonymous=None`` to ``wandb.init``: W&B deprecated the setting and prints
    "The anonymous setting has no effect" at every run start whenever the key is passed. The
    command line W&B records is redacted like the config.

    Args:
        monitor: the run's monitored key and its mode (``val/fid``, ``min``), summarised to best.
    """

    def __init__(self, *args: Any, monitor: tuple[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wandb_init.pop("anonymous", None)
        self.monitor = monitor
        self.unsent: list[dict] = []  # rows logged after W&B's service process ended
        self.lost: str | None = None  # why it ended

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log a row; once W&B's service is gone, keep it for the resumed run (``UnsentRows``).

        SLURM sends its SIGTERM (preemption, ``scontrol requeue``, the time limit) to every
        process of the job, W&B's ``wandb-core`` among them, which ends at once without writing
        what it buffered (those rows are lost: README, Preemption). genlab stops at the end of
        the batch; the rows logged after the service ended reach W&B from the resumed run.
        """
        if self.lost is None:
            try:
                super().log_metrics(metrics, step)
                return
            except OSError as e:  # ConnectionResetError, BrokenPipeError
                self.lost = f"{type(e).__name__}: {e}"
                log.warning(
                    f"W&B's service process ended ({self.lost}): its rows wait in the "
                    "checkpoint for the resumed run"
                )
        self.unsent.append({"metrics": {k: float(v) for k, v in metrics.items()}, "step": step})

    @rank_zero_only
    def log_image(self, *args: Any, **kwargs: Any) -> None:
        if self.lost is None:  # images are not kept: the next grid shows the model again
            super().log_image(*args, **kwargs)

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is None:
            argv, sys.argv = sys.argv, [sys.argv[0], *redact_argv(sys.argv[1:])]
            try:
                run = WandbLogger.experiment.fget(self)
            finally:
                sys.argv = argv
            if getattr(run, "define_metric", None) is not None:
                define_axes(run, self.monitor)
        return self._experiment

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self.lost is None:
            super().finalize(status)
        run = self._experiment
        if run is not None and getattr(run.settings, "_offline", False):
            command = sync_command(self.save_dir, run.id)
            starts = len(list(Path(self.save_dir, "wandb").glob(f"offline-run-*-{run.id}")))
            how = f" ({starts} fragments, one per start, as one run)" if starts > 1 else ""
            log.info(f"W&B: offline run {run.id}; upload it{how} with: {command}")


class UnsentRows(pl.Callback):
    """Carries the W&B rows that could not be sent (``GenlabWandbLogger.unsent``) in the
    checkpoint, and sends them first when the run resumes."""

    def __init__(self, logger: GenlabWandbLogger) -> None:
        self.logger = logger

    def state_dict(self) -> dict:
        return {"rows": list(self.logger.unsent)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.logger.unsent = list(state_dict.get("rows", []))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rows, self.logger.unsent = self.logger.unsent, []
        for row in rows:
            self.logger.log_metrics(row["metrics"], row["step"])


def sync_command(save_dir: str | Path, run_id: str) -> str:
    """The command that uploads the offline fragments of one run below ``save_dir``.

    The glob names the id: after ``logger.wandb.resume=never`` the directory holds other runs too.
    """
    return f"wandb sync {Path(save_dir).resolve()}/wandb/offline-run-*-{run_id}"


def define_axes(run: Any, monitor: tuple[str, str] | None = None) -> None:
    """Plot train, val and grids against images seen; summarise monitored keys to best and last."""
    run.define_metric(IMAGES_SEEN)
    run.define_metric(G_STEPS)
    run.define_metric(TRAIN_TIME)
    for prefix in ("train/*", "val/*", "images/*"):
        run.define_metric(prefix, step_metric=IMAGES_SEEN, step_sync=True)
    best = {**{k: "min" for k in SUMMARY_MIN}, **{k: "max" for k in SUMMARY_MAX}}
    if monitor is not None:
        best[monitor[0]] = monitor[1]
    for key, mode in best.items():
        run.define_metric(key, step_metric=IMAGES_SEEN, summary=f"{mode},last")


def read_run_id(run_dir: Path) -> str | None:
    """The W&B id stored in ``run_dir`` by an earlier start, if any."""
    path = Path(run_dir) / ID_FILE
    return path.read_text().strip() or None if path.is_file() else None


def write_run_id(run_dir: Path, run_id: str) -> None:
    """Store the run's W&B id in its directory (rank 0 only: every rank builds a config).

    Before the Trainer exists ranks come from the environment (``genlab.console.rank_zero``:
    Lightning's guess leaves out NODE_RANK of nodes launched by hand).
    """
    if not rank_zero():
        return
    path = Path(run_dir) / ID_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")


def checkpoint_wandb(ckpt: dict | None) -> dict:
    """The W&B settings (id, group) a genlab checkpoint's run config holds, else {}."""
    config = (ckpt or {}).get("genlab_config") or {}
    return ((config.get("logger") or {}).get("wandb")) or {}


def choose_run_id(wandb_cfg: Any, run_dir: Path, ckpt: dict | None) -> str:
    """The W&B run id of a training start: one id per training run, across resumes.

    ``logger.wandb.id`` when set; else ``WANDB_RUN_ID`` (a W&B sweep agent sets it for the run
    it started); a fresh id with ``logger.wandb.resume=never``; else the id of the checkpoint
    resumed from (a requeue, or a checkpoint copied elsewhere); else the one this directory
    stored; else a new one. The id is stored in the directory either way.
    """
    if wandb_cfg.get("id"):
        run_id = str(wandb_cfg.id)
    elif os.environ.get("WANDB_RUN_ID"):
        run_id = os.environ["WANDB_RUN_ID"]
    elif wandb_cfg.get("resume") == "never":
        run_id = new_run_id()
    else:
        run_id = checkpoint_wandb(ckpt).get("id") or read_run_id(run_dir) or new_run_id()
    write_run_id(run_dir, run_id)
    return run_id


def log_file_artifact(run: Any, path: Path, name: str, kind: str, metadata: dict) -> None:
    """Log one file as a W&B artifact (offline too: it uploads with ``wandb sync``)."""
    import wandb

    artifact = wandb.Artifact(name, type=kind, metadata=redact(metadata))
    artifact.add_file(str(path))
    run.log_artifact(artifact)


def log_folder_artifact(run: Any, folder: Path, kind: str, metadata: dict) -> str:
    """Log a folder as a W&B artifact named after it (offline too); returns the name."""
    import wandb

    name = re.sub(r"[^\w.-]", "-", folder.name)
    artifact = wandb.Artifact(name, type=kind, metadata=redact(metadata))
    artifact.add_dir(str(folder))
    run.log_artifact(artifact)
    return name


def reference_file(metrics: Any, datamodule: Any) -> tuple[Path, dict] | None:
    """The cache file of the real statistics a SampleMetrics used last, and its key, or None."""
    from genlab.callbacks.sample_features import data_key
    from genlab.metrics.cache import _reference_path

    ref = metrics.reference
    if not ref:
        return None
    key = metrics.image_metrics.reference_key(
        **data_key(datamodule), split=ref["split"], n_real=ref["n_real"]
    )
    path = _reference_path(key, metrics.cache_dir)[0]
    return (path, key) if path.is_file() else None


def log_reference(run: Any, trainer: Any) -> bool:
    """Log the reference statistics of the run's SampleMetrics as an artifact named by its key.

    The name is the cache file's (``ref-<sha256 of the key>``): an evaluation traces to the
    exact real features. False when no statistics were used yet.
    """
    from genlab.callbacks.sample_metrics import SampleMetrics

    metrics = next((c for c in trainer.callbacks if isinstance(c, SampleMetrics)), None)
    found = reference_file(metrics, trainer.datamodule) if metrics is not None else None
    if found is None:
        return False
    path, key = found
    log_file_artifact(run, path, path.stem, "reference-statistics", key)
    return True


def evaluation_row(run: Any, result: dict, model: Any) -> None:
    """genlab-eval's row of the ``evaluations`` table: the checkpoint's step and images seen,
    the numbers of metrics.json, and the model's fixed-noise grid (as training logs them)."""
    import torch
    import wandb

    from genlab.callbacks.images import grid_uint8
    from genlab.checkpoints import read_checkpoint

    ckpt = read_checkpoint(result["checkpoint"])
    axes = (ckpt.get("callbacks") or {}).get("CommonAxes") or {}
    row = {"step": float(ckpt.get("global_step", 0)), "images_seen": axes.get("images_seen")}
    row.update({k: float(v) for k, v in sorted(result["metrics"].items())})
    with torch.no_grad():
        grid = grid_uint8(model.grid_images()["samples"])
    columns = [*row, "samples"]
    table = wandb.Table(columns=columns, data=[[*row.values(), wandb.Image(grid)]])
    run.log({"evaluations": table})


def finish_evaluation(
    metrics_file: Path, result: dict, metrics: Any, datamodule: Any, model: Any = None
) -> None:
    """genlab-eval's W&B run: its ``evaluations`` row, metrics.json and the reference statistics
    as artifacts, then end.

    The metrics.json artifact is named by the protocol's digest (``eval-<sha256[:16]>``), its
    metadata says which reference statistics (``ref-...``) the numbers were computed against.
    """
    if "wandb" not in sys.modules:
        return
    import wandb

    run = wandb.run
    if run is None:
        return
    try:
        if hasattr(model, "grid_images"):
            evaluation_row(run, result, model)
        reference = reference_file(metrics, datamodule) if metrics is not None else None
        if reference is not None:
            log_file_artifact(run, reference[0], reference[0].stem, "reference-statistics",
                              reference[1])  # fmt: skip
        protocol = json.dumps(result["protocol"], sort_keys=True, default=str)
        name = f"eval-{hashlib.sha256(protocol.encode()).hexdigest()[:16]}"
        metadata = {**result, "reference_artifact": reference[0].stem if reference else None}
        if metrics_file.is_file():
            log_file_artifact(run, metrics_file, name, "evaluation", metadata)
    finally:
        wandb.finish()


def evaluated_run(cfg: Any, run_cfg: Any) -> dict[str, Any]:
    """An eval run joins the training run's W&B group; returns the config keys naming that run."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    trained = checkpoint_wandb({"genlab_config": run_cfg})
    if wandb_cfg is not None and wandb_cfg.get("group") is None:
        wandb_cfg.group = trained.get("group")
    return {"evaluated_run.id": trained.get("id"), "evaluated_run.group": trained.get("group")}
