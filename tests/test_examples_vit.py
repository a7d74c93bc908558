"""Tests for the example Vision Transformer and the image data readers (IDX, CIFAR-10 batches)."""

from __future__ import annotations

import gzip
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from flops_fit.examples import DataNotFoundError
from flops_fit.examples.images import (
    FASHION_MNIST_DIR,
    ImageDataset,
    channel_stats,
    load_cifar10,
    load_fashion_mnist,
    load_image_datasets,
    read_idx,
)
from flops_fit.examples.vit import VisionTransformer, classification_loss

HAS_FASHION_MNIST = (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def write_idx(path: Path, array: np.ndarray, code: int, *, compress: bool) -> Path:
    big_endian = array.astype(array.dtype.newbyteorder(">"))
    payload = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += big_endian.tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


@pytest.fixture
def tiny_fashion(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 8)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images, 0x08, compress=True)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels, 0x08, compress=False)  # plain works too
    return tmp_path


# ------------------------------------------------------------------------------------------------ IDX


@pytest.mark.parametrize(
    ("dtype", "code"),
    [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C), (np.float32, 0x0D)],
)
@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path: Path, dtype, code, compress):
    array = (np.arange(2 * 3 * 4) - 7).reshape(2, 3, 4).astype(dtype)
    path = write_idx(tmp_path / "a.idx", array, code, compress=compress)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_read_idx_rejects_bad_files(tmp_path: Path):
    good = write_idx(tmp_path / "good", np.zeros((3, 2), np.uint8), 0x08, compress=False).read_bytes()
    (tmp_path / "magic").write_bytes(b"\x01\x00" + good[2:])
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "magic")
    (tmp_path / "code").write_bytes(good[:2] + b"\x07" + good[3:])
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "code")
    (tmp_path / "short").write_bytes(good[:-1])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(tmp_path / "short")
    (tmp_path / "long").write_bytes(good + b"\x00")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(tmp_path / "long")
    (tmp_path / "badgz").write_bytes(b"\x1f\x8b" + b"garbage")
    with pytest.raises(ValueError, match="gzip"):
        read_idx(tmp_path / "badgz")
    with pytest.raises(DataNotFoundError):
        read_idx(tmp_path / "absent")


# ------------------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_from_a_folder(tiny_fashion: Path):
    images, labels = load_fashion_mnist("train", data_dir=tiny_fashion)
    assert images.shape == (20, 1, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [i % 10 for i in range(20)]
    train, val = load_image_datasets("fashion-mnist", data_dir=tiny_fashion)
    assert len(train) == 20 and len(val) == 8
    np.testing.assert_array_equal(val.mean, train.mean)  # validation uses training statistics


def test_fashion_mnist_missing_files_say_how_to_get_them(tmp_path: Path):
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", data_dir=tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation", data_dir=tmp_path)


def test_fashion_mnist_mismatched_files(tiny_fashion: Path):
    write_idx(tiny_fashion / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8), 0x08, compress=False)
    with pytest.raises(ValueError, match="disagree"):
        load_fashion_mnist("test", data_dir=tiny_fashion)


@pytest.mark.skipif(not HAS_FASHION_MNIST, reason="apt-get install dataset-fashion-mnist to run")
def test_real_fashion_mnist():
    train_images, train_labels = load_fashion_mnist("train")
    test_images, test_labels = load_fashion_mnist("test")
    assert train_images.shape == (60_000, 1, 28, 28) and test_images.shape == (10_000, 1, 28, 28)
    assert np.bincount(train_labels).tolist() == [6000] * 10
    assert np.bincount(test_labels).tolist() == [1000] * 10
    mean, std = channel_stats(train_images)
    assert mean[0] == pytest.approx(0.2860, abs=1e-3) and std[0] == pytest.approx(0.3530, abs=1e-3)


# ------------------------------------------------------------------------------------------ CIFAR-10


def write_cifar(folder: Path, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"data": rng.integers(0, 256, size=(4, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, size=4)],
            b"filenames": [b"x.png"] * 4,
        }
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)


def test_cifar10_from_local_batches(tmp_path: Path):
    write_cifar(tmp_path / "cifar-10-batches-py", np.random.default_rng(1))
    images, labels = load_cifar10("train", data_dir=tmp_path)  # the parent folder works too
    assert images.shape == (20, 3, 32, 32) and labels.shape == (20,)
    test_images, _ = load_cifar10("test", data_dir=tmp_path / "cifar-10-batches-py")
    assert test_images.shape == (4, 3, 32, 32)
    train, _ = load_image_datasets("cifar10", data_dir=tmp_path)
    assert train.image_shape == (3, 32, 32) and train.mean.shape == (3,)


def test_cifar10_absent_or_malicious(tmp_path: Path):
    with pytest.raises(DataNotFoundError, match="not bundled"):
        load_cifar10("train")
    with pytest.raises(DataNotFoundError, match="data_batch_1"):
        load_cifar10("train", data_dir=tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(ValueError, match=r"refusing to load builtins\.print"):
        load_cifar10("test", data_dir=folder)
    with pytest.raises(ValueError, match="unknown image data set"):
        load_image_datasets("mnist")


# -------------------------------------------------------------------------------------- ImageDataset


def test_image_dataset_items_and_normalisation():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(50, 3, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 5, size=50)
    ds = ImageDataset(images, labels)
    assert ds.tokens_per_sample == 1 and len(ds) == 50 and ds.image_shape == (3, 8, 8)
    x, y = ds[7]
    assert x.dtype == torch.float32 and x.shape == (3, 8, 8) and y.dtype == torch.int64
    expected = (images[7].astype(np.float32) / 255 - ds.mean[:, None, None]) / ds.std[:, None, None]
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-5)
    stacked = torch.stack([ds[i][0] for i in range(len(ds))])
    torch.testing.assert_close(stacked.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(stacked.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-2, rtol=0)
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(images.astype(np.float32), labels)
    with pytest.raises(ValueError, match="labels"):
        ImageDataset(images, labels[:-1])
    with pytest.raises(ValueError, match="one value per channel"):
        ImageDataset(images, labels, mean=[0.5], std=[0.2])


# ----------------------------------------------------------------------------------------------- ViT


def test_vit_shapes_counts_and_initial_loss():
    torch.manual_seed(0)
    model = VisionTransformer(64, num_layers=2)
    assert model.num_patches == 49 and model.num_heads == 1
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    images = torch.randn(5, 1, 28, 28)
    logits = model(images)
    assert logits.shape == (5, 10)
    torch.testing.assert_close(model(images.squeeze(1)), logits)  # (B, H, W) is accepted for grey images
    targets = torch.randint(0, 10, (5,))
    assert classification_loss(logits, targets).item() == pytest.approx(math.log(10), abs=1e-6)
    assert classification_loss((logits,), targets).item() == pytest.approx(math.log(10), abs=1e-6)
    with pytest.raises(ValueError, match="images must have shape"):
        model(torch.randn(5, 3, 28, 28))
    with pytest.raises(ValueError, match="logits must be"):
        classification_loss(logits, targets[:2])


def test_vit_size_grows_with_d_model_and_validates_arguments():
    counts = [VisionTransformer(d, num_layers=2).num_params() for d in (32, 64, 128)]
    assert counts[0] < counts[1] < counts[2]
    assert counts[2] / counts[1] == pytest.approx(4, rel=0.1)  # ~quadratic in width
    model_cls = VisionTransformer  # flops-fit contract: model_cls(**{size_param: value}, **kwargs)
    cifar = model_cls(**{"d_model": 96}, image_size=32, in_channels=3, patch_size=8, num_heads=4)
    assert cifar(torch.randn(2, 3, 32, 32)).shape == (2, 10) and cifar.num_patches == 16
    with pytest.raises(ValueError, match="patch_size"):
        VisionTransformer(64, patch_size=5)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        VisionTransformer(64, num_heads=3)
    with pytest.raises(TypeError, match="d_model must be an int"):
        VisionTransformer(64.0)
    with pytest.raises(ValueError, match="dropout"):
        VisionTransformer(64, dropout=1.5)


def test_vit_learns_a_small_batch(tiny_fashion: Path):
    torch.manual_seed(1)
    train, _ = load_image_datasets("fashion-mnist", data_dir=tiny_fashion)
    x = torch.stack([train[i][0] for i in range(len(train))])
    y = torch.stack([train[i][1] for i in range(len(train))])
    model = VisionTransformer(32, num_layers=1, patch_size=7)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss = classification_loss(model(x), y)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first
