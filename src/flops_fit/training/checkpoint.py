"""Checkpoints of the experiment in flight: atomic writes, safe loads, run fingerprints, RNG states.

A checkpoint is one ``torch.save`` file holding plain containers of tensors and numbers (so it loads with
``weights_only=True``): ``format``, ``fingerprint`` (what the run is), ``step``, ``model``, ``optimizer``,
``scaler``, ``rng`` (one entry per process), ``data`` (position in the data stream) and ``loop`` (the
counters and the curve so far). It is written to a temporary file in the same directory, flushed,
fsynced and moved over the old one with :func:`os.replace`, so a crash or ``kill -9`` leaves either the
old or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import stat
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from flops_fit.core.io import atomic_write, remove_temporaries

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


@dataclass
class LoopState:
    """The mutable counters of a run: the checkpoint's ``step`` and ``loop`` entries."""

    step: int = 0
    tokens_seen: int = 0
    curve: list[tuple[int, float]] = field(default_factory=list)
    init_loss: float | None = None
    train_loss: float = math.nan
    elapsed_s: float = 0.0

    def to_state(self) -> dict[str, Any]:
        """The ``loop`` entry of a checkpoint (plain numbers and lists, loadable with ``weights_only``)."""
        return {
            "tokens_seen": self.tokens_seen,
            "curve": [[int(t), float(v)] for t, v in self.curve],
            "init_loss": self.init_loss,
            "train_loss": self.train_loss,
            "elapsed_s": self.elapsed_s,
        }

    @classmethod
    def from_state(cls, step: int, state: Mapping[str, Any]) -> LoopState:
        """The counters of a checkpoint's ``step`` and ``loop`` entries."""
        return cls(
            step=int(step),
            tokens_seen=int(state["tokens_seen"]),
            curve=[(int(t), float(v)) for t, v in state["curve"]],
            init_loss=state["init_loss"],
            train_loss=float(state["train_loss"]),
            elapsed_s=float(state["elapsed_s"]),
        )


class _WriteErrors:
    """A binary file for ``torch.save`` that remembers the first ``OSError`` its writes raise: torch's zip
    writer reports a failed write (a full disk part-way through) as a ``RuntimeError``."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self._fh.flush()


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, ``os.replace``).

    Any failure to write the file (disk full, I/O error) raises ``OSError``, whatever layer it surfaced in.
    """

    def write(fh: IO[bytes]) -> None:
        out = _WriteErrors(fh)
        try:
            torch.save(dict(state), out)
        except RuntimeError as exc:
            if out.error is None:
                raise
            raise out.error from exc

    atomic_write(path, write)


def load_checkpoint(path: str | os.PathLike[str], *, discard_corrupt: bool = True) -> dict[str, Any] | None:
    """Load a checkpoint with ``weights_only=True``; ``None`` if absent.

    Only a regular file is read: a symbolic link, FIFO or device in its place is reported, removed (the
    entry, never what a link points to) and treated as absent.

    A file that cannot be read (truncated, not a zip archive, an entry failing its CRC-32 check), or that
    lacks the expected keys, is reported with a warning, deleted (when ``discard_corrupt``; only the main
    process does so) and treated as absent, so the experiment restarts from scratch.
    """
    path = Path(path)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(mode):  # a link, FIFO or device is never a checkpoint flops-fit wrote
        logger.warning(
            "ignoring %s: not a regular file (a symbolic link, FIFO or device); the experiment restarts "
            "from scratch",
            path,
        )
        if discard_corrupt:
            path.unlink(missing_ok=True)  # the entry only: a link's target is untouched
        return None
    try:
        # torch.load does not check the CRC-32 sums of its zip entries, so a flipped bit in the tensor data
        # would resume with silently wrong weights: check them first (one extra read of the file).
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if damaged is not None:
            raise ValueError(f"entry {damaged!r} fails its CRC-32 check")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a flops-fit checkpoint of format {CHECKPOINT_FORMAT}")
        missing = [k for k in ("fingerprint", "step", "model", "optimizer", "rng", "loop") if k not in state]
        if missing:
            raise ValueError(f"missing key(s) {missing}")
    except Exception as exc:
        logger.warning(
            "discarding corrupt checkpoint %s (%s: %s); the experiment restarts from scratch",
            path,
            type(exc).__name__,
            exc,
        )
        if discard_corrupt:
            remove_checkpoint(path)
        return None
    return state


def remove_checkpoint(path: str | os.PathLike[str]) -> None:
    """Delete a checkpoint and any temporary file a killed writer left beside it."""
    path = Path(path)
    path.unlink(missing_ok=True)
    remove_temporaries(path)


def discard_checkpoint(path: str | os.PathLike[str]) -> None:
    """:func:`remove_checkpoint` for a checkpoint no longer needed: storage that refuses the deletion
    (read-only, ...) gets a warning instead of an exception, since what it belonged to is done either way."""
    try:
        remove_checkpoint(path)
    except OSError as exc:
        logger.warning(
            "could not delete checkpoint %s (%s); delete it by hand (the sweep runner removes leftover "
            "checkpoints of finished experiments when it starts)",
            path,
            exc,
        )


def check_checkpoint_folder(folder: str | os.PathLike[str], output_dir: str | os.PathLike[str]) -> Path:
    """``folder`` (the default ``output_dir/checkpoints``), or a ValueError when it is a symbolic link or
    leads outside ``output_dir``: the runner deletes the checkpoints of finished experiments there, so a
    sweep folder from someone else must not point it at another folder. A checkpoint folder elsewhere is
    fine when the user names it (``checkpoint_dir``)."""
    folder, root = Path(folder), Path(output_dir).resolve()
    if folder.is_symlink() or (folder.exists() and not folder.resolve().is_relative_to(root)):
        raise ValueError(
            f"{str(folder)!r} leads outside the sweep folder {str(root)!r} (a symbolic link?); flops-fit "
            "writes and deletes checkpoints there, so it will not follow it. Delete the link, or pass the "
            "folder you mean as checkpoint_dir (--checkpoint-dir)"
        )
    return folder


def model_signature(model: torch.nn.Module) -> str:
    """Hash of the names, shapes and dtypes of a model's state (not its values)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
    return digest.hexdigest()[:16]


def fingerprint(**parts: Any) -> dict[str, Any]:
    """A JSON-able description of a run; two runs may share a checkpoint only if theirs are equal."""
    return json.loads(json.dumps(parts, sort_keys=True, default=str))


def fingerprint_mismatch(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Keys whose values differ between two fingerprints (empty when they match)."""
    keys = sorted(set(stored) | set(current))
    return [k for k in keys if stored.get(k) != current.get(k)]


def capture_rng() -> dict[str, Any]:
    """The RNG states of torch (CPU and every CUDA device), Python ``random`` and NumPy's global RNG."""
    np_state = np.random.get_state()  # noqa: NPY002 (the legacy global RNG user code may draw from)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Restore what :func:`capture_rng` captured (CUDA states only where the devices match)."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            logger.warning(
                "checkpoint holds %d CUDA RNG states but %d devices are visible; not restoring them",
                len(cuda),
                torch.cuda.device_count(),
            )
