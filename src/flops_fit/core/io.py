"""Atomic file writes: the one place that knows how to replace a file without ever leaving half of it.

A temporary file with a unique name is written beside the target (so it is on the same filesystem, with
the usual umask permissions), flushed and fsynced, moved over the target with :func:`os.replace`, and the
directory entry is fsynced (best effort). A crash or ``kill -9`` at any moment leaves the old file or the
new one, never a mix; a failed write leaves no temporary file behind.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename durable (best effort: not every platform can fsync a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_replace(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` with the path of a fresh temporary file beside ``path`` (for writers that want a
    path, such as a tokenizer's ``save``), fsync it, then move it over ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:
            # errors of write/fsync do not say which file (e.g. "No space left on device"): name it
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    fsync_dir(path.parent)
    return path


def remove_temporaries(path: str | os.PathLike[str]) -> None:
    """Delete the temporaries that writers killed mid-write (by :func:`atomic_replace`) left beside
    ``path``. Only for a file with a single writer, called when no write of it is in progress."""
    path = Path(path)
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        leftover.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(fh)`` on a binary temporary file beside ``path``, then move it over ``path`` atomically."""

    def to_file(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            write(fh)

    return atomic_replace(path, to_file)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_json(path: str | os.PathLike[str], data: Any, *, allow_nan: bool = True) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically (serialised before the file is touched)."""
    return atomic_write_text(path, json.dumps(data, indent=2, allow_nan=allow_nan) + "\n")
