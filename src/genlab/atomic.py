"""Writes that never leave half a file (temp file in the same directory, fsync, rename), and
the lock that lets one process of many compute a shared cache entry."""

import errno
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

from genlab.errors import GenlabError

log = logging.getLogger("genlab")

# a full disk, or a full quota (what a cluster's home or scratch usually runs into)
FULL = (errno.ENOSPC, errno.EDQUOT)
# a filesystem without flock: the cache is computed without the lock, as before it had one
NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(f)`` on a temp file beside ``path``, then rename it over ``path``.

    A reader, or a kill at any moment, sees the old file or the new one, never a truncated one;
    the temp file is removed if writing fails. A full disk or quota is a GenlabError naming
    ``path``: the run stops in one line, and the file it would have replaced is still there.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        if full_disk(e) is None:
            raise
        raise cannot_write(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; shared caches and runs must be readable
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if full_disk(e) is None:
            raise
        raise cannot_write(path, e) from None


def full_disk(error: BaseException | None) -> OSError | None:
    """The ENOSPC/EDQUOT OSError in ``error``'s chain, or None.

    torch.save reports its writer's OSError inside a RuntimeError, hence the chain.
    """
    while error is not None:
        if isinstance(error, OSError) and error.errno in FULL:
            return error
        error = error.__cause__ or error.__context__
    return None


def cannot_write(path: Path, error: BaseException) -> GenlabError:
    """The one line for a write that found the disk full: the path, why, and what is left."""
    found = full_disk(error)
    why = os.strerror(found.errno) if found is not None else str(error)
    left = "the previous file is intact" if path.exists() else "nothing was written there"
    return GenlabError(f"{path}: cannot write ({why}); {left}")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_json(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as indented JSON atomically."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True).encode()))


@contextmanager
def computing(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``.lock while this process computes ``path``.

    Sweep jobs share caches (reference features, classifiers): the first to take the lock
    computes and writes the entry, the others wait, then find and read it (look again inside
    the lock). ``flock`` is released by the kernel when its holder dies, so a killed job never
    leaves the others waiting. The holder removes the lock file before it lets go, so none is
    left beside the cache; a waiter that then gets the lock of the removed file sees that the
    path no longer names it and locks afresh (else two could compute at once).
    """
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        try:
            f = open(lock, "a")  # noqa: SIM115 -- held open for the lock's lifetime
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EROFS):
                raise
            yield  # a read-only shared cache: nothing will be written there, nothing to lock
            return
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not waited:
                log.info(f"waiting for {path}: another process is computing it")
                waited = True
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError as e:
            f.close()
            if e.errno not in NO_LOCKS:
                raise
            # Linux maps flock to NFS locks; Lustre without -o flock and some FUSE mounts refuse
            log.warning(f"{lock}: no file locks here ({e.strerror}); jobs may compute it twice")
            lock.unlink(missing_ok=True)
            yield
            return
        try:
            now = os.stat(lock)
        except FileNotFoundError:
            now = None
        held = os.fstat(f.fileno())
        if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            break
        f.close()  # the previous holder removed this one: lock the path's current file
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        f.close()  # releases the lock
