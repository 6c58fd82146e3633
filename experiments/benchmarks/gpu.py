"""genlab's GPU benchmark: what one GPU does with genlab, in minutes, with nothing but the checkout.

    bash experiments/benchmarks/gpu.sh            # one GPU, under 8 minutes; writes gpu/results.*
    python experiments/benchmarks/gpu.py --quick  # tiny sizes on the CPU (the test runs this)

1. Training images/s of DCGAN-32 and SNGAN-32 at batch 64 and 256 in fp32, bf16-mixed,
   ``speed.channels_last`` and ``speed.compile`` (one ``genlab-train -m`` sweep per setting),
   with peak GPU memory; DCGAN fp32 paired step by step with the hand-written loop, as on the CPU.
   StyleGAN2-32 (``model=stylegan2``, the cifar config) in fp32 and with StyleGAN2-ADA's float16
   blocks (``num_fp16_res=4``, ``conv_clamp=256``), GPU runs only (tests/test_stylegan2.py
   checks those blocks on the CPU). R3GAN-32 (``model=r3gan``, Config E's widths) in fp32 and with
   the authors' bfloat16 stages (``bf16_stages=3``, every stage but the 4x4 one, as
   ``experiment=r3gan_cifar10``), GPU runs only (tests/test_r3gan.py checks them on the CPU).
2. FID/IS/KID of N generated against N real images: genlab's ImageMetrics vs torch-fidelity's
   ``calculate_metrics`` on the same uint8 tensors (time, images/s, values).
3. ``data=prepared`` vs ``data=folder`` feeding DCGAN-64 (128 px PNGs, decoded by 2 workers).
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure import (  # noqa: E402
    BIN,
    REPO,
    machine,
    pair_stats,
    run,
    steady,
    thread_env,
    timer_overrides,
)

# genlab-train as installed, or from the checkout (gpu.sh's path with .devkit, device_kit.sh)
TRAIN = (
    [BIN / "genlab-train"]
    if (BIN / "genlab-train").exists()
    else [sys.executable, "-m", "genlab.cli.train"]
)

SIZES = {
    "full": {
        "batch": [64, 256],
        "warmup": 10,
        "batches": 40,
        "sngan_width": [],  # the paper's widths (256 in G, 128 in D at 32 px)
        "sg2_width": [],  # the cifar config: 512 channels at every resolution
        "r3gan": True,  # Config E: 4 stages of 768 channels
        "metrics_n": 10000,
        "metrics_batch": 200,
        "feed_files": 4000,
        "feed_batch": 64,
        "feed_batches": 60,
        "compile": True,
    },
    "quick": {
        "batch": [8, 16],
        "warmup": 1,
        "batches": 3,
        "sngan_width": ["model.generator.base_channels=16", "model.discriminator.base_channels=16"],
        "sg2_width": None,  # seconds a step even tiny (4 sweeps: 3.5 min here); GPU runs only
        "r3gan": False,  # 768 channels: seconds a step even tiny, bf16 ~14x slower; GPU runs only
        "metrics_n": 24,
        "metrics_batch": 8,
        "feed_files": 96,
        "feed_batch": 16,
        "feed_batches": 4,
        "compile": False,  # inductor's CPU compile takes minutes: the GPU run covers it
    },
}
# setting -> genlab-train overrides; every one starts from fp32 with the speed-ups off
SETTINGS = {
    "fp32": ["trainer.precision=32-true"],
    "bf16-mixed": ["trainer.precision=bf16-mixed"],
    "channels_last": ["speed.channels_last=true"],
    "compile": ["speed.compile=true"],
}
MODELS = {"dcgan32": "gan", "sngan32": "sngan"}
# StyleGAN2's own mixed precision is its float16 blocks, under trainer.precision=32-true
SG2_SETTINGS = {
    "fp32": [],
    "fp16-blocks": ["model.generator.num_fp16_res=4", "model.generator.conv_clamp=256"],
}
# R3GAN's own mixed precision is its bfloat16 stages (D follows G's count), also under 32-true
R3GAN_SETTINGS = {
    "fp32": [],
    "bf16-stages": ["model.generator.bf16_stages=3"],
}


def device_overrides() -> list[str]:
    import torch

    return ["trainer=gpu"] if torch.cuda.is_available() else ["trainer=cpu"]


def train_sweep(size: dict, work: Path, name: str, model: str, extra: list[str]) -> list[dict]:
    """One ``genlab-train -m`` sweep over the batch sizes on 32 px synthetic RGB images."""
    per_run = size["warmup"] + size["batches"]
    n_images = int(per_run * max(size["batch"]) / 0.9) + max(size["batch"])
    sweep_dir = work / "train" / name
    cmd = [
        *TRAIN,
        "-m",
        f"model={model}",
        "data=synthetic",
        "data.image_size=32",
        "data.channels=3",
        f"data.synthetic_size={n_images}",
        f"data.batch_size={','.join(map(str, size['batch']))}",
        "logger=csv",
        "metrics=none",
        "callbacks=none",
        "trainer.max_epochs=1",
        f"++trainer.limit_train_batches={per_run}",
        "++trainer.limit_val_batches=0",
        f"hydra.sweep.dir={sweep_dir}",
        *device_overrides(),
        *timer_overrides("${paths.output_dir}/timing.json"),
        *extra,
    ]
    proc = run(cmd, work / "train" / f"{name}.log", thread_env("default"), work)
    rows = []
    for timing in sorted(sweep_dir.glob("*/timing.json")):
        t = json.loads(timing.read_text())
        row = {"batch_size": t["batch_size"], **steady(t, size["warmup"])}
        row["weights_finite"] = weights_finite(timing.parent)
        if t.get("pairs"):
            row["paired"] = pair_stats(t["pairs"][size["warmup"] :])
        rows.append(row)
    return [
        dict(r, sweep_wall_s=proc["wall_s"]) for r in sorted(rows, key=lambda r: r["batch_size"])
    ]


def weights_finite(run_dir: Path) -> bool:
    """Whether every floating-point tensor of the run's last checkpoint (G, D, EMA, optimiser
    state) is finite: reduced precision that overflowed leaves inf or nan behind."""
    import torch

    ckpt = max(run_dir.glob("**/checkpoints/*.ckpt"), key=lambda f: f.stat().st_mtime)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    tensors = [*state["state_dict"].values()]
    for opt in state.get("optimizer_states", []):
        for slot in opt["state"].values():
            tensors += [v for v in slot.values() if torch.is_tensor(v)]
    return all(bool(t.isfinite().all()) for t in tensors if t.is_floating_point())


def bench_training(size: dict, work: Path) -> dict:
    """images/s and peak GPU memory per model x setting x batch size."""
    results: dict = {}
    for label, model in MODELS.items():
        width = size["sngan_width"] if model == "sngan" else []
        for setting, overrides in SETTINGS.items():
            if setting == "compile" and not size["compile"]:
                continue
            # only DCGAN has a hand-written twin doing the same work (ns loss, one D step)
            pair = (
                ["+callbacks.step_timer.pair=true"] if (model, setting) == ("gan", "fp32") else []
            )
            name = f"{label}_{setting}"
            rows = train_sweep(size, work, name, model, [*overrides, *width, *pair])
            results[name] = {"model": label, "setting": setting, "rows": rows}
            rates = ", ".join(f"b{r['batch_size']} {r['images_per_s']:.0f}" for r in rows)
            print(f"  {name}: images/s {rates}", flush=True)
    own_precision = []  # (label, model, setting, overrides): the nets' own reduced precision
    if size["sg2_width"] is not None:
        own_precision += [
            ("stylegan2_32", "stylegan2", k, [*v, *size["sg2_width"]])
            for k, v in SG2_SETTINGS.items()
        ]
    if size["r3gan"]:
        own_precision += [("r3gan_32", "r3gan", k, v) for k, v in R3GAN_SETTINGS.items()]
    for label, model, setting, overrides in own_precision:
        name = f"{label}_{setting}"
        rows = train_sweep(size, work, name, model, overrides)
        results[name] = {"model": label, "setting": setting, "rows": rows}
        rates = ", ".join(f"b{r['batch_size']} {r['images_per_s']:.0f}" for r in rows)
        print(f"  {name}: images/s {rates}", flush=True)
    return results


def weights_file(work: Path) -> tuple[Path, str]:
    """The real Inception weights when torch's hub cache holds them, else random ones."""
    import torch

    from genlab.metrics import WEIGHTS_FILE

    real = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE
    if real.is_file():
        return real, "torch-fidelity's InceptionV3 weights"
    sys.path.insert(0, str(REPO))
    from tests.inception import random_inception_weights

    path = random_inception_weights(work / "inception" / WEIGHTS_FILE)
    return path, "random InceptionV3 weights in torch-fidelity's format (values not comparable)"


def bench_metrics(size: dict, work: Path) -> dict:
    """FID/IS/KID of n vs n uint8 images: genlab's ImageMetrics vs torch_fidelity, same tensors."""
    import torch
    import torch_fidelity

    from genlab.data.sources import synthetic_images
    from genlab.metrics import ImageMetrics

    n, bs = size["metrics_n"], size["metrics_batch"]
    cuda = torch.cuda.is_available()
    weights, what = weights_file(work)
    real, _ = synthetic_images(n, 8, 64, 3, seed=1)  # (N, 3, 64, 64) uint8
    fake, _ = synthetic_images(n, 6, 64, 3, seed=2)
    kid_subset = min(1000, n)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    metrics = ImageMetrics(
        inception_weights=str(weights),
        kid_subset_size=kid_subset,
        batch_size=bs,
        device="cuda" if cuda else "cpu",
    )
    metrics.features(real[:bs].float() / 127.5 - 1)  # warm-up: cuDNN plans, allocator
    sync()
    t0 = time.perf_counter()
    r = metrics.features(real.float() / 127.5 - 1)
    f = metrics.features(fake.float() / 127.5 - 1)
    genlab = metrics.compute(r["pool"], f["pool"], f["logits"])
    sync()
    genlab_s = time.perf_counter() - t0

    class Uint8(torch.utils.data.Dataset):
        def __init__(self, images: torch.Tensor) -> None:
            self.images = images

        def __len__(self) -> int:
            return len(self.images)

        def __getitem__(self, i: int) -> torch.Tensor:
            return self.images[i]

    t0 = time.perf_counter()
    fidelity = torch_fidelity.calculate_metrics(
        input1=Uint8(fake),
        input2=Uint8(real),
        cuda=cuda,
        isc=True,
        fid=True,
        kid=True,
        kid_subset_size=kid_subset,
        batch_size=bs,
        feature_extractor_weights_path=str(weights),
        cache=False,
        verbose=False,
        save_cpu_ram=True,
    )
    sync()
    fidelity_s = time.perf_counter() - t0
    row = {
        "n_real": n,
        "n_fake": n,
        "weights": what,
        "genlab_s": genlab_s,
        "fidelity_s": fidelity_s,
        "genlab_images_per_s": 2 * n / genlab_s,
        "fidelity_images_per_s": 2 * n / fidelity_s,
        "genlab": genlab,
        "fidelity": {k: float(v) for k, v in fidelity.items()},
    }
    print(f"  metrics: genlab {genlab_s:.1f} s, torch-fidelity {fidelity_s:.1f} s", flush=True)
    return row


def bench_feed(size: dict, work: Path) -> dict:
    """DCGAN-64 training images/s fed by data=folder (2 workers) and by data=prepared."""
    from data_workloads import photo_folder

    root = photo_folder(work / "feed_png", size["feed_files"], ".png")
    prepared = work / "feed_prepared"
    prep = [sys.executable, "-m", "genlab.cli.prepare", "data=folder", f"data.root={root}"]
    run(
        [*prep, "data.image_size=64", f"out={prepared}"],
        work / "feed_prepare.log",
        thread_env("default"),
        work,
    )
    rows = {}
    cases = {
        "folder": ["data=folder", f"data.root={root}"],
        "prepared": ["data=prepared", f"data.path={prepared}"],
    }
    for name, data in cases.items():
        out = work / "feed" / name
        cmd = [
            *TRAIN,
            "model=gan",
            *data,
            "data.image_size=64",
            "data.channels=3",
            f"data.batch_size={size['feed_batch']}",
            "logger=csv",
            "metrics=none",
            "callbacks=none",
            "trainer.max_epochs=1",
            f"++trainer.limit_train_batches={size['warmup'] + size['feed_batches']}",
            "++trainer.limit_val_batches=0",
            f"hydra.run.dir={out}",
            *device_overrides(),
            *timer_overrides(str(out / "timing.json")),
        ]
        proc = run(cmd, out.with_suffix(".log"), thread_env("default"), work)
        t = json.loads((out / "timing.json").read_text())
        rows[name] = {**steady(t, size["warmup"]), "process": proc}
    rows["ratio"] = rows["prepared"]["images_per_s"] / rows["folder"]["images_per_s"]
    print(f"  feeding DCGAN-64: prepared / folder {rows['ratio']:.2f}x", flush=True)
    return rows


def markdown(r: dict) -> str:
    """The tables of results.json."""
    from md_tables import fmt, table, tidy

    m = r["machine"]
    out = [f"# genlab GPU benchmark ({r['mode']} run)\n"]
    out.append(
        f"`bash experiments/benchmarks/gpu.sh` ({r['total_s'] / 60:.1f} min) on "
        f"{m['gpu'] or 'no GPU: ' + m['cpu']}, torch {m['torch']}.\n\n"
    )
    out.append("## 1. Training images/s (synthetic 32 px RGB, genlab-train, no metrics)\n\n")
    rows = []
    for res in r["training"].values():
        for x in res["rows"]:
            p = x.get("paired")
            rows.append(
                [
                    res["model"],
                    res["setting"],
                    x["batch_size"],
                    fmt(x["images_per_s"]),
                    fmt(x["cuda_peak_mb"]),
                    "yes" if x["weights_finite"] else "**no**",
                    f"{p['ratio']:.3f} ({p['step_ms']:.2f} / {p['hand_step_ms']:.2f} ms)"
                    if p
                    else "-",
                ]
            )
    header = [
        "model",
        "setting",
        "batch",
        "images/s",
        "peak GPU MB",
        "weights finite",
        "hand / genlab step (paired)",
    ]
    out.append(table(header, rows))
    out.append(
        "\nPaired: after each genlab step the hand-written step runs on copies of the same "
        "networks and batch (DCGAN only: SNGAN's hinge loss with 5 D steps has no twin); "
        "1.0 = no overhead. Weights finite: every float tensor of the run's last checkpoint "
        "(networks, EMA, optimiser state) after its steps, the reduced-precision settings' "
        "stability check.\n\n"
    )
    mt = r["metrics"]
    out.append(f"## 2. FID/IS/KID of {mt['n_fake']} vs {mt['n_real']} images ({mt['weights']})\n\n")
    g, f = mt["genlab"], mt["fidelity"]
    out.append(
        table(
            ["tool", "s", "images/s", "FID", "IS", "KID"],
            [
                [
                    "genlab ImageMetrics",
                    fmt(mt["genlab_s"], 1),
                    fmt(mt["genlab_images_per_s"]),
                    f"{g['fid']:.4f}",
                    f"{g['is_mean']:.4f}",
                    f"{g['kid_mean']:.5f}",
                ],
                [
                    "torch-fidelity",
                    fmt(mt["fidelity_s"], 1),
                    fmt(mt["fidelity_images_per_s"]),
                    f"{f['frechet_inception_distance']:.4f}",
                    f"{f['inception_score_mean']:.4f}",
                    f"{f['kernel_inception_distance_mean']:.5f}",
                ],
            ],
        )
    )
    fd = r["feed"]
    out.append("\n## 3. Feeding the model: DCGAN-64 on 128 px PNGs resized to 64 px\n\n")
    out.append(
        table(
            ["data", "images/s", "peak GPU MB"],
            [
                [f"`data={k}`", fmt(fd[k]["images_per_s"]), fmt(fd[k]["cuda_peak_mb"])]
                for k in ("folder", "prepared")
            ],
        )
    )
    out.append(f"\n`data=prepared` / `data=folder`: **{fd['ratio']:.2f}x**.\n")
    return tidy("".join(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, runs on the CPU")
    parser.add_argument("--out", type=Path, default=HERE / "gpu", help="results.{json,md} here")
    parser.add_argument("--work", type=Path, help="run directories (default: a temp dir)")
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    size = SIZES[mode]
    work = args.work or Path(tempfile.mkdtemp(prefix="genlab-gpu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    results = {"mode": mode, "sizes": size, "machine": machine()}
    try:
        print("1. training", flush=True)
        results["training"] = bench_training(size, work)
        print("2. FID/IS/KID", flush=True)
        results["metrics"] = bench_metrics(size, work)
        print("3. feeding the model", flush=True)
        results["feed"] = bench_feed(size, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    results["total_s"] = time.time() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    print(f"wrote {args.out / 'results.md'} and results.json in {results['total_s']:.0f} s")


if __name__ == "__main__":
    main()
