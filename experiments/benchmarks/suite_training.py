"""Section 1 of run.py: genlab-train against the hand-written loop (workloads.py hand), as
separate alternating runs and paired step by step in one process, with where the extra time goes
(workloads.py attribute) and what Lightning's loop alone costs (workloads.py floor)."""

import json
import sys
from pathlib import Path

from measure import BIN, HERE, pair_stats, run, steady, thread_env, timer_overrides


def train_command(size: dict, model: str, epochs: int, limit, out: Path, timing: Path) -> list:
    """genlab-train at its defaults (but metrics=none), timed by StepTimer into ``timing``."""
    cmd = [
        BIN / "genlab-train",
        f"model={model}",
        "metrics=none",  # no FID during training: same work whatever weights exist
        f"trainer.max_epochs={epochs}",
        f"hydra.run.dir={out}",
        *timer_overrides(str(timing)),
    ]
    if limit:
        cmd.append(f"++trainer.limit_train_batches={limit}")
    if size["val_batches"]:
        cmd.append(f"++trainer.limit_val_batches={size['val_batches']}")
    return cmd


def bench_training(size: dict, work: Path) -> dict:
    """genlab-train vs the hand-written loop, GAN and VAE, per thread setting, alternating."""
    rows: dict[str, dict] = {}
    max_reps = max(cell[4] for cell in size["train"])
    for rep in range(max_reps):
        for model, threads, max_epochs, limit, reps in size["train"]:
            if rep >= reps:
                continue
            env = thread_env(threads)
            name = f"{model}_t{threads}"
            out = work / "train" / f"{name}_r{rep}"
            timing = out / "timing.json"
            cmd = train_command(size, model, max_epochs, limit, out, timing)
            proc = run(cmd, out / "stdout.log", env, work)
            t = json.loads(timing.read_text())
            g = {**steady(t, size["warmup"]), "process": proc}
            g["startup_s"] = t["epochs"][0]["start"] - proc["start"]
            n_batches = sum(len(e["batch_end"]) for e in t["epochs"])

            hand_json = work / "train" / f"{name}_hand_r{rep}.json"
            hcmd = [sys.executable, HERE / "workloads.py", "hand", model, str(n_batches), hand_json]
            hproc = run(hcmd, hand_json.with_suffix(".log"), env, work)
            ht = json.loads(hand_json.read_text())
            h = {**steady(ht, size["warmup"]), "process": hproc}
            h["startup_s"] = ht["epochs"][0]["start"] - hproc["start"]
            row = rows.setdefault(name, {"model": model, "threads": threads, "reps": []})
            row["reps"].append({"genlab": g, "hand": h, "run_dir": str(out)})
            print(
                f"  {name} rep {rep}: genlab {g['images_per_s']:.0f} img/s, "
                f"hand {h['images_per_s']:.0f} img/s",
                flush=True,
            )
    for row in rows.values():
        best_g = max((r["genlab"] for r in row["reps"]), key=lambda x: x["images_per_s"])
        best_h = max((r["hand"] for r in row["reps"]), key=lambda x: x["images_per_s"])
        row["genlab_images_per_s"] = best_g["images_per_s"]
        row["hand_images_per_s"] = best_h["images_per_s"]
        row["ratio"] = best_g["images_per_s"] / best_h["images_per_s"]
        row["ratio_median_step"] = best_h["median_step_s"] / best_g["median_step_s"]
        row["batch_size"] = best_g["batch_size"]
        row["batches_timed"] = best_g["batches"]
        # where genlab's extra time per step goes (in-process, timers around each part)
        att = work / "train" / f"attribute_{row['model']}.json"
        if row["threads"] == "1" and not att.exists():
            n = min(70, max(c[3] or 70 for c in size["train"] if c[0] == row["model"]))
            cmd = [sys.executable, HERE / "workloads.py", "attribute", row["model"], str(n), att]
            run(cmd, att.with_suffix(".log"), thread_env("1"), work)
            row["attribution"] = json.loads(att.read_text())
    return rows


def bench_paired(size: dict, work: Path) -> dict:
    """genlab-train with the hand-written step after each of its steps (StepTimer pair=true),
    one thread; and the same for a minimal LightningModule in a bare Trainer (workloads.py
    floor): what Lightning's loop alone costs with these networks."""
    rows: dict[str, dict] = {}
    for model, threads, max_epochs, limit, _ in size["train"]:
        if threads != "1":
            continue
        out = work / "paired" / model
        timing = out / "timing.json"
        cmd = [*train_command(size, model, max_epochs, limit, out, timing)]
        cmd.append("+callbacks.step_timer.pair=true")
        run(cmd, out / "stdout.log", thread_env("1"), work)
        pairs = json.loads(timing.read_text())["pairs"][size["warmup"] :]
        batches = len(pairs) + size["warmup"] + 1
        floor_json = work / "paired" / f"floor_{model}.json"
        cmd = [sys.executable, HERE / "workloads.py", "floor", model, str(batches), floor_json]
        run(cmd, floor_json.with_suffix(".log"), thread_env("1"), work)
        floor = pair_stats(json.loads(floor_json.read_text())["pairs"])
        rows[model] = {"model": model, **pair_stats(pairs), "lightning_floor": floor}
        print(
            f"  {model} paired: genlab/hand speed {rows[model]['ratio']:.3f}, "
            f"minimal LightningModule {floor['ratio']:.3f}",
            flush=True,
        )
    return {"models": rows}
