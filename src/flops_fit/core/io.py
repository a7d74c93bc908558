"""Atomic file writes: the one place that knows how to replace a file without ever leaving half of it.

A temporary file with a unique name is written beside the target (so it is on the same filesystem, with
the usual umask permissions), flushed and fsynced, moved over the target with :func:`os.replace`, and the
directory entry is fsynced (best effort). A crash or ``kill -9`` at any moment leaves the old file or the
new one, never a mix; a failed write leaves no temporary file behind, and the temporaries of writers killed
mid-write are removed by the next write of the same file (:func:`remove_temporaries`).

Files of a sweep folder may come from someone else, so the readers here trust no file: :func:`open_regular`
opens only regular files (never a device, a FIFO or, for writing, a symbolic link), and :func:`read_json`
reads a bounded number of bytes and turns deep nesting or a huge integer into a ValueError naming the file.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

#: The most bytes :func:`read_json` reads from one file (a plan of 100,000 experiments is about 60 MB).
MAX_JSON_BYTES = 256 * 2**20
#: The deepest nesting of lists and objects :func:`parse_json` accepts (flops-fit's files nest < 10 deep).
MAX_JSON_DEPTH = 64
#: The most digits of a JSON integer :func:`parse_json` accepts (beyond, it is no float either).
MAX_INT_DIGITS = 300
#: A temporary of a writer that may still be alive is removed once untouched this long (seconds).
STALE_TEMPORARY_S = 24 * 3600


class UnsafeFileError(ValueError):
    """A file of a sweep folder is not a plain file of its own: a symbolic link where flops-fit writes, a
    device or FIFO, a folder, or a file with other hard links."""


class JSONLimitError(ValueError):
    """Valid JSON beyond what flops-fit reads: nested too deep, or an integer of too many digits.
    ``reason`` says which, without the file's name."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _refuse(path: str | os.PathLike[str], what: str) -> UnsafeFileError:
    return UnsafeFileError(
        f"{os.fspath(path)!r} is {what}, not a regular file of its own; flops-fit does not read or write "
        "through it. If the folder came from someone else, delete that entry (`rm` removes a link, not its "
        "target) and run again"
    )


def open_regular(
    path: str | os.PathLike[str],
    flags: int = os.O_RDONLY,
    mode: int = 0o644,
    *,
    write: bool = False,
    opener: Callable[..., int] | None = None,
) -> int:
    """``os.open`` for a regular file only; return its descriptor.

    A device, FIFO or folder is refused (checked with ``fstat`` on the open descriptor, so no race); the
    open does not block on a FIFO. With ``write=True`` a symbolic link is refused as well (``O_NOFOLLOW``),
    and so is a file with other hard links: a write lands in this file and nowhere else. ``opener``: the
    ``os.open`` to call (default ``os.open``).

    Raises:
        UnsafeFileError: (a ValueError) ``path`` is not such a file; the message names it and the fix.
        OSError: the open itself failed (missing, no permission, ...).
    """
    flags |= getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if write:
        flags |= getattr(os, "O_NOFOLLOW", 0)
        if not hasattr(os, "O_NOFOLLOW") and os.path.islink(path):  # pragma: no cover - not POSIX
            raise _refuse(path, "a symbolic link")
    try:
        fd = (opener or os.open)(path, flags, mode)
    except OSError as exc:
        if write and exc.errno == errno.ELOOP and os.path.islink(path):
            raise _refuse(path, "a symbolic link") from None
        if exc.errno == errno.ENXIO:  # a FIFO with no writer, opened for writing
            raise _refuse(path, "a FIFO") from None
        raise
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = "a folder" if stat.S_ISDIR(info.st_mode) else "a device, FIFO or socket"
    elif write and info.st_nlink > 1:
        problem = f"a hard link ({info.st_nlink} names share its content)"
    if problem is not None:
        os.close(fd)
        raise _refuse(path, problem)
    return fd


def check_own_file(path: str | os.PathLike[str]) -> None:
    """If ``path`` exists, it must be what :func:`open_regular` with ``write=True`` would open: a regular
    file, not a symbolic link, with no other hard link (checked without opening it; the open checks again).

    Raises:
        UnsafeFileError: (a ValueError) naming ``path`` and the fix.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise _refuse(path, "a symbolic link")
    if not stat.S_ISREG(info.st_mode):
        raise _refuse(path, "a folder" if stat.S_ISDIR(info.st_mode) else "a device, FIFO or socket")
    if info.st_nlink > 1:
        raise _refuse(path, f"a hard link ({info.st_nlink} names share its content)")


def read_bytes(path: str | os.PathLike[str], limit: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of the regular file ``path`` (:func:`open_regular`), or a ValueError past ``limit`` bytes."""
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise ValueError(
            f"{os.fspath(path)!r} is larger than {limit} bytes, more than any file flops-fit writes; "
            "check that it is the file you meant"
        )
    return data


def _too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and dicts deeper than ``limit`` (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _parse_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        reason = f"holds an integer of {digits} digits (at most {MAX_INT_DIGITS})"
        raise JSONLimitError(reason, reason)
    return int(text)


def parse_json(text: str | bytes, source: str | os.PathLike[str]) -> Any:
    """Parse one JSON document read from ``source`` (named in errors: a file, or ``file:line``).

    Raises:
        ValueError: not JSON; JSONLimitError (a ValueError) when nested deeper than ``MAX_JSON_DEPTH`` or
            with an integer of more than ``MAX_INT_DIGITS`` digits (never a RecursionError, whatever the
            input).
    """
    where = os.fspath(source)
    deep = f"nests lists or objects deeper than {MAX_JSON_DEPTH} levels"
    try:
        value = json.loads(text, parse_int=_parse_int)
    except RecursionError:
        raise JSONLimitError(f"{where} {deep}", deep) from None
    except JSONLimitError as exc:
        raise JSONLimitError(f"{where} {exc.reason}", exc.reason) from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where} is not UTF-8 text ({exc})") from None
    except ValueError as exc:  # json.JSONDecodeError
        raise ValueError(f"{where} is not valid JSON ({exc})") from None
    if isinstance(value, (dict, list)) and _too_deep(value, MAX_JSON_DEPTH):
        raise JSONLimitError(f"{where} {deep}", deep)
    return value


def read_json(path: str | os.PathLike[str], limit: int = MAX_JSON_BYTES) -> Any:
    """The JSON document of the regular file ``path``: at most ``limit`` bytes, UTF-8 (a BOM is allowed).

    Raises:
        ValueError: not a regular file, too large, not JSON, too deep, or a huge integer; names ``path``.
        OSError: the file cannot be opened (FileNotFoundError when missing).
    """
    data = read_bytes(path, limit)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return parse_json(data, path)


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
    path, such as a tokenizer's ``save``), fsync it, then move it over ``path`` atomically. The temporaries
    that earlier writers of ``path`` left when killed are removed first (:func:`remove_temporaries`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_temporaries(path, stale_only=True)
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


def _temporaries(path: Path) -> Iterator[tuple[Path, int, float]]:
    """(path, writer's process id, mtime) of each temporary :func:`atomic_replace` made for ``path``: named
    exactly ``.<name>.<pid>-<8 hex>.tmp`` and a regular file (a link or folder of that name is left alone)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d{{1,10}})-[0-9a-f]{{8}}\.tmp")
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            yield Path(entry.path), int(match.group(1)), info.st_mtime


def _process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (unsure answers say yes)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):  # EPERM: another user's process; or not POSIX
        return True
    return True


def remove_temporaries(path: str | os.PathLike[str], *, stale_only: bool = False) -> None:
    """Delete the temporaries that writers killed mid-write (by :func:`atomic_replace`) left beside ``path``.

    Only files named as :func:`atomic_replace` names them are touched. With ``stale_only`` (before any
    write: other writers may be at work) only those of a process that no longer exists, or untouched for
    ``STALE_TEMPORARY_S``; without, every one (for a file with a single writer, when no write of it is in
    progress, e.g. a checkpoint of a finished run). A temporary that cannot be deleted is left as it is.
    """
    path = Path(path)
    now = time.time()
    for leftover, pid, mtime in _temporaries(path):
        if stale_only and _process_alive(pid) and now - mtime < STALE_TEMPORARY_S:
            continue
        try:
            leftover.unlink(missing_ok=True)
        except OSError:
            pass


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
