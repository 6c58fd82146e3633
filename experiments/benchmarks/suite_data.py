"""Sections 3, 3b and 5 of run.py: the data loaders against the model's rate (workloads.py
data), data=prepared, zip, hf and streaming against data=folder and the memory of a shared
prepared array (workloads.py prepared, share; sources.py), and how a DCGAN step's cost grows with
batch and image size."""

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from measure import BIN, HERE, MB, run, run_mapped, steady, thread_env, timer_overrides


def bench_data(size: dict, work: Path) -> dict:
    out = work / "data.json"
    cmd = [
        sys.executable,
        HERE / "workloads.py",
        "data",
        work / "png_folder",
        str(size["data_files"]),
        out,
        str(size["data_epochs"]),
        str(size["model_steps"]),
    ]
    proc = run(cmd, work / "data.log", thread_env("1"), work)
    return {**json.loads(out.read_text()), "process": proc}


def bench_prepared(size: dict, work: Path) -> dict:
    """data=folder vs data=prepared images/s; and the memory of a prepared array that 2 DDP
    ranks with 2 workers each map, against one process."""
    # the machine is shared: the section says how busy it was, and when it ran
    load = os.getloadavg()[0]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = work / "prepared.json"
    cmd = [sys.executable, HERE / "workloads.py", "prepared", work / "prepared_data"]
    cmd += [str(size["prepared_files"]), out, str(size["prepared_epochs"])]
    proc = run(cmd, work / "prepared.log", thread_env("1"), work)
    result = {**json.loads(out.read_text()), "process": proc}
    result["sources"] = bench_sources(size, work)
    px, n = size["share_size"], size["share_images"]
    array_dir = work / "share_array"
    prep = [
        sys.executable,
        "-m",
        "genlab.cli.prepare",
        "data=synthetic",
        f"data.synthetic_size={n}",
    ]
    prep += [f"data.image_size={px}", "data.channels=3", f"out={array_dir}"]
    run(prep, work / "share_prepare.log", thread_env("1"), work)
    file = array_dir / "train.npy"
    share = {"images": n, "image_size": px, "array_mb": file.stat().st_size / MB}
    for name, ranks, workers in (("one_process", 1, 0), ("ddp2_workers2", 2, 2)):
        done = work / f"share_{name}.json"
        cmd = [sys.executable, HERE / "workloads.py", "share", array_dir, str(px), str(ranks)]
        cmd += [str(workers), done]
        row = run_mapped(cmd, work / f"share_{name}.log", thread_env("1"), work, file)
        share[name] = {"ranks": ranks, "workers": workers, **row, **json.loads(done.read_text())}
    result["share"] = share
    result["loadavg"] = [load, os.getloadavg()[0]]
    result["date_utc"] = when
    print(
        f"  prepared: {result['prepared_64_images_per_s']:.0f} img/s at 64 px, "
        f"{result['ratio_per_worker']['png']:.0f}x data=folder PNG per worker; "
        f"array {share['array_mb']:.0f} MB, mapped PSS over "
        f"{share['ddp2_workers2']['processes']} processes "
        f"{share['ddp2_workers2']['peak_file_pss_mb']:.0f} MB",
        flush=True,
    )
    return result


def bench_sources(size: dict, work: Path) -> dict:
    """data=zip, hf and streaming (a directory, loopback S3) from the same PNGs as bench_prepared's
    data=folder (sources.py), and the DCGAN-64 step they would feed."""
    out = work / "sources.json"
    cmd = [sys.executable, HERE / "sources.py", work / "prepared_data"]
    cmd += [str(size["prepared_files"]), out, str(size["prepared_epochs"])]
    cmd.append(str(size["model_steps"]))
    proc = run(cmd, work / "sources.log", thread_env("1"), work)
    return {**json.loads(out.read_text()), "process": proc}


def bench_scaling(size: dict, work: Path) -> dict:
    """DCGAN images/s over batch size x image size on synthetic data: one genlab-train sweep."""
    sweep_dir = work / "scaling"
    per_run = size["scale_warmup"] + size["scale_batches"]
    # enough synthetic images for per_run batches of the largest size after the 10% val split
    n_images = int(per_run * max(size["scale_batch"]) / 0.9) + max(size["scale_batch"])
    cmd = [
        BIN / "genlab-train",
        "-m",
        "model=gan",
        "data=synthetic",
        f"data.batch_size={','.join(map(str, size['scale_batch']))}",
        f"data.image_size={','.join(map(str, size['scale_size']))}",
        f"data.synthetic_size={n_images}",
        "logger=csv",
        "metrics=none",
        "trainer.max_epochs=1",
        f"++trainer.limit_train_batches={per_run}",
        f"hydra.sweep.dir={sweep_dir}",
        *timer_overrides("${paths.output_dir}/timing.json"),
    ]
    proc = run(cmd, work / "scaling.log", thread_env("1"), work)
    rows = []
    for timing in sorted(sweep_dir.glob("*/timing.json")):
        t = json.loads(timing.read_text())
        rows.append(
            {"batch_size": t["batch_size"], "image_size": t["image_size"]}
            | steady(t, size["scale_warmup"])
        )
    rows.sort(key=lambda r: (r["image_size"], r["batch_size"]))
    return {"rows": rows, "process": proc, "synthetic_size": n_images}
