"""genlab-export: a trained model as a folder in the Hugging Face Hub's model layout.

The folder holds ``model.safetensors`` (what the model samples with: no optimiser, no pickle),
``config.yaml`` (the run config, redacted as every logged copy is), ``samples.png`` and
``README.md``, a model card whose metadata the Hub reads. ``genlab-sample``, ``genlab-eval`` and
``genlab.load`` open the folder, or the Hub id it was pushed to.
"""

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from genlab.callbacks.images import grid_uint8, save_png
from genlab.checkpoints import (
    EXPORT_CONFIG,
    EXPORT_WEIGHTS,
    VQVAE_FOLDER,
    exported_state,
    load_model,
    local_checkpoint,
    read_checkpoint,
)
from genlab.config import check_export, instantiate
from genlab.errors import GenlabError
from genlab.redact import redact, redact_argv

log = logging.getLogger("genlab")

SAMPLES = "samples.png"
CARD = "README.md"
GRID = 64  # images in samples.png (seed 0)
# the paper each sampling network follows, by the class the config names
PAPERS = {
    "MLPGenerator": "GAN (Goodfellow et al. 2014), MLP networks",
    "DCGANGenerator": "DCGAN (Radford et al. 2016)",
    "ResNetGenerator": "SNGAN (Miyato et al. 2018), ResNet networks",
    "BigGANGenerator": "BigGAN (Brock et al. 2019)",
    "StyleGAN2Generator": "StyleGAN2 (Karras et al. 2020)",
    "R3GANGenerator": "R3GAN (Huang et al. 2024)",
    "ConvEncoder": "VAE (Kingma & Welling 2014)",
    "HierarchicalEncoder": "two-stochastic-layer VAE (Burda et al. 2016)",
    "VQVAE": "VQ-VAE (van den Oord et al. 2017)",
    "VQGAN": "VQGAN (Esser et al. 2021)",
    "VQPrior": "VQ-VAE with a PixelCNN prior (van den Oord et al. 2017)",
}


def model_family(config: dict) -> tuple[str, str]:
    """(paper, kind) of a saved run config: kind is gan, vae or vq."""
    model = config["model"]
    name = model["_target_"].rsplit(".", 1)[-1]
    if name in ("VQVAE", "VQGAN", "VQPrior"):
        return PAPERS[name], "vq"
    net = (model.get("generator") or model.get("encoder") or {}).get("_target_", "")
    paper = PAPERS.get(net.rsplit(".", 1)[-1], net or name)
    return paper, "gan" if name == "GAN" else "vae"


def numbers_of(ckpt: Path) -> tuple[dict | None, Path | None, Path]:
    """(metrics.json, its folder, the training run) of a checkpoint.

    A post-hoc EMA profile (``posthoc_ema.ckpt``) has its numbers beside it and names the run's
    checkpoint it came from; a run's checkpoint has the newest ``RUN/eval/*/metrics.json``.
    """
    beside = ckpt.parent / "metrics.json"
    if beside.is_file():
        metrics = json.loads(beside.read_text())
        return metrics, ckpt.parent, Path(metrics.get("checkpoint", ckpt)).parent.parent
    run = ckpt.parent.parent
    found = sorted(run.glob("eval/*/metrics.json"))
    if not found:
        return None, None, run
    return json.loads(found[-1].read_text()), found[-1].parent, run


def command_of(folder: Path | None, tool: str, where: str | None) -> str | None:
    """The command line Hydra recorded in ``folder/.hydra/overrides.yaml``, redacted, with the
    checkpoint it read named as a reader finds it (``where``; None keeps it)."""
    if folder is None or not (folder / ".hydra" / "overrides.yaml").is_file():
        return None
    overrides = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text()) or []
    overrides = [
        f"ckpt_path={where}" if where and o.startswith("ckpt_path=") else o
        for o in redact_argv(list(overrides))
        if not o.startswith("hydra.run.dir=")
    ]
    return " ".join([tool, *overrides])


def card(
    config: dict,
    classes: int,
    metrics: dict | None,
    commands: tuple[str | None, str | None],
    where: str,
) -> str:
    """The model card: Hub metadata (library, tags, datasets, metrics), then what a reader needs
    to trust and reproduce the numbers. ``where`` is how a reader names the model (its Hub id)."""
    paper, kind = model_family(config)
    data = config.get("data") or {}
    dataset = str(data.get("source") or data.get("name") or "unknown")
    scores = (metrics or {}).get("metrics") or {}
    meta = {
        "library_name": "genlab",
        "tags": ["genlab", kind, "image-generation", "pytorch-lightning"],
        "datasets": [dataset],
    }
    if not classes:
        meta["pipeline_tag"] = "unconditional-image-generation"
    if scores:
        meta["metrics"] = sorted(scores)
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", ""]
    lines += [f"# {paper} on {dataset}", ""]
    lines += [
        f"A genlab {kind.upper()} ({config['model']['_target_']}) trained on `{dataset}` at "
        f"{data.get('image_size')} px, {data.get('channels')} channel(s), "
        + (f"conditional on {classes} classes." if classes else "unconditional."),
        "",
        f"![samples]({SAMPLES})",
        "",
        "## Use",
        "",
        "```python",
        "import genlab",
        "",
        f'model = genlab.load("{where}")',
        "images = model.sample(16)  # (16, C, H, W) in [-1, 1]",
        "```",
        "",
        f"`genlab-sample ckpt_path={where}` writes grids; `genlab-eval ckpt_path={where}` scores.",
        "",
        "## Evaluation",
        "",
    ]
    posthoc = (metrics or {}).get("posthoc_ema") or {}
    sigma = posthoc.get("best_sigma_rel", posthoc.get("sigma_rel"))
    if sigma is not None:
        lines += [f"The weights are the post-hoc EMA profile sigma_rel={sigma} (Karras et al. "
                  "2024), rebuilt from the run's snapshots.", ""]  # fmt: skip
    if scores:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |"
                  for k, v in sorted(scores.items())]  # fmt: skip
        protocol = (metrics or {}).get("protocol") or {}
        lines += ["", "Protocol (metrics.json):", "", "| key | value |", "|---|---|"]
        lines += [f"| {k} | {json.dumps(v)} |" for k, v in sorted(protocol.items())]
    else:
        lines += ["Not evaluated yet: run `genlab-eval ckpt_path=...` and export again."]
    lines += ["", "## Reproduce", ""]
    for what, cmd in zip(("training", "evaluation"), commands, strict=True):
        lines += [f"The {what}:", "", "```", cmd or "(not recorded)", "```", ""]
    lines += ["`config.yaml` is the run's full resolved config (credentials redacted)."]
    return "\n".join(lines) + "\n"


def write_weights(folder: Path, state: dict, config: dict) -> None:
    """``model.safetensors`` and ``config.yaml`` into ``folder``."""
    from safetensors.torch import save_file

    metadata = {"format": "genlab-export-1", "model": config["model"]["_target_"]}
    save_file(state, str(folder / EXPORT_WEIGHTS), metadata=metadata)
    (folder / EXPORT_CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))


def write_export(
    ckpt_path: str, out: Path, trust: bool = False, push_to: str | None = None
) -> Path:
    """Write the export folder ``out`` (which must not exist or be empty), all or nothing.

    The card names the model by ``hf://push_to`` when given, else by the folder ``out``.
    """
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GenlabError(f"out={out}: exists and is not empty (genlab-export writes a new folder)")
    source = local_checkpoint(ckpt_path)
    if source.is_dir():
        raise GenlabError(f"ckpt_path={ckpt_path}: already an export; copy the folder instead")
    run_cfg, model = load_model(ckpt_path, trust=trust)
    config = redact(OmegaConf.to_container(run_cfg, resolve=True))
    inner = None  # a VQ prior carries its VQ-VAE: (its config, its state)
    if hasattr(model, "vqvae"):
        saved = read_checkpoint(config["model"]["vqvae_ckpt"], "model.vqvae_ckpt")
        inner = redact(saved["genlab_config"]), exported_state(model.vqvae)
        config["model"]["vqvae_ckpt"] = VQVAE_FOLDER
    metrics, eval_dir, run = numbers_of(source.expanduser().resolve())
    torch.manual_seed(0)
    with torch.no_grad():
        images = model.sample(GRID)
    state = exported_state(model)  # after sampling: an EMA generator's standing statistics
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_weights(tmp, state, config)
        if inner is not None:
            (tmp / VQVAE_FOLDER).mkdir()
            write_weights(tmp / VQVAE_FOLDER, inner[1], inner[0])
        save_png(grid_uint8(images), tmp / SAMPLES)
        where = f"hf://{push_to}" if push_to else str(out)
        posthoc = (metrics or {}).get("posthoc_ema")  # scored from the run's snapshots
        # training's own ckpt_path (a resume) stays as it ran; the eval's reads this model
        commands = (
            command_of(run, "genlab-train", None),
            command_of(eval_dir, "genlab-eval", None if posthoc else where),
        )
        text = card(config, model.num_classes, metrics, commands, where)
        (tmp / CARD).write_text(text)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(f"wrote {out}: {len(state)} tensors, {CARD}, {SAMPLES}, {EXPORT_CONFIG}")
    return out


def push(out: Path, repo: str) -> bool:
    """Upload ``out`` to the Hub repo ``repo`` when credentials exist; else say how, later."""
    later = f"hf upload {repo} {out} . --repo-type model"
    try:
        from huggingface_hub import HfApi, get_token
    except ImportError:
        log.info(f"push_to={repo}: huggingface_hub is not installed; upload later with: {later}")
        return False
    if os.environ.get("HF_HUB_OFFLINE") == "1" or get_token() is None:
        log.info(f"push_to={repo}: no Hub credentials or offline; upload later with: {later}")
        return False
    api = HfApi()
    api.create_repo(repo, exist_ok=True)
    api.upload_folder(repo_id=repo, folder_path=str(out))
    log.info(f"pushed {out} to https://huggingface.co/{repo}")
    return True


def export(cfg: DictConfig) -> dict[str, Any]:
    """Write ``cfg.out`` from ``cfg.ckpt_path``; push it when ``cfg.push_to`` is set."""
    check_export(cfg)
    out = Path(cfg.out).expanduser()
    write_export(cfg.ckpt_path, out, trust=cfg.trust_checkpoint, push_to=cfg.get("push_to"))
    pushed = push(out, cfg.push_to) if cfg.get("push_to") else False
    artifact = log_export(cfg, out) if (cfg.get("logger") or {}).get("wandb") else None
    return {"out": str(out), "pushed": pushed, "artifact": artifact}


def log_export(cfg: DictConfig, out: Path) -> str:
    """A W&B run (job_type export, in the training run's group) holding the folder as a model
    artifact; offline without credentials, to sync later."""
    import wandb

    from genlab.loggers import evaluated_run, log_folder_artifact
    from genlab.training import prepare_wandb

    config = yaml.safe_load((out / EXPORT_CONFIG).read_text())
    with open_dict(cfg):
        trained = evaluated_run(cfg, config)  # joins the training run's W&B group
        prepare_wandb(cfg)
    logger = instantiate(cfg.logger.wandb)
    try:
        metadata = {"checkpoint": str(cfg.ckpt_path), "model": config["model"]["_target_"]}
        metadata.update(trained)
        name = log_folder_artifact(logger.experiment, out, "model", metadata)
    finally:
        wandb.finish()
    log.info(f"logged {out} as the W&B model artifact {name}")
    return name
