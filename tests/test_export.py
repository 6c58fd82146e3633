"""genlab-export writes a Hub model folder; genlab.load, genlab-sample and genlab-eval open it
(and a Hub id from an offline cache) and sample exactly what the checkpoint samples."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import genlab
from genlab.checkpoints import load_model
from genlab.errors import GenlabError
from genlab.exporting import push, write_export
from genlab.sampling import set_truncation
from tests.conftest import TINY, ok, train_checkpoint

SG2 = ["data=synthetic", "data.image_size=16", "model.generator.latent_dim=16",
       "model.generator.w_dim=16", "model.generator.channel_base=512",
       "model.generator.channel_max=16"]  # fmt: skip
MODELS = {
    "dcgan_ema": ["model=gan", "model.ema_decay=0.9"],
    "stylegan2": ["model=stylegan2", *SG2],
    "vae": ["model=vae"],
    "vqvae": ["model=vqvae", "data=synthetic", "data.image_size=16"],
    "vqgan": [
        "model=vqgan",
        "data=synthetic",
        "data.image_size=16",
        "model.discriminator.layers=2",
    ],
}


def hub_cache(folder: Path, cache: Path, repo: str) -> None:
    """huggingface_hub's cache layout holding ``folder`` as ``repo``'s main revision."""
    commit = "0" * 40
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hub cache under tmp_path, read offline (as HF_HUB_OFFLINE=1 sets)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_a_vq_prior_exports_with_its_vqvae(tmp_path, offline_hub):
    vq = ["data=synthetic", "data.image_size=16", "metrics=none"]
    vqvae = train_checkpoint(tmp_path, "vqvae", "model=vqvae", *vq)
    ckpt = train_checkpoint(tmp_path, "prior", "model=vq_prior", f"model.vqvae_ckpt={vqvae}", *vq)
    out = write_export(str(ckpt), tmp_path / "export")
    expected = samples(load_model(str(ckpt))[1])
    vqvae.unlink()  # the folder carries the VQ-VAE (out/vqvae): it opens without the original
    assert sorted(p.name for p in (out / "vqvae").iterdir()) == ["config.yaml", "model.safetensors"]
    exported = genlab.load(str(out))
    assert torch.equal(samples(exported), expected)
    hub_cache(out, offline_hub, "lab/prior")
    assert torch.equal(samples(genlab.load("hf://lab/prior")), expected)
    x = torch.rand(2, *expected.shape[1:]) * 2 - 1
    assert torch.equal(exported.reconstruct(x), exported.vqvae.reconstruct(x))


def samples(model, truncation: float = 1.0) -> torch.Tensor:
    if truncation != 1:
        set_truncation(model, truncation)
    torch.manual_seed(0)
    with torch.no_grad():
        return model.sample(4)


@pytest.mark.parametrize("name", MODELS)
def test_an_export_samples_what_its_checkpoint_samples(tmp_path, offline_hub, name):
    ckpt = train_checkpoint(tmp_path, name, "metrics=none", *MODELS[name])
    out = write_export(str(ckpt), tmp_path / "export")
    psi = 0.7 if name == "stylegan2" else 1.0  # StyleGAN2 with truncation
    expected = samples(load_model(str(ckpt))[1], psi)
    assert torch.equal(samples(genlab.load(str(out)), psi), expected)
    hub_cache(out, offline_hub, f"lab/{name}")
    assert torch.equal(samples(genlab.load(f"hf://lab/{name}"), psi), expected)
    state = load_file(str(out / "model.safetensors"))
    assert not any(k.startswith("discriminator.") for k in state)  # only what samples
    if name == "dcgan_ema":  # the EMA generator samples; the raw one stays behind
        assert any(k.startswith("generator_ema.") for k in state)
        assert not any(k.startswith("generator.") for k in state)
    if name in ("vae", "vqvae"):
        x = torch.rand(2, *expected.shape[1:]) * 2 - 1
        model, exported = load_model(str(ckpt))[1], genlab.load(str(out))
        assert torch.equal(exported.reconstruct(x), model.reconstruct(x))


def test_a_hub_id_loads_from_the_offline_cache(tmp_path, offline_hub, no_network):
    ckpt = train_checkpoint(tmp_path, "vae", "metrics=none", "model=vae")
    hub_cache(write_export(str(ckpt), tmp_path / "export"), offline_hub, "lab/tiny-vae")
    expected = samples(load_model(str(ckpt))[1])
    assert torch.equal(samples(genlab.load("hf://lab/tiny-vae")), expected)
    assert torch.equal(samples(genlab.load("hf://lab/tiny-vae@main")), expected)
    with pytest.raises(GenlabError, match=r"^ckpt_path=hf://lab/other: not in the Hub cache"):
        genlab.load("hf://lab/other")
    with pytest.raises(GenlabError, match=r"^ckpt_path=hf://lab: not a Hub id"):
        genlab.load("hf://lab")


def test_push_uploads_with_credentials_and_says_how_without(tmp_path, monkeypatch, caplog):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, *a, **k: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder",
                        lambda self, **kw: calls.append(kw))  # fmt: skip
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_secret")
    assert push(tmp_path, "lab/tiny") and calls == [
        {"repo_id": "lab/tiny", "folder_path": str(tmp_path)}
    ]
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with caplog.at_level(logging.INFO, logger="genlab"):
        assert not push(tmp_path, "lab/tiny")
    assert f"hf upload lab/tiny {tmp_path} . --repo-type model" in caplog.text
    assert len(calls) == 1


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.mark.slow
def test_export_through_the_cli_with_card_and_bad_input(run_cli, tmp_path):
    from huggingface_hub import ModelCard

    from tests.test_sweeps import wandb_records

    run = tmp_path / "run"
    ok(run_cli("genlab-train", *TINY, "model=vae", f"hydra.run.dir={run}"))
    ckpt = run / "checkpoints" / "last.ckpt"
    ok(run_cli("genlab-eval", f"ckpt_path={ckpt}", "metrics=none", "nll_k=2"))
    (scored,) = run.glob("eval/*/metrics.json")
    out = tmp_path / "export"
    ok(run_cli("genlab-export", f"ckpt_path={ckpt}", f"out={out}", "push_to=lab/tiny-vae",
               "logger=wandb", f"hydra.run.dir={tmp_path}/log"))  # fmt: skip
    # the folder, also as a W&B model artifact of an offline run (job_type export)
    records = wandb_records(tmp_path / "log")
    (artifact,) = (r["artifact"] for r in records if r["type"] == "artifact")
    assert artifact["type"] == "model" and artifact["name"] == "export"
    files = sorted(c["path"] for c in artifact["manifest"]["contents"])
    assert files == ["README.md", "config.yaml", "model.safetensors", "samples.png"]
    assert next(r["run"] for r in records if r["type"] == "run")["job_type"] == "export"
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "config.yaml", "model.safetensors", "samples.png"
    ]  # fmt: skip
    card = ModelCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == "genlab" and meta["datasets"] == ["mnist5k"]
    numbers = json.loads(scored.read_text())["metrics"]
    assert meta["metrics"] == sorted(numbers)
    for key, value in numbers.items():
        assert f"| {key} | {value:.6g} |" in card.text
    assert "genlab-train debug=tiny logger=csv metrics=none model=vae" in card.text
    assert "genlab-eval ckpt_path=hf://lab/tiny-vae metrics=none nll_k=2" in card.text
    assert 'genlab.load("hf://lab/tiny-vae")' in card.text and "unconditional." in card.text
    # the folder samples through genlab-sample exactly as the export drew samples.png
    ok(run_cli("genlab-sample", f"ckpt_path={out}", "num_samples=64", "reconstructions=false",
               f"hydra.run.dir={tmp_path}/s"))  # fmt: skip
    assert np.array_equal(png(tmp_path / "s" / "samples.png"), png(out / "samples.png"))
    # genlab-eval of the folder writes into it and scores what the checkpoint scored
    ok(run_cli("genlab-eval", f"ckpt_path={out}", "metrics=none", "nll_k=2"))
    (again,) = out.glob("eval/*/metrics.json")
    assert json.loads(again.read_text())["metrics"] == numbers
    # bad input: one line naming the key, exit 2, the export untouched
    before = (out / "model.safetensors").read_bytes()
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    for args, key in [
        ([f"ckpt_path={ckpt}", f"out={out}"], "out="),
        ([f"ckpt_path={foreign}", f"out={tmp_path}/x"], "ckpt_path="),
        ([f"ckpt_path={ckpt}", f"out={tmp_path}/y", "push_to=lab"], "push_to=lab"),
    ]:
        proc = run_cli("genlab-export", *args)
        assert proc.returncode == 2, proc.stderr[-2000:]
        (line,) = proc.stderr.strip().splitlines()
        assert key in line, line
    assert (out / "model.safetensors").read_bytes() == before
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    proc = run_cli("genlab-sample", "ckpt_path=hf://lab")
    assert proc.returncode == 2 and "not a Hub id" in proc.stderr
