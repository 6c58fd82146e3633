"""A checkpoint someone else wrote is data, not a program.

genlab reads checkpoints with ``weights_only=True`` and then builds the classes their saved run
config names. A crafted config could name ``torch.hub.load`` of a local directory (Hydra's own
instantiate allowlist lets it through): importing that directory's ``hubconf.py`` runs its code.
genlab builds only the classes of one table (``genlab.checkpoints.TARGETS``), refuses the rest
before anything is imported, and opens the rest only with ``trust_checkpoint=true``.
"""

import re
from pathlib import Path

import pytest
import torch

from genlab.checkpoints import TARGETS, load_model
from genlab.errors import GenlabError
from tests.conftest import REPO

FIXTURE = Path(__file__).parent / "fixtures" / "v0.1-layout" / "gan_mlp.ckpt"


def evil_repo(tmp_path: Path) -> tuple[Path, Path]:
    """A torch.hub directory whose hubconf.py writes a sentinel file when imported."""
    repo, sentinel = tmp_path / "evil", tmp_path / "pwned"
    repo.mkdir()
    (repo / "hubconf.py").write_text(
        f"from pathlib import Path\nPath({str(sentinel)!r}).write_text('ran')\n"
        "def net(**kwargs):\n    import torch\n    return torch.nn.Linear(1, 1)\n"
    )
    return repo, sentinel


def crafted(tmp_path: Path, node: str) -> tuple[Path, Path]:
    """The fixture checkpoint with config node ``node`` replaced by a code-running target."""
    repo, sentinel = evil_repo(tmp_path)
    ckpt = torch.load(FIXTURE, map_location="cpu", weights_only=True)
    *parents, last = node.split(".")
    parent = ckpt["genlab_config"]
    for name in parents:
        parent = parent[name]
    parent[last] = {"_target_": "torch.hub.load", "repo_or_dir": str(repo), "model": "net",
                    "source": "local"}  # fmt: skip
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save(ckpt, path)
    return path, sentinel


@pytest.mark.parametrize("node", ["model", "model.generator", "data", "metrics"])
def test_a_code_running_target_is_refused_before_it_runs(tmp_path, node):
    path, sentinel = crafted(tmp_path, node)
    with pytest.raises(GenlabError) as err:
        load_model(str(path))
    assert not sentinel.exists()
    message = str(err.value)
    assert "\n" not in message
    assert f"{node}._target_=torch.hub.load" in message and "trust_checkpoint=true" in message


def test_trust_opens_a_checkpoint_the_user_vouches_for(tmp_path):
    path, sentinel = crafted(tmp_path, "metrics")  # a node load_model does not build
    load_model(str(path), trust=True)
    assert not sentinel.exists()  # trusted, but nothing built it yet


def test_an_interpolation_in_a_saved_config_is_refused(tmp_path):
    ckpt = torch.load(FIXTURE, map_location="cpu", weights_only=True)
    ckpt["genlab_config"]["data"]["root"] = "${oc.env:WANDB_API_KEY}"  # saved configs are resolved
    path = tmp_path / "x.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(GenlabError, match=r"data\.root=\$\{oc\.env:WANDB_API_KEY\}"):
        load_model(str(path))


@pytest.mark.parametrize(
    ("tool", "node", "extra"),
    [("genlab-eval", "data", ["metrics=none"]), ("genlab-sample", "model.generator", [])],
)
def test_the_doors_refuse_a_crafted_checkpoint_in_one_line(run_cli, tmp_path, tool, node, extra):
    path, sentinel = crafted(tmp_path, node)
    proc = run_cli(tool, f"ckpt_path={path}", *extra, f"hydra.run.dir={tmp_path}/out")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert not sentinel.exists()
    (line,) = proc.stderr.strip().splitlines()
    assert f"{node}._target_=torch.hub.load" in line, line
    assert not (tmp_path / "run" / "eval").exists()


def test_a_vq_prior_refuses_a_crafted_vqvae_ckpt(run_cli, tmp_path):
    path, sentinel = crafted(tmp_path, "model.generator")
    proc = run_cli("genlab-train", "debug=tiny", "logger=csv", "metrics=none", "model=vq_prior",
                   f"model.vqvae_ckpt={path}", f"hydra.run.dir={tmp_path}/prior")  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert not sentinel.exists()
    assert "model.vqvae_ckpt" in proc.stderr and "torch.hub.load" in proc.stderr


def test_every_target_the_shipped_configs_name_is_in_the_table():
    named = set()
    for yaml in (REPO / "conf").rglob("*.yaml"):
        named |= set(re.findall(r"_target_: *([\w.]+)", yaml.read_text()))
    # only the model, data and metrics nodes are built from a saved config
    built = {t for t in named if t.startswith("genlab.") or t.startswith("torch.optim")}
    built -= {t for t in built if ".callbacks." in t and "sample_metrics" not in t}
    built -= {t for t in built if t.startswith("genlab.loggers.")}
    assert built <= set(TARGETS), sorted(built - set(TARGETS))


def test_the_table_names_importable_classes():
    import importlib

    for home in set(TARGETS.values()):
        module, name = home.rsplit(".", 1)
        assert isinstance(getattr(importlib.import_module(module), name), type), home


def test_a_genlab_checkpoint_loads_without_trust(tmp_path):
    cfg, model = load_model(str(FIXTURE))
    assert type(model).__name__ == "GAN" and cfg.data._target_ == "genlab.data.ImageDataModule"


class Payload:
    """Pickles as a call that writes ``sentinel``: what a crafted weights file would hold."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return Path.write_text, (self.sentinel, "ran")


def test_inception_weights_with_pickled_code_are_refused_unopened(tmp_path):
    from genlab.metrics import MetricsUnavailable
    from genlab.metrics.inception import build_inception

    path, sentinel = tmp_path / "weights.pth", tmp_path / "pwned"
    torch.save({"fc.weight": Payload(sentinel)}, path)
    # torch-fidelity itself would load this with weights_only=False and write the sentinel
    with pytest.raises(MetricsUnavailable, match=r"metrics\.inception_weights: .* pickled code"):
        build_inception(path)
    assert not sentinel.exists()


def test_a_torchscript_clip_other_than_openais_is_not_opened(tmp_path):
    from genlab.metrics import MetricsUnavailable
    from genlab.metrics.cmmd import read_state

    path = tmp_path / "ViT-L-14-336px.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(MetricsUnavailable, match="TorchScript archive, which can run code"):
        read_state(path)


def test_a_prepared_array_with_pickled_objects_is_refused(tmp_path):
    import numpy as np

    from genlab.data.prepared import PreparedImages

    path = tmp_path / "train_images.npy"
    np.save(path, np.array([Payload(tmp_path / "pwned")], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        PreparedImages(path, torch.zeros(1)).images  # noqa: B018
    assert not (tmp_path / "pwned").exists()
