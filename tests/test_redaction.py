"""No secrets in logs: credential-like config values and environment secrets are redacted
before any logger (W&B, CSV, TensorBoard) or checkpoint sees them; checkpoints holding
pickled code are refused."""

import pytest
import torch

from genlab.checkpoints import load_model, read_checkpoint
from genlab.errors import GenlabError
from genlab.redact import REDACTED, env_secrets, redact, redact_argv
from tests.conftest import BIN, TINY, cli_env, load_ckpt, ok, train_checkpoint
from tests.test_sweeps import wandb_records

ENV = {"MY_TOKEN": "tok-zzz-999", "HOME": "/h", "SHORT_KEY": "1", "WANDB_API_KEY": "wb-secret-42"}


def test_secret_keys_at_any_depth_and_any_case_are_redacted():
    cfg = {
        "model": {"lr": 2e-4, "api_key": "abc123", "hub": {"hubToken": "xyz", "n": 3}},
        "PASSWORD": 12345,
        "service": {"client_secret": {"a": "b"}, "use_api": False, "api_url": None},
        "metrics": {"cache_key": "d41d8c", "num_samples": 64},
        "tags": ["keep", "tok-zzz-999"],
    }
    out = redact(cfg, env_secrets(ENV))
    assert out == {
        "model": {"lr": 2e-4, "api_key": REDACTED, "hub": {"hubToken": REDACTED, "n": 3}},
        "PASSWORD": REDACTED,
        # a whole subtree goes; a bool or null holds no secret and stays
        "service": {"client_secret": REDACTED, "use_api": False, "api_url": None},
        # a digest genlab derives (HARMLESS) and ordinary keys stay
        "metrics": {"cache_key": "d41d8c", "num_samples": 64},
        "tags": ["keep", REDACTED],  # an environment secret under any key
    }
    assert cfg["model"]["api_key"] == "abc123"  # a copy: the run's own config is untouched


def test_environment_secrets_are_values_of_credential_like_variables():
    # HOME is no credential; SHORT_KEY's "1" is too short to match values safely
    assert env_secrets(ENV) == {"tok-zzz-999", "wb-secret-42"}
    out = redact({"url": "https://x.org/?t=wb-secret-42", "path": "/h/data"}, env_secrets(ENV))
    assert out == {"url": f"https://x.org/?t={REDACTED}", "path": "/h/data"}


def test_flat_keys_and_command_lines_are_redacted_part_by_part():
    flat = {"service.api_key": "abc123", "model.optimizer_g.lr": 1e-3, "keyboard": True}
    assert redact(flat, set()) == {
        "service.api_key": REDACTED, "model.optimizer_g.lr": 1e-3, "keyboard": True,
    }  # fmt: skip
    argv = ["debug=tiny", "+service.api_key=abc123", "data.root=/x/tok-zzz-999"]
    assert redact_argv(argv, {"tok-zzz-999"}) == [
        "debug=tiny", f"+service.api_key={REDACTED}", f"data.root=/x/{REDACTED}",
    ]  # fmt: skip


def _files_holding(root, secrets: list[bytes]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and ".hydra" not in path.relative_to(root).parts:
            data = path.read_bytes()
            hits += [f"{path.relative_to(root)}: {s!r}" for s in secrets if s in data]
    return hits


@pytest.mark.slow
def test_cli_run_leaves_no_secret_in_any_log_or_checkpoint(tmp_path):
    """W&B offline + CSV + TensorBoard in one run; only .hydra/ (the user's own) keeps them.

    On the code before genlab.redact, the same run left both strings in csv/ and tensorboard/
    hparams.yaml, both checkpoints, the W&B run file and W&B's debug.log.
    """
    import subprocess

    run = tmp_path / "run"
    env = {**cli_env(tmp_path), "MY_TOKEN": "tok-zzz-999"}
    proc = subprocess.run(
        [str(BIN / "genlab-train"), *TINY, "logger=[csv,wandb,tensorboard]",
         "+service.api_key=abc123", "+service.endpoint=${oc.env:MY_TOKEN}",
         "trainer.max_epochs=1", f"hydra.run.dir={run}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    ok(proc)
    for d in ("csv", "tensorboard", "wandb", "checkpoints"):
        assert list((run / d).rglob("*")), d  # each logger wrote something
    assert _files_holding(run, [b"abc123", b"tok-zzz-999"]) == []
    assert "abc123" in (run / ".hydra" / "config.yaml").read_text()
    # the keys did reach the loggers, redacted
    config = {}
    for r in wandb_records(run):
        if r["type"] == "config":
            config.update(r["config"]["update"])
    assert config["service.api_key"] == REDACTED and config["service.endpoint"] == REDACTED
    assert config["model.optimizer_g.lr"] == 0.0002  # the rest as it was
    saved = load_ckpt(run / "checkpoints" / "last.ckpt")["genlab_config"]
    assert saved["service"] == {"api_key": REDACTED, "endpoint": REDACTED}
    assert f"api_key: {REDACTED}" in (run / "csv" / "hparams.yaml").read_text()


class Payload:
    """Anything unpickling this would construct: code a checkpoint must not run."""


def test_checkpoint_with_pickled_code_is_refused_in_one_line(tmp_path):
    ckpt = load_ckpt(train_checkpoint(tmp_path, "good"))  # genlab's own: weights only
    ckpt["extra"] = Payload()
    bad = tmp_path / "bad.ckpt"
    torch.save(ckpt, bad)
    # what genlab-train (build) and genlab-eval / genlab-sample (load_model) read it with
    for read in (read_checkpoint, load_model):
        with pytest.raises(GenlabError) as e:
            read(str(bad))
        message = str(e.value)
        assert "\n" not in message
        assert f"ckpt_path={bad}: holds pickled code (tests.test_redaction.Payload)" in message
        assert "weights_only=True" in message
    assert read_checkpoint(str(bad.with_name("good.ckpt")))["genlab_config"]  # the same, clean
