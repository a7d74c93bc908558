"""The append-only results ledger (``results.jsonl``): one JSON object per finished experiment.

Writers only ever append a whole line and fsync it; nothing is rewritten. Readers tolerate a torn last
line (a writer killed mid-append) and skip it with a warning, so a crash never makes the ledger unreadable.
A line beyond what flops-fit reads (nested too deep, a huge integer, longer than ``MAX_LINE_BYTES``) is
skipped the same way. The ledger and the lock are opened only as regular files, and never through a
symbolic link for writing (:func:`flops_fit.core.io.open_regular`): a sweep folder from someone else cannot
make a runner write, truncate or endlessly read any other file.

Every reader of results files goes through here: :func:`read_records` (a ``.jsonl`` ledger),
:func:`read_run_list` (a ``.json`` list of run objects), :func:`load_results` (either, or a sweep folder)
and :func:`latest_records` (the record that counts for each experiment).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from flops_fit.core import sweepdir
from flops_fit.core.io import (
    JSONLimitError,
    UnsafeFileError,
    check_own_file,
    open_regular,
    parse_json,
    read_json,
)

logger = logging.getLogger(__name__)

#: Held (``flock``) by the runner writing a sweep folder; holds that runner's process id.
LOCK_FILE = sweepdir.LOCK_FILE
#: The longest ledger line read (bytes); a longer one is skipped with a warning (a record with a loss
#: curve of 100,000 points is about 4 MB).
MAX_LINE_BYTES = 64 * 2**20


@contextlib.contextmanager
def exclusive_folder(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on a sweep folder while a runner writes to it: a second runner on the same
    folder is refused at once (``OSError`` EBUSY naming the holder) instead of racing the first for the
    ledger and the plan file. POSIX ``flock``; where it is missing (Windows) nothing is locked. The lock
    goes with the process, so a killed runner never leaves the folder locked.

    The lock file and the ledger must be regular files of the folder's own (not symbolic or hard links, see
    :func:`flops_fit.core.io.open_regular`): an UnsafeFileError (a ValueError) naming the file says so."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = open_regular(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, write=True)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise OSError(
                errno.EBUSY,
                f"another flops-fit runner (process {holder}) is writing to this sweep folder; wait for it to "
                "finish, or give this sweep another output_dir",
                str(folder),
            ) from None
        except OSError as exc:  # a file system without flock (some NFS, FUSE or Lustre mounts)
            if exc.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            logger.warning("cannot lock %s (%s): keep to one runner per folder yourself", folder, exc)
            check_own_file(folder / sweepdir.RESULTS_FILE)  # else append_record refuses it only after a run
            yield
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
        check_own_file(folder / sweepdir.RESULTS_FILE)  # else append_record refuses it only after a run
        yield
    finally:
        os.close(fd)  # releases the lock


def _json_default(value: Any) -> Any:
    """Turn NumPy scalars and arrays into plain JSON values."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serialisable")


def _sanitize(value: Any) -> Any:
    """Replace non-finite floats by None so every line is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitize(v) for v in value]
    return value


def encode_record(record: Mapping[str, Any]) -> str:
    """One ledger line (without the newline): strict JSON, non-finite floats written as null."""
    return json.dumps(_sanitize(dict(record)), default=_json_default, allow_nan=False, sort_keys=True)


def _ends_with_newline(path: Path, fd: int) -> bool:
    """Whether the ledger open for appending on ``fd`` is empty or ends with a newline (read through a
    second descriptor of the same file: ``fd`` is write-only)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return True
    reader = open_regular(path)
    try:
        if (os.fstat(reader).st_ino, os.fstat(reader).st_dev) != (os.fstat(fd).st_ino, os.fstat(fd).st_dev):
            raise OSError(errno.EAGAIN, "the ledger was replaced while being appended to", str(path))
        return os.pread(reader, 1, size - 1) == b"\n"
    finally:
        os.close(reader)


def append_record(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Append one record as a single line, then flush and fsync so it survives a crash.

    Raises:
        OSError: the line could not be written (disk full, read-only folder, ...); the message names the
            ledger. Records already in it are untouched; a partial line, if any, is skipped by readers.
        UnsafeFileError: (a ValueError) the ledger is a symbolic link, a hard link or not a regular file.
    """
    data = (encode_record(record) + "\n").encode("utf-8")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, write=True, opener=os.open)
        try:
            # A previous writer killed mid-line leaves no trailing newline: start on a fresh line so the torn
            # fragment stays isolated (the reader skips it) and this record parses.
            if not _ends_with_newline(path, fd):
                data = b"\n" + data
            # os.write may write less than asked (a disk filling up): finish the line or raise, never
            # return with half a record written.
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        message = (
            f"could not append a record to the ledger {path} ({exc.strerror or exc}); the records already "
            "in it are kept: free space or make the folder writable, then run again"
        )
        raise (OSError(exc.errno, message) if exc.errno else OSError(message)) from exc


def _lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) of each line of the regular file ``path``; None for a line longer than
    ``MAX_LINE_BYTES`` (read past without keeping it)."""
    with os.fdopen(open_regular(path), "rb") as fh:
        lineno = 0
        while line := fh.readline(MAX_LINE_BYTES + 1):
            lineno += 1
            if len(line) <= MAX_LINE_BYTES or line.endswith(b"\n"):
                yield lineno, line
                continue
            while (rest := fh.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                pass
            yield lineno, None


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read every complete JSON object from a ``.jsonl`` ledger.

    Blank lines are ignored. A line that does not parse is skipped with a warning naming the file and the
    line (a torn write from a killed process); so is a non-object line, and one beyond what flops-fit reads
    (longer than ``MAX_LINE_BYTES``, nested too deep, an integer of hundreds of digits).

    Raises:
        UnsafeFileError: (a ValueError) ``path`` is not a regular file (a device, a FIFO, a folder).
    """
    records: list[dict[str, Any]] = []
    for lineno, raw in _lines(path):
        if raw is None:
            logger.warning("%s:%d: skipping a line longer than %d bytes", path, lineno, MAX_LINE_BYTES)
            continue
        text = raw.decode("utf-8", "replace").removeprefix("\ufeff").strip()  # a BOM an editor may add
        if not text:
            continue
        try:
            obj = parse_json(text, f"{path}:{lineno}")
        except JSONLimitError as exc:
            logger.warning("%s:%d: skipping a line that %s", path, lineno, exc.reason)
            continue
        except ValueError:
            logger.warning("%s:%d: skipping a line that is not valid JSON (torn write?)", path, lineno)
            continue
        if not isinstance(obj, dict):
            logger.warning("%s:%d: skipping a line that is not a JSON object", path, lineno)
            continue
        records.append(obj)
    return records


def read_run_list(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every run object of a ``.json`` results file: a JSON list of objects, or ``{"runs": [...]}``.

    Raises ValueError when the file is not JSON, or not such a list.
    """
    try:
        data = read_json(path)
    except (JSONLimitError, UnsafeFileError):
        raise
    except ValueError as exc:
        raise ValueError(f"{exc}; expected a list of run objects") from None
    if isinstance(data, Mapping) and isinstance(data.get("runs"), list):
        data = data["runs"]
    if not isinstance(data, list) or not all(isinstance(r, Mapping) for r in data):
        raise ValueError(f"{path} must hold a JSON list of run objects (or {{'runs': [...]}})")
    return [dict(r) for r in data]


def load_results(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record of a results file, in file order.

    ``path`` is a ``.jsonl`` ledger (a torn last line is skipped with a warning), a ``.json`` list of run
    objects (or ``{"runs": [...]}``), or a sweep folder: then its ``results.json`` (if any) followed by its
    ``results.jsonl`` (if any). A missing file gives an empty list.
    """
    path = Path(path)
    if path.is_dir():
        folder = sweepdir.SweepDir(path)
        return [*load_results(folder.legacy_results), *load_results(folder.results)]
    if not path.exists():
        return []
    if path.suffix.lower() == ".json":
        return read_run_list(path)
    return read_records(path)


def latest_records(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The last record of each ``experiment_id`` (a retried run supersedes its failure), in order of first
    appearance; records without an id are dropped."""
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        if "experiment_id" in record:
            latest[str(record["experiment_id"])] = dict(record)
    return list(latest.values())


def finished_ids(records: Iterable[Mapping[str, Any]]) -> set[str]:
    """Experiment ids that already have a finished (completed, failed or diverged) record."""
    return {str(r["experiment_id"]) for r in records if "experiment_id" in r and r.get("status")}
