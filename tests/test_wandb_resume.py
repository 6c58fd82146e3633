"""One W&B run per training run across resumes, the common axes, and eval runs that point
back at the training run; all offline, read back with W&B's own reader."""

import csv
import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from genlab.loggers import ID_FILE, choose_run_id, read_run_id
from genlab.training import train
from tests.conftest import BIN, TINY, compose_train
from tests.test_reliability import _signal_at

# 6 batches of 16 images an epoch, SIGTERM after batch 2 of epoch 1 (see test_reliability)
RESUMABLE = [*TINY, "logger=[csv,wandb]", "data=synthetic", "seed=7",
             "trainer.limit_train_batches=6", "callbacks.progress_bar=null"]  # fmt: skip


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No W&B credentials (offline by itself), W&B quiet; WANDB_MODE restored afterwards."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "WANDB_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")  # what prepare_wandb would choose; undone after


def read_wandb_file(path: Path) -> list[dict]:
    """The records of one ``run-ID.wandb`` file, read by W&B's own reader."""
    out = subprocess.run(
        [str(BIN / "wandb"), "leet", "inspect", "--json", str(path)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def fragments(run: Path) -> list[list[dict]]:
    """The records of each offline fragment of ``run``, in start order (directory names)."""
    return [read_wandb_file(p) for p in sorted(run.glob("wandb/offline-run-*/run-*.wandb"))]


def run_id(records: list[dict]) -> str:
    return next(r["run"]["run_id"] for r in records if r["type"] == "run")


def history(records: list[dict]) -> list[dict]:
    return [r["history"]["item"] for r in records if r["type"] == "history"]


def axis(records: list[dict], key: str) -> list[float]:
    """``key`` in the metric rows (image rows carry Lightning's optimizer step instead)."""
    rows = [h for h in history(records) if not any(k.startswith("images/") for k in h)]
    return [h[key] for h in rows if key in h and "trainer/images_seen" in h]


def test_run_id_choice(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    ckpt = {"genlab_config": {"logger": {"wandb": {"id": "fromckpt", "group": "g"}}}}
    cfg = OmegaConf.create({"id": None, "resume": "allow"})
    first = choose_run_id(cfg, tmp_path / "a", None)  # a new run: new id, stored
    assert len(first) == 8 and read_run_id(tmp_path / "a") == first
    assert choose_run_id(cfg, tmp_path / "a", None) == first  # a restart in the directory
    assert choose_run_id(cfg, tmp_path / "a", ckpt) == "fromckpt"  # the resumed run's id
    assert read_run_id(tmp_path / "a") == "fromckpt"
    assert choose_run_id(cfg, tmp_path / "b", {"genlab_config": {}}) != "fromckpt"  # no id in it
    user = OmegaConf.create({"id": "mine", "resume": "allow"})
    assert choose_run_id(user, tmp_path / "a", ckpt) == "mine"  # logger.wandb.id wins
    monkeypatch.setenv("WANDB_RUN_ID", "agent")  # a W&B sweep agent's run
    assert choose_run_id(cfg, tmp_path / "a", ckpt) == "agent"
    assert choose_run_id(user, tmp_path / "a", ckpt) == "mine"
    monkeypatch.delenv("WANDB_RUN_ID")
    never = OmegaConf.create({"id": None, "resume": "never"})
    fresh = choose_run_id(never, tmp_path / "a", ckpt)
    assert fresh not in ("fromckpt", "mine") and read_run_id(tmp_path / "a") == fresh


@pytest.mark.slow
def test_preempted_requeued_and_copied_runs_continue_one_wandb_run(offline, tmp_path, caplog):
    run, copy = tmp_path / "run", tmp_path / "copy"
    caplog.set_level(logging.INFO, logger="genlab")
    with pytest.raises(SystemExit):  # SIGTERM: last.ckpt saved, exit 143
        train(compose_train([*RESUMABLE, "trainer.max_epochs=2", *_signal_at(1, 2)], run))
    train(compose_train([*RESUMABLE, "trainer.max_epochs=2", "auto_resume=true"], run))
    # the finished run's checkpoint copied elsewhere and trained one epoch more
    shutil.copy(run / "checkpoints" / "last.ckpt", tmp_path / "moved.ckpt")
    train(compose_train([*RESUMABLE, "trainer.max_epochs=3", f"ckpt_path={tmp_path}/moved.ckpt"],
                        copy))  # fmt: skip

    first, second = fragments(run)
    (third,) = fragments(copy)
    the_id = (run / ID_FILE).read_text().strip()
    assert run_id(first) == run_id(second) == run_id(third) == the_id
    assert (copy / ID_FILE).read_text().strip() == the_id
    # each fragment's history starts after the previous one's last step, on every axis
    for key in ("trainer/global_step", "trainer/images_seen", "trainer/g_steps", "trainer/time"):
        a, b, c = axis(first, key), axis(second, key), axis(third, key)
        assert a and b and c, key
        assert max(a) < min(b) and max(b) < min(c), key
    # 16 images a batch: the count went on from the checkpoint, not from 0
    seen = axis(first, "trainer/images_seen") + axis(second, "trainer/images_seen")
    train_rows = [h["trainer/images_seen"] for h in history(second) if "train/d_loss" in h]
    assert train_rows[0] == max(axis(first, "trainer/images_seen")) + 16
    assert max(seen) == 2 * 6 * 16  # two epochs of 6 batches
    assert max(axis(third, "trainer/images_seen")) == 3 * 6 * 16
    # the end-of-run line gives the upload command of all fragments of this run
    assert f"wandb sync {run.resolve()}/wandb/offline-run-*-{the_id}" in caplog.text
    assert f"run {the_id}; upload it (2 fragments, one per start, as one run)" in caplog.text


def test_wandb_summaries_keep_the_best_end_training_monitors():
    from genlab.keys import UNRANKED
    from genlab.loggers import SUMMARY_MAX, SUMMARY_MIN
    from genlab.training import MAXIMISED

    assert set(SUMMARY_MAX) == MAXIMISED  # max is best exactly where training maximises
    assert not set(SUMMARY_MIN) & MAXIMISED
    # every key a best checkpoint or sweep can follow is summarised to its best
    from genlab.callbacks.sample_metrics import SampleMetrics

    summarised = set(SUMMARY_MIN) | set(SUMMARY_MAX)
    spreads = ("_ci_", "_std", "val/n_")  # intervals, spreads and counts have no "best"
    summarised |= set(UNRANKED)  # nor have these (genlab.keys says why)
    monitored = {k for k in SampleMetrics.logged_keys() if not any(s in k for s in spreads)}
    assert monitored <= summarised, monitored - summarised


def test_axes_count_images_and_generator_steps(tmp_path):
    """n_critic=2: one G step every 2 batches; 16 images a batch."""
    cfg = compose_train([*TINY, "data=synthetic", "model.n_critic=2"], tmp_path)
    train(cfg)
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["trainer/images_seen"]]
    train_rows = [r for r in rows if r["train/d_loss"]]
    assert len(train_rows) == 8  # 2 epochs of 4 batches, a row each (log_every_n_steps=1)
    for r in train_rows:
        batches = int(r["step"]) + 1  # Lightning's logged step counts batches from 0
        assert float(r["trainer/images_seen"]) == 16 * batches
        assert float(r["trainer/g_steps"]) == batches // 2
    val_rows = [r for r in rows if r["val/swd"]]
    assert [float(r["trainer/images_seen"]) for r in val_rows] == [64, 128]


def test_vae_generator_steps_are_optimizer_steps(tmp_path):
    cfg = compose_train([*TINY, "data=synthetic", "model=vae", "trainer.max_epochs=1"], tmp_path)
    train(cfg)
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["train/loss"]]
    assert [float(r["trainer/g_steps"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["trainer/images_seen"]) for r in rows] == [16, 32, 48, 64]


def records_of(records: list[dict], kind: str) -> list[dict]:
    return [r[kind] for r in records if r["type"] == kind]


@pytest.mark.slow
def test_evaluations_table_artifacts_and_eval_run_joining_the_training_run(
    offline, weights, tmp_path
):
    from hydra import compose, initialize_config_dir

    from genlab.config import CONFIG_DIR  # registers eval.yaml's run-directory resolver too
    from genlab.evaluation import evaluate

    metrics = [f"metrics.inception_weights={weights}", "metrics.inception_sha256=null",
               f"metrics.cache_dir={tmp_path}/cache", "metrics.num_samples=8", "metrics.num_real=8",
               "metrics.kid_subset_size=4", "metrics.batch_size=8",
               "metrics.is_splits=2"]  # fmt: skip
    run = tmp_path / "run"
    overrides = [*RESUMABLE, "trainer.max_epochs=2", "trainer.limit_train_batches=2", *metrics,
                 "metrics.every_n_epochs=2"]  # fmt: skip
    train(compose_train([o for o in overrides if o != "metrics=none"] + ["metrics=default"], run))
    (records,) = fragments(run)
    the_id = run_id(records)
    # a table row per evaluation: step, images seen, the metrics, the fixed-noise grid
    tables = [h for h in history(records) if "evaluations._type" in h]
    assert [t["evaluations.nrows"] for t in tables] == [1, 2], tables
    table_files = [f["path"] for r in records_of(records, "files") for f in r["files"]]
    assert any(p.startswith("media/table/evaluations") for p in table_files), table_files
    assert any(p.startswith("media/images/") for p in table_files)
    (files,) = run.glob("wandb/offline-run-*/files")
    last = json.loads((files / tables[-1]["evaluations.path"]).read_text())
    rows = [dict(zip(last["columns"], r, strict=True)) for r in last["data"]]
    # FID every 2nd epoch: the first row has none (not the stale value of another epoch)
    assert [(r["step"], r["images_seen"], r["g_steps"]) for r in rows] == [(4, 32, 2), (8, 64, 4)]
    assert rows[0]["val/fid"] is None and rows[1]["val/fid"] > 0
    assert rows[0]["val/swd"] > 0 and rows[1]["val/swd"] > 0
    # W&B keeps a run table's images in its run_table artifact: one grid per row
    artifacts = records_of(records, "artifact")
    table = [a for a in artifacts if a["type"] == "run_table" and a["name"].endswith("evaluations")]
    images = [c["path"] for c in table[-1]["manifest"]["contents"] if c["path"].endswith(".png")]
    assert len(images) == 2 and all(r["samples"] == "Image" for r in rows)
    (ref,) = [a for a in artifacts if a["type"] == "reference-statistics"]
    cached = list((tmp_path / "cache").glob("ref-*.pt"))
    assert [ref["name"]] == [p.stem for p in cached]  # named by the protocol key

    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(config_name="eval", overrides=[
            f"ckpt_path={run}/checkpoints/last.ckpt", "logger=wandb", *metrics,
            "trainer.accelerator=cpu",
        ])  # fmt: skip
    cfg.paths.output_dir = str(tmp_path / "eval")
    evaluate(cfg)
    (ev,) = fragments(tmp_path / "eval")
    ev_run = next(r["run"] for r in ev if r["type"] == "run")
    assert ev_run["job_type"] == "eval" and ev_run["run_group"] == the_id
    assert ev_run["run_id"] != the_id
    config = {}
    for r in records_of(ev, "config"):
        config.update(r["update"])
    assert config["evaluated_run.id"] == the_id
    # its row of the evaluations table: the checkpoint's step and images seen, its numbers
    (ev_table,) = [h for h in history(ev) if "evaluations._type" in h]
    (ev_files,) = (tmp_path / "eval").glob("wandb/offline-run-*/files")
    saved = json.loads((ev_files / ev_table["evaluations.path"]).read_text())
    (row,) = [dict(zip(saved["columns"], r, strict=True)) for r in saved["data"]]
    assert (row["step"], row["images_seen"]) == (8, 64) and row["fid"] > 0
    kinds = {a["type"]: a["name"] for a in records_of(ev, "artifact")}
    assert kinds["reference-statistics"] == ref["name"]
    assert kinds["evaluation"].startswith("eval-")


def test_the_upload_hint_after_resume_never_names_only_this_run(offline, tmp_path, caplog):
    """resume=never leaves two run ids in one directory: the hint uploads this run's fragments."""
    run = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="genlab")
    quick = [*RESUMABLE, "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
    train(compose_train([*quick, "trainer.max_epochs=1"], run))
    old = (run / ID_FILE).read_text().strip()
    caplog.clear()
    train(compose_train([*quick, "trainer.max_epochs=2", "logger.wandb.resume=never",
                         f"ckpt_path={run}/checkpoints/last.ckpt"], run))  # fmt: skip
    new = (run / ID_FILE).read_text().strip()
    assert new != old and len(fragments(run)) == 2
    (line,) = [r.getMessage() for r in caplog.records if "wandb sync" in r.getMessage()]
    assert f"offline run {new}; upload it with: " in line, line
    assert "every resumed fragment" not in line, line
    pattern = line.split("wandb sync ", 1)[1]
    assert pattern == f"{run.resolve()}/wandb/offline-run-*-{new}", line
    (only,) = Path("/").glob(pattern.lstrip("/"))  # this run's one fragment, not the old run's
    assert only.name.endswith(new)
