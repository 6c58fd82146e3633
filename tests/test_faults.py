"""The faults a cluster throws (issue 24): a rank that dies or hangs, sweep jobs sharing a
cache, a full disk, stale or half-written inputs, and a SLURM preemption cycle."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genlab.errors import GenlabWarning
from genlab.metrics.cache import load_reference_entry, reference_features, store_reference

FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist

# ---------------------------------------------------------------------------------------------
# Sweep jobs that share caches: two processes asking for the same entry at the same moment.

# Each child waits for the other at a barrier of files, then asks; whoever computes records it
# and takes 3 s, so the other asks while the entry is being computed.
CHILD = """
import logging, sys, time
from pathlib import Path
import torch
logging.basicConfig(level=logging.INFO, format="%(message)s")
tmp, me = Path(sys.argv[1]), sys.argv[2]
def slowly(compute):
    def run(*args, **kwargs):
        with open(tmp / "computed", "a") as f:
            f.write(me + "\\n")
        time.sleep(3)
        return compute(*args, **kwargs)
    return run
{setup}
(tmp / f"ready-{{me}}").touch()
while len(list(tmp.glob("ready-*"))) < 2:
    time.sleep(0.02)
torch.save({call}, tmp / f"result-{{me}}.pt")
"""

SHARED = {
    "reference": (
        "from genlab.metrics.cache import reference_features",
        "reference_features({'dataset': 'x', 'n_real': 3}, tmp / 'cache', "
        "slowly(lambda: torch.arange(12.0).reshape(3, 4)))",
    ),
    # the quick digit classifier of test_modes (its accuracy floor lowered: speed is the point)
    "modes": (
        "import genlab.metrics.modes as m\n"
        "m.MIN_ACCURACY = 0.0\n"
        "m.ModeClassifier.train = slowly(m.ModeClassifier.train)",
        "m.ModeClassifier(str(tmp / 'cache'), width=4, epochs=1, members=1, batch_size=512, "
        "augment=False).net.state_dict()",
    ),
    "fashion": (
        "import genlab.metrics.classifier as c\n"
        "c.FashionClassifier.train = slowly(c.FashionClassifier.train)",
        f"c.FashionClassifier(cache_dir=str(tmp / 'cache'), data_root='{FASHION}', "
        "train_limit=500, epochs=1, width=4, batch_size=64, min_accuracy=0.0).net.state_dict()",
    ),
}


@pytest.mark.parametrize("cache", list(SHARED))
def test_two_jobs_share_one_cache_entry_computed_once(cache, tmp_path):
    if cache == "fashion" and not FASHION.is_dir():
        pytest.skip("needs Debian's dataset-fashion-mnist")
    setup, call = SHARED[cache]
    code = CHILD.format(setup=setup, call=call)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path), me], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for me in ("a", "b")
    ]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    computed = (tmp_path / "computed").read_text().split()
    assert len(computed) == 1, f"computed by {computed}"  # old code: by both
    said = ["another process is computing it" in err for _, err in outs]
    waited = [me for me, s in zip("ab", said, strict=True) if s]
    assert waited == [m for m in "ab" if m not in computed]  # the other said why it waited
    a, b = torch.load(tmp_path / "result-a.pt"), torch.load(tmp_path / "result-b.pt")
    if isinstance(a, dict):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    else:
        assert torch.equal(a, torch.arange(12.0, dtype=torch.float64).reshape(3, 4))
        assert torch.equal(a, b)
    # one entry; no temp file, no lock file left beside it
    assert len(list((tmp_path / "cache").iterdir())) == 1, list((tmp_path / "cache").iterdir())


# ---------------------------------------------------------------------------------------------
# Half-written caches


def test_a_half_written_reference_cache_is_recomputed_never_read(tmp_path):
    """Regression (01a73ec already warned): a truncated or garbage entry is named and recomputed,
    never read as (shorter or wrong) statistics."""
    key = {"dataset": "x", "n_real": 64}
    pool = torch.randn(64, 8, dtype=torch.float64)
    path = store_reference(key, tmp_path, pool)
    whole = path.read_bytes()
    for damaged in (whole[: len(whole) // 2], whole[:-200], b"\0" * len(whole)):
        path.write_bytes(damaged)
        with pytest.warns(GenlabWarning, match=rf"^{path}: unreadable reference cache"):
            assert load_reference_entry(key, tmp_path) is None
        with pytest.warns(GenlabWarning, match="unreadable"):
            assert torch.equal(reference_features(key, tmp_path, lambda: pool), pool)
        assert path.read_bytes() == whole  # rewritten whole


def test_a_half_written_classifier_cache_is_named_and_retrained(tmp_path):
    """01a73ec retrained a damaged digit-classifier cache without a word."""
    import genlab.metrics.modes as m

    quick = {"width": 4, "epochs": 1, "members": 1, "batch_size": 512, "augment": False}
    floor, m.MIN_ACCURACY = m.MIN_ACCURACY, 0.0
    try:
        first = m.ModeClassifier(str(tmp_path), **quick)
        whole = first.path.read_bytes()
        first.path.write_bytes(whole[: len(whole) // 3])
        with pytest.warns(GenlabWarning, match=rf"^{first.path}: unreadable classifier cache"):
            again = m.ModeClassifier(str(tmp_path), **quick)
    finally:
        m.MIN_ACCURACY = floor
    assert torch.equal(again.reads, first.reads)
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]
