"""Issue 24's data sources in results.md's section 3b table: ``data=zip``, ``data=hf`` and
``data=streaming`` (a local directory, and a bucket on a loopback S3 server this script starts on
127.0.0.1 and stops), each made from the same 128 px PNGs as ``data=folder`` there and read at
64 px; and what a DCGAN-64 step consumes, to say how many workers keep it fed.

    python sources.py WORK N_FILES OUT.json EPOCHS MODEL_STEPS   # suite_data.py runs it

Each source is built through its public door: ``genlab-prepare format=zip`` and
``format=litdata`` (the Python ``prepare`` behind the CLI), a ``datasets`` dataset saved with
``save_to_disk``, and the chunks uploaded to the bucket with boto3. Each is read by the
datamodule the composed config builds, with 0 workers (the training process decodes: images/s
per worker directly) and with 2, the training loader alone, as ``workloads.py prepared`` does.
"""

import json
import os
import sys
import time
from pathlib import Path

import torch
from data_workloads import feed, loader_rate, photo_folder
from hand_loop import datamodule
from hydra import compose, initialize_config_dir
from measure import REPO
from peak_rss import PeakRSS

from genlab.config import CONFIG_DIR

sys.path.insert(0, str(REPO))
from tests import s3  # noqa: E402  the loopback server the streaming tests start and stop

SIZE = 64
WORKERS = (0, 2)


def genlab_prepare(*overrides: str) -> float:
    """Run genlab-prepare's ``prepare`` on conf/prepare.yaml with ``overrides``; its seconds."""
    from genlab.preparation import prepare

    t0 = time.perf_counter()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(config_name="prepare", overrides=list(overrides))
    prepare(cfg)
    return time.perf_counter() - t0


def hf_dataset(png: Path, out: Path) -> float:
    """The PNGs as a ``datasets`` dataset with an Image column, saved with save_to_disk: the
    files' own bytes, so data=hf decodes and resizes 128 px PNGs as data=folder does."""
    import datasets

    t0 = time.perf_counter()
    files = sorted(png.glob("*.png"))
    images = [{"bytes": f.read_bytes(), "path": f.name} for f in files]
    features = datasets.Features({"image": datasets.Image()})
    datasets.Dataset.from_dict({"image": images}, features=features).save_to_disk(str(out))
    return time.perf_counter() - t0


class Evict:
    """Deletes the chunks LitData downloaded into ``cache`` (called before each epoch): the next
    epoch fetches them all from the server again, as when a dataset outgrows
    ``data.max_cache_size``. ``counts``: chunks deleted at each call."""

    def __init__(self, cache: Path) -> None:
        self.cache, self.counts = cache, []

    def __call__(self) -> None:
        chunks = list(self.cache.rglob("chunk-*.bin"))
        for chunk in chunks:
            chunk.unlink()
        self.counts.append(len(chunks))


def rows(
    name: str,
    stored: str,
    overrides: list[str],
    prepare_s: float,
    epochs: int,
    workers_list: tuple[int, ...] = WORKERS,
    cache: Path | None = None,
) -> list:
    """The source read with each worker count: one row per count. ``cache``: LitData's chunk
    cache, emptied before every epoch so each one streams from the server."""
    out = []
    for workers in workers_list:
        dm = datamodule(*overrides, f"data.image_size={SIZE}", f"data.num_workers={workers}")
        dm.setup("fit")
        row = {"source": name, "stored": stored, "image_size": SIZE, "num_workers": workers}
        row |= {"prepare_s": prepare_s, "train_images": len(dm.dataset("train"))}
        evict = Evict(cache) if cache else None
        out.append(row | loader_rate(dm, epochs, evict))
        if evict:  # how many chunks each epoch had downloaded, for the test to check
            out[-1]["chunks_evicted"] = evict.counts
        rate = out[-1]["images_per_s"]
        print(f"  {name} ({workers} workers): {rate:.0f} images/s", flush=True)
    return out


def sources(work: Path, n_files: int, out: Path, epochs: int, model_steps: int) -> None:
    """Every issue-24 source over the same PNGs, and the DCGAN-64 step's appetite."""
    rss = PeakRSS()
    load_start = os.getloadavg()[0]  # the machine is shared: say how busy it was
    png = photo_folder(work / "png", n_files, ".png")
    made = work / "sources"
    made.mkdir(parents=True, exist_ok=True)
    results: dict = {"n_files": n_files, "rows": []}
    folder = ["data=folder", f"data.root={png}"]
    # prepared() times data=folder with 2 workers; here the per-image cost in one process
    results["rows"] += rows("folder", "128 px PNG files", folder, 0.0, epochs, (0,))

    archive = made / f"png-{SIZE}.zip"
    archive.unlink(missing_ok=True)
    s = genlab_prepare(*folder, f"data.image_size={SIZE}", "format=zip", f"out={archive}")
    zip_ = ["data=zip", f"data.path={archive}"]
    results["rows"] += rows("zip", f"{SIZE} px PNGs in a StyleGAN zip", zip_, s, epochs)

    hf_dir = made / "hf"
    s = hf_dataset(png, hf_dir)
    hf = ["data=hf", f"data.path={hf_dir}", "data.label_column=null"]
    results["rows"] += rows("hf", "128 px PNG bytes, save_to_disk", hf, s, epochs)

    chunks = made / f"litdata-{SIZE}"
    s = genlab_prepare(*folder, f"data.image_size={SIZE}", "format=litdata", f"out={chunks}")
    stream = ["data=streaming", f"data.path={chunks}"]
    local = "LitData chunks, local directory"
    results["rows"] += rows("streaming", local, stream, s, epochs)

    proc, server = s3.start()  # moto's S3 server on 127.0.0.1, as tests/test_streaming.py's
    try:
        results["s3_endpoint"] = server.endpoint
        bucket = f"s3://{server.bucket}/litdata-{SIZE}"
        options = server.overrides("storage_options")
        s = genlab_prepare(
            *folder, f"data.image_size={SIZE}", "format=litdata", f"out={bucket}", *options
        )
        cache = made / "litdata-cache"
        remote = [
            "data=streaming",
            f"data.path={bucket}",
            f"data.cache_dir={cache}",
            *server.overrides("data.storage_options"),
        ]
        stored = "LitData chunks, loopback S3"
        results["rows"] += rows("streaming_s3", stored, remote, s, epochs, cache=cache)
    finally:
        s3.stop(proc)

    results["feed"] = feed(model_steps)
    results["loadavg"] = [load_start, os.getloadavg()[0]]
    results["peak_rss"] = rss.stop()
    results["torch_threads"] = torch.get_num_threads()
    out.write_text(json.dumps(results))


if __name__ == "__main__":
    work_, n_, out_, epochs_, steps_ = sys.argv[1:]
    sources(Path(work_), int(n_), Path(out_), int(epochs_), int(steps_))
