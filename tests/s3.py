"""A real S3-compatible server on 127.0.0.1 for the streaming tests: moto's standalone server
(``moto_server`` from ``moto[server]``), started in a subprocess and stopped afterwards.

By hand (the README's recipe)::

    moto_server -H 127.0.0.1 -p 5555 &
    python -c "import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:5555',
        aws_access_key_id='test', aws_secret_access_key='test',
        region_name='us-east-1').create_bucket(Bucket='genlab')"
"""

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BUCKET = "genlab"
# moto accepts any credentials; these only have to be present (boto3 refuses to sign without)
ACCESS_KEY, SECRET_KEY, REGION = "testing-access-key", "testing-secret-key", "us-east-1"


@dataclass(frozen=True)
class S3Server:
    """A running server: its endpoint, the bucket made for the tests, and the client options."""

    endpoint: str
    bucket: str

    @property
    def storage_options(self) -> dict[str, str]:
        """What ``data.storage_options`` (and genlab-prepare's ``storage_options``) take."""
        return {
            "endpoint_url": self.endpoint,
            "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET_KEY,
            "region_name": REGION,
        }

    def overrides(self, prefix: str) -> list[str]:
        """The same options as Hydra command-line overrides under ``prefix`` (adding the keys)."""
        return [f"+{prefix}.{k}={v}" for k, v in self.storage_options.items()]

    def client(self):
        import boto3

        return boto3.client("s3", **self.storage_options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    """Poll ``url`` until the server answers; fail with its output if it exits or never does."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited ({proc.returncode}): {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer at {url} within {timeout} s")


def start(bucket: str = BUCKET) -> tuple[subprocess.Popen, S3Server]:
    """Start moto's server on a free 127.0.0.1 port and create ``bucket`` in it."""
    port = free_port()
    moto = Path(sys.executable).parent / "moto_server"
    cmd = [str(moto)] if moto.exists() else [sys.executable, "-m", "moto.server"]
    proc = subprocess.Popen(
        [*cmd, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = S3Server(f"http://127.0.0.1:{port}", bucket)
    try:
        wait_until_up(f"{server.endpoint}/moto-api/", proc)
        server.client().create_bucket(Bucket=bucket)
    except BaseException:
        stop(proc)
        raise
    return proc, server


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    """One loopback S3 server (and bucket) for a test module; stopped after its last test."""
    proc, server = start()
    try:
        yield server
    finally:
        stop(proc)
