"""Every override the README and the config comments name can be set as written (no ``++``)."""

import re
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from tests.conftest import REPO, compose_train

GROUPS = "data|model|trainer|metrics|logger|callbacks|speed|paths"
# group.key=value in prose or commands: a space, backtick, quote or parenthesis before it
OVERRIDE = re.compile(rf"(?:^|[\s`'(\"])((?:{GROUPS})\.[A-Za-z0-9_.]+)=([^\s`'),;\"]*)")
# the README's examples of bad input and placeholders, not keys to set
NOT_KEYS = {"model.nosuch", "model.KEY"}
# keys that only exist under another option of a group
CONTEXT = {
    "model.likelihood": "model=vae",
    "model.prior": "model=vae",
    "model.nll_k": "model=vae",
    "model.free_bits": "model=ladder_vae",
    "model.layer_warmup_steps": "model=ladder_vae",
    "data.root": "data=folder",
    "data.path": "data=prepared",
    "data.image_column": "data=hf",
    "data.label_column": "data=hf",
    "data.split": "data=hf",  # data.split_seed composes with it too
    "data.storage_options": "data=streaming",
    "data.cache_dir": "data=streaming",
    "data.max_cache_size": "data=streaming",
    "model.vqvae_ckpt": "model=vq_prior",
    "callbacks.disentanglement": "callbacks=[default,disentanglement]",
    "model.lpips_weights": "model=vqgan",
    "model.perceptual_weight": "model=vqgan",
    "model.generator.base_channels": "model=biggan",
    "model.discriminator.base_channels": "model=biggan",
    "model.generator.width": "model=r3gan",
    "model.discriminator.width": "model=r3gan",
}


def mentioned(*paths: Path) -> list[tuple[str, str]]:
    """(key, value) of every ``group.key=value`` in the files."""
    found = set()
    for path in paths:
        for key, value in OVERRIDE.findall(path.read_text()):
            if key not in NOT_KEYS and value not in ("", "..."):
                found.add((key.rstrip("."), value.rstrip(".")))  # a sentence's full stop
    return sorted(found)


DOCS = [REPO / "README.md", *sorted((REPO / "conf").rglob("*.yaml"))]


def test_the_docs_name_keys():
    keys = {k for k, _ in mentioned(*DOCS)}
    assert {"data.binarize", "trainer.num_nodes", "model.grad_clip"} <= keys


def _composes(overrides: list[str], tmp_path: Path) -> str | None:
    """None when the overrides compose; else the error's first line."""
    try:
        compose_train(overrides, tmp_path)
    except ConfigCompositionException as e:
        cause = e.__cause__ or e
        return f"{type(cause).__name__}: {str(cause).splitlines()[0]}"
    return None


@pytest.mark.parametrize(("key", "value"), mentioned(*DOCS), ids=lambda x: str(x))
def test_every_documented_key_is_settable_as_written(key, value, tmp_path):
    context = [c for k, c in CONTEXT.items() if key.startswith(k)]
    error = _composes([*context, f"{key}={value}"], tmp_path)
    if error and key.startswith("model.") and not context:
        error = _composes(["model=vae", f"{key}={value}"], tmp_path) and error  # a VAE key
    assert error is None, f"{key}={value}: {error}"
