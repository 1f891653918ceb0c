"""Atomic file output: write to a hidden temporary sibling, fsync, then rename into place.

A reader (or a resumed batch run) therefore sees either no file or the complete file, never a
half-written one, even if the process is killed mid-write.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from medseg.errors import ImageWriteError

TMP_PREFIX = ".medseg-tmp-"
#: A temporary of another machine (or of an unknown owner) older than this is stale.
STALE_AFTER_S = 6 * 3600
LOCK_NAME = ".medseg-run.lock"
_HOST = socket.gethostname().replace("-", "_")[:32] or "host"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary name keeps the final suffixes (``.nii.gz``, ``.dcm``) so libraries that infer
    the format from the extension behave the same. On error the temporary file is removed.

    Examples:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> with atomic_path(d / "out.txt") as tmp:
        ...     _ = tmp.write_text("done")
        >>> (d / "out.txt").read_text(), sorted(p.name for p in d.iterdir())
        ('done', ['out.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the owner (host, pid) is in the name: another run only removes it once it is stale
    tmp = path.with_name(f"{TMP_PREFIX}{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}-{path.name}")
    try:
        yield tmp
        if tmp.exists():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _owner_alive(name: str) -> bool | None:
    """Whether the process that named a temporary still runs: ``None`` when it cannot be told
    (another machine, or a name without an owner)."""
    parts = name[len(TMP_PREFIX):].split("-", 2)
    if len(parts) < 3 or parts[0] != _HOST or not parts[1].isdigit():
        return None
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a live process of another user
        return True
    return True


def remove_stale_temporaries(folder: str | Path, *, now: float | None = None) -> int:
    """Delete temporaries left under ``folder`` by a killed process; returns how many.

    A temporary is stale when its owner process (named in it) no longer runs on this machine,
    or, when its owner cannot be checked, when it is older than :data:`STALE_AFTER_S`; a live
    run's temporaries are never touched.
    """
    now = time.time() if now is None else now
    n = 0
    for p in Path(folder).rglob(f"{TMP_PREFIX}*"):
        alive = _owner_alive(p.name)
        with contextlib.suppress(OSError):
            if alive is False or (alive is None and now - p.stat().st_mtime > STALE_AFTER_S):
                p.unlink()
                n += 1
    return n


@contextlib.contextmanager
def exclusive_output(folder: str | Path) -> Iterator[None]:
    """Hold ``folder``'s run lock (``.medseg-run.lock``, an OS file lock released even when
    the process is killed) for the duration; a second run on the same folder is refused.

    Raises:
        ImageWriteError: Another process holds the lock.
    """
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise ImageWriteError(f"{folder} is in use by another medseg run ({owner}); wait "
                                  "for it to finish or write to another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock
