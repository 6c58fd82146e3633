"""Every command block of README.md and experiments/*/README.md runs as written: exit 0 and no
traceback, at a tiny budget.

The blocks run in order in one workspace, so a block finds the runs an earlier one trained, as a
reader following the README would. Shims named like the console scripts stand first on PATH: they
run the real script with the block's arguments as written, then append the budget (an epoch of two
batches, a few dozen samples) and, for the random Inception weights every offline test uses,
``metrics.inception_sha256=null``. Placeholders (RUN, DATE/TIME, /path/to/...) become the run
last trained and files the fixture made. A command too long for the suite even at a tiny budget is
named in SKIPPED with the test that runs it.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BIN, REPO, cli_env, slurm_states, usable_partitions, worker_cores
from tests.inception import random_dinov2_weights

# the blocks build on each other's runs (latest_run) in one workspace: under `pytest -n 2` they
# go to one worker as a group, in order, and conftest puts the group first (it is the longest)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("readme_walk")]

DOCS = [REPO / "README.md", *sorted((REPO / "experiments").glob("*/README.md"))]
FASHION = Path("/usr/share/datasets/fashion-mnist")

# command (a regex on the line) -> why the walk does not run it, and what runs it instead
SKIPPED = {
    r"^pip install": ".ci/run installs with this command in a fresh venv",
    r"^pytest\b": "the suite this test is part of",
    r"^python experiments/benchmarks/run\.py --quick": "tests/test_benchmarks.py runs it",
    r"^python experiments/benchmarks/run\.py": "the benchmark at full size (2 to 12 minutes); "
    "tests/test_benchmarks.py runs its --quick mode",
    r"^python experiments/intervals/coverage\.py": "tests/test_intervals.py runs its --quick mode; "
    "the grid is 75 minutes",
    r"^python experiments/posthoc_ema/study\.py --seed": "nine 25-epoch runs a seed; "
    "tests/test_posthoc_ema.py runs the study's sweep on a tiny run",
    r"^bash experiments/stacked_mnist/run\.sh": "nine 3-epoch runs; tests/test_modes.py trains "
    "with metrics=modes",
    r"^bash experiments/vae_samplers/run\.sh": "18 training runs, the classifier, 27 evaluations "
    "(about 40 minutes); tests/test_samplers.py scores genlab-eval sampler=gmm and genlab-sample "
    "sampler=two_stage on a tiny run, tests/test_vae_samplers_study.py the tables",
    r"ema\.sweep=\[0\.0[23],": "profiles this narrow need a real run's hundreds of snapshots; "
    "tests/test_posthoc_ema.py sweeps near the stored profiles",
}

# what each console script gets after the block's own arguments
BUDGET = {
    "genlab-train": [
        "trainer.max_epochs=1",
        "++trainer.limit_train_batches=2",
        "++trainer.limit_val_batches=1",
    ],
    "genlab-eval": ["++trainer.limit_val_batches=1"],
}
SAMPLE_METRICS = [
    "metrics.num_samples=20",
    "metrics.num_real=20",
    "metrics.batch_size=20",
    "metrics.inception_sha256=null",
]

SHIM = """\
import os, sys
tool, args = sys.argv[1], sys.argv[2:]
budget = {budget!r}
extra = list(budget.get(tool, []))
metrics_off = any(a in ("metrics=none",) for a in args)
if tool == "genlab-eval" and not metrics_off:
    extra += {sample_metrics!r}
    if any("backbone=dinov2" in a for a in args):
        extra.append("metrics.dinov2_arch=vits14")  # the random weights are ViT-S/14's
if any(a.startswith("metrics.jackknife=") for a in args):
    extra += ["metrics.num_samples=40", "metrics.num_real=40"]  # 20 groups of 2
if tool == "genlab-train" and any(a.startswith("metrics=modes") for a in args):
    extra += ["metrics.num_samples=64", "+metrics.modes_classifier.epochs=5"]  # 0.98 held out
if tool == "genlab-train":
    # snapshots within two batches, so the post-hoc EMA blocks have profiles to rebuild from
    args = ["callbacks.posthoc_ema.every_n_images=32" if "posthoc_ema.every_n_images" in a
            else a for a in args]
if tool == "genlab-sample" and "nearest=true" in args:
    extra += ["+metrics.inception_sha256=null", "+metrics.num_real=20"]
os.execv({bin!r} + "/" + tool, [tool, *args, *extra])
"""

PREAMBLE = """\
set -eo pipefail
latest_run() { ls -td outputs/*/*/checkpoints outputs/*/checkpoints | head -1 | xargs dirname; }
latest_sweep() { ls -td multirun/*/* | head -1; }
"""


def blocks(path: Path) -> list[str]:
    """The ```bash blocks of a markdown file, dedented."""
    found = re.findall(r"^( *)```bash\n(.*?)^ *```", path.read_text(), re.S | re.M)
    return [re.sub(rf"(?m)^{indent}", "", text) for indent, text in found]


def commands(block: str) -> list[str]:
    """Its commands, a backslash continuation joined into one line."""
    return [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]


def skipped(command: str) -> str | None:
    return next((why for pattern, why in SKIPPED.items() if re.search(pattern, command)), None)


def cases() -> list:
    out = []
    for doc in DOCS:
        for i, block in enumerate(blocks(doc)):
            name = f"{doc.relative_to(REPO)}#{i + 1}"
            runnable = [c for c in commands(block) if not c.startswith("#") and not skipped(c)]
            marks = [] if runnable else [pytest.mark.skip(reason=skipped(commands(block)[0]))]
            if "fashion-mnist" in block and not FASHION.is_dir():
                marks = [pytest.mark.skip(reason=f"{FASHION} not installed")]
            if "hydra/launcher=slurm" in block and not usable_partitions(slurm_states()):
                marks = [pytest.mark.skip(reason="no local SLURM cluster answers (sinfo)")]
            out.append(pytest.param(doc, i, id=name, marks=marks))
    return out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, weights):
    """A directory laid out as the README's reader has it, with shims and placeholder files."""
    root = tmp_path_factory.mktemp("readme")
    shims = root / "shims"
    shims.mkdir()
    (shims / "shim.py").write_text(
        SHIM.format(budget=BUDGET, sample_metrics=SAMPLE_METRICS, bin=str(BIN))
    )
    for tool in ("genlab-train", "genlab-eval", "genlab-sample", "genlab-compare",
                 "genlab-prepare", "genlab-export"):  # fmt: skip
        script = shims / tool
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{shims}/shim.py" {tool} "$@"\n')
        script.chmod(0o755)
    work = root / "work"
    work.mkdir()
    shutil.copytree(REPO / "experiments", work / "experiments")  # study scripts write here
    images = root / "images"
    images.mkdir()
    make_images(images)
    hf_dataset = make_hf_dataset(images, root / "hf_dataset")
    dinov2 = random_dinov2_weights(root / "dinov2_vits14_pretrain.pth")
    env = cli_env(root)
    env["PATH"] = f"{shims}{os.pathsep}{env['PATH']}"
    env["GENLAB_CACHE_DIR"] = str(root / "cache")
    # Inception's passes dominate and the blocks run one at a time: the threads of the cores this
    # worker has (2 alone here; 1 under `pytest -n 2`: beside a one-thread load, 2 threads took
    # blocks 12, 16 and 17 1.4x as long as 1)
    env["OMP_NUM_THREADS"] = str(len(worker_cores()))
    places = {
        "/path/to/weights-inception-2015-12-05-6726825d.pth": str(weights),
        "metrics.inception_weights=...": f"metrics.inception_weights={weights}",
        "/path/to/dinov2_vitl14_pretrain.pth": str(dinov2),
        "/path/to/images": str(images),
        "/path/to/hf_dataset": str(hf_dataset),
        "RUN/": "$(latest_run)/",
        "outputs/DATE/TIME": "$(latest_run)",
        "multirun/DATE/TIME": "$(latest_sweep)",
    }
    # the grid of README's Sweeps section (one seed), for the blocks that compare a sweep
    sweep = ["genlab-train", "-m", "model.optimizer_g.lr=1e-4,2e-4", "seed=1",
             f"metrics.inception_weights={weights}", *SAMPLE_METRICS]  # fmt: skip
    proc = subprocess.run(sweep, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, env, places


def make_images(folder: Path) -> None:
    """160 small colour PNGs in two class folders: more than a batch of 64 after the val split."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(160):
        (folder / f"c{i % 2}").mkdir(exist_ok=True)
        pixels = rng.integers(0, 256, (72, 72, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"c{i % 2}" / f"{i}.png")


def make_hf_dataset(images: Path, out: Path) -> Path:
    """The images as a Hugging Face dataset saved with save_to_disk, their folders as classes."""
    import datasets

    files = sorted(images.rglob("*.png"))
    table = datasets.Dataset.from_dict(
        {"image": [str(f) for f in files], "label": [int(f.parent.name[1:]) for f in files]},
        features=datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(names=["c0", "c1"])}
        ),
    )
    table.save_to_disk(str(out))
    return out


@pytest.mark.parametrize(("doc", "index"), cases())
def test_the_block_runs_as_written(workspace, doc, index):
    work, env, places = workspace
    lines = commands(blocks(doc)[index])
    script = "\n".join(
        line if (why := skipped(line)) is None else f"true  # skipped: {why}" for line in lines
    )
    for placeholder, value in places.items():
        script = script.replace(placeholder, value)
    proc = subprocess.run(
        ["bash", "-c", PREAMBLE + script],
        cwd=work, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{script}\n{out[-4000:]}"
    assert "Traceback" not in out, out[-4000:]
