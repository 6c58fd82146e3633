"""The extra cost of each sample metric (issues 13, 21) at 10k real x 10k fake features.

    python experiments/benchmarks/knn_metrics.py            # n = 10,000, ~15 min on 2 CPU cores
    python experiments/benchmarks/knn_metrics.py --quick    # n = 1,000, seconds

Times each metric from 2048-d float64 features (what the Inception pass gives; the values do not
change the cost), against FID and KID on the same features: the k-NN metrics, the memorisation
tests (with a third, held-out set), FID_inf, Vendi, CMMD's MMD (on 768 of the dimensions, CLIP
ViT-L/14's width) and the jackknife intervals, and the peak memory of the k-NN pass at the
default block. The feature pass itself (InceptionV3 at ~6 images/s on this CPU, results.md) is
shared by every metric and not repeated. Writes knn_metrics.json and knn_metrics.md beside this
file (or into --out).
"""

import argparse
import json
import os
import platform
import resource
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from genlab.metrics import copies_fraction, fid_from_features, kid_from_features
from genlab.metrics import jackknife as jk
from genlab.metrics import memorisation as mem
from genlab.metrics.cmmd import cmmd_from_features
from genlab.metrics.fid import fid_infinity
from genlab.metrics.knn import DEFAULT_BLOCK
from genlab.metrics.prdc import prdc_from_features
from genlab.metrics.vendi import vendi_from_features

HERE = Path(__file__).resolve().parent
INCEPTION_IMAGES_PER_S = 6  # DESIGN.md / results.md: InceptionV3 features on this 2-core CPU
KNN = "precision, recall, density, coverage, copies (one k-NN pass)"


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 1000")
    parser.add_argument("--n", type=int, default=None, help="real and fake features (10000)")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--block", type=int, default=DEFAULT_BLOCK)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    n = args.n or (1000 if args.quick else 10_000)
    g = torch.Generator().manual_seed(0)
    real = torch.randn(n, args.dim, generator=g, dtype=torch.float64)
    fake = 0.9 * torch.randn(n, args.dim, generator=g, dtype=torch.float64) + 0.05
    base_rss = peak_rss_mb()
    times, values = {}, {}
    # first, so that the peak memory after it is the k-NN pass's own
    prdc, times[KNN] = timed(lambda: prdc_from_features(real, fake, 3, 5, args.block))
    knn_rss = peak_rss_mb()
    values.update(prdc.values())
    values["fid"], times["fid"] = timed(lambda: fid_from_features(real, fake))
    (values["kid"], _), times[f"kid (100 subsets of {min(1000, n)})"] = timed(
        lambda: kid_from_features(real, fake, min(1000, n), 100)
    )
    _, times["copies alone (its own k-NN pass)"] = timed(
        lambda: copies_fraction(real, fake, args.block)
    )
    heldout = torch.randn(n, args.dim, generator=g, dtype=torch.float64)
    _, times["copies calibrated on held-out images (3 k-NN passes)"] = timed(
        lambda: mem.calibrated_copies(real, heldout, fake, args.block)
    )
    _, times["C_T (PCA to 64-d, 3 k-means cells)"] = timed(
        lambda: mem.ct_score(real, heldout, fake, block=args.block)
    )
    _, times["authenticity (2 k-NN passes)"] = timed(
        lambda: mem.authenticity(real, fake, args.block)
    )
    _, times["FID_inf (15 FIDs of fake subsets)"] = timed(
        lambda: fid_infinity(real, fake, min_fake=n // 2)
    )
    _, times["Vendi of the fakes"] = timed(lambda: vendi_from_features(fake))
    width = min(768, args.dim)
    _, times[f"CMMD's MMD ({width}-d)"] = timed(
        lambda: cmmd_from_features(real[:, :width], fake[:, :width])
    )
    groups = min(20, n // 2)
    _, times[f"jackknife: FID interval ({groups} groups)"] = timed(
        lambda: jk.fid_jackknife(real, fake, groups, value=values["fid"])
    )
    _, times[f"jackknife: KID interval (all pairs, {groups} groups)"] = timed(
        lambda: jk.kid_jackknife(real, fake, groups, block=args.block)
    )
    feature_pass = 2 * n / INCEPTION_IMAGES_PER_S  # real (cached after once) + fake
    result = {
        "n_real": n,
        "n_fake": n,
        "dim": args.dim,
        "knn_block": args.block,
        "seconds": times,
        "values": values,
        "peak_rss_mb": {"features": base_rss, "after_knn_pass": knn_rss},
        "load_average": os.getloadavg(),
        "knn_block_mb": args.block * n * 8 / 2**20,
        "inception_pass_seconds_estimate": feature_pass,
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{platform.python_version()}, torch {torch.__version__}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "knn_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "knn_metrics.md").write_text(report(result))
    print(report(result))


def report(r: dict) -> str:
    knn = r["seconds"][KNN]
    lines = [
        f"# Sample metrics at {r['n_real']:,} real x {r['n_fake']:,} fake, {r['dim']}-d features\n",
        f"{r['machine']}; {r['date']}; load average {r['load_average'][0]:.1f} (a shared "
        "machine: other work ran beside it). Block: "
        f"{r['knn_block']} rows "
        f"({r['knn_block_mb']:.0f} MB of distances at a time); peak RSS "
        f"{r['peak_rss_mb']['features']:.0f} MB with the features, "
        f"{r['peak_rss_mb']['after_knn_pass']:.0f} MB after the k-NN pass.\n",
        "| metric | seconds |",
        "|---|---|",
        *(f"| {name} | {sec:.1f} |" for name, sec in r["seconds"].items()),
        "",
        f"The k-NN pass adds {knn:.0f} s to an evaluation whose InceptionV3 pass over "
        f"{r['n_real'] + r['n_fake']:,} images takes ~{r['inception_pass_seconds_estimate']:.0f} s "
        f"here ({100 * knn / r['inception_pass_seconds_estimate']:.1f}%; the real half is cached "
        "after the first evaluation).\n",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
