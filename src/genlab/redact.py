"""Credentials out of what genlab logs: config values under secret-looking keys, env secrets.

What leaves the machine with a run (the W&B config, CSV/TensorBoard hparams, checkpoints, the
command line W&B records) passes through ``redact`` first; ``.hydra/`` stays the user's own.
"""

import os
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "<redacted>"
# A key (any depth, case-insensitive) or an environment variable name that holds a credential.
# storage_options (data=streaming, genlab-prepare format=litdata) is hidden whole: object-store
# keys, session tokens and the endpoint travel in it.
SECRET_NAME = re.compile(r"key|token|secret|password|api|credential|storage_options", re.IGNORECASE)
# Keys that match SECRET_NAME but name no credential: digests genlab itself derives.
HARMLESS = frozenset({"cache_key", "protocol_key", "reference_key"})
# Shorter environment values ("1", "true") would redact ordinary config values by accident.
MIN_SECRET_LENGTH = 6


def env_secrets(environ: Mapping[str, str] | None = None) -> set[str]:
    """Values of environment variables named like credentials (WANDB_API_KEY, HF_TOKEN, ...)."""
    environ = os.environ if environ is None else environ
    return {v for k, v in environ.items() if SECRET_NAME.search(k) and len(v) >= MIN_SECRET_LENGTH}


def secret_key(key: Any) -> bool:
    """True for a key that names a credential: ``api_key``, ``hubToken``, not ``cache_key``."""
    return isinstance(key, str) and key not in HARMLESS and bool(SECRET_NAME.search(key))


def scrub(text: str, secrets: set[str]) -> str:
    """``text`` with every environment secret inside it replaced."""
    for s in secrets:
        text = text.replace(s, REDACTED)
    return text


def redact(node: Any, secrets: set[str] | None = None) -> Any:
    """A copy of a config (plain dicts and lists) with credentials replaced by ``<redacted>``.

    A value under a secret-looking key is replaced whole (a subtree too) unless it is None or a
    bool, which carry no secret (``use_api: false``); any string holding an environment secret
    has it replaced. Keys of a flat config (``"service.api_key"``) are matched part by part.
    """
    secrets = env_secrets() if secrets is None else secrets
    if isinstance(node, Mapping):
        out = {}
        for k, v in node.items():
            parts = k.split(".") if isinstance(k, str) else [k]
            hidden = any(secret_key(p) for p in parts) and not isinstance(v, (bool, type(None)))
            out[k] = REDACTED if hidden else redact(v, secrets)
        return out
    if isinstance(node, (list, tuple)):
        return type(node)(redact(v, secrets) for v in node)
    if isinstance(node, str):
        return scrub(node, secrets)
    return node


def redact_argv(argv: list[str], secrets: set[str] | None = None) -> list[str]:
    """Command-line overrides with secrets hidden: ``+a.api_key=x`` -> ``+a.api_key=<redacted>``."""
    secrets = env_secrets() if secrets is None else secrets
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and any(secret_key(p) for p in key.lstrip("+~").split(".")):
            arg = f"{key}={REDACTED}"
        out.append(scrub(arg, secrets))
    return out
