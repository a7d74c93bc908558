"""Image classification data for the ViT example: Fashion-MNIST (IDX files) and CIFAR-10 (python batches).

Fashion-MNIST (Xiao et al. 2017; 60,000 training and 10,000 test images, 28x28 grey, 10 classes) is read
from the four IDX files that the Debian/Ubuntu package ``dataset-fashion-mnist`` installs in
``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``); any folder with the
same four files (gzipped or not) works through ``data_dir=``. CIFAR-10 (Krizhevsky 2009) is read from a
local copy of the standard "python version" batches (``data_batch_1`` .. ``data_batch_5``,
``test_batch``); nothing is downloaded.

Loaders return ``(images, labels)``: ``uint8`` images of shape ``(N, C, H, W)`` and ``int64`` labels.
:class:`ImageDataset` yields ``(image, label)`` pairs of a normalised ``float32`` ``(C, H, W)`` tensor
and an ``int64`` scalar. For scaling laws D counts *images*: ``tokens_per_sample == 1``.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import struct
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from flops_fit.examples import DataNotFoundError

__all__ = [
    "CIFAR10_CLASSES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "ImageDataset",
    "channel_stats",
    "load_cifar10",
    "load_fashion_mnist",
    "load_image_datasets",
    "read_idx",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# IDX type codes (LeCun et al., MNIST file format): code -> big-endian numpy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


# ----------------------------------------------------------------------------------------------------------
# IDX (MNIST-style) files
# ----------------------------------------------------------------------------------------------------------


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a native-endian numpy array.

    Format: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), the number of dimensions, then one big-endian uint32 per dimension and the data.
    Raises ValueError for a bad magic number or a size that does not match the header.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"IDX file {path} does not exist")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path} looks gzip-compressed but cannot be decompressed: {exc}") from exc
    if len(raw) < 4:
        raise ValueError(f"{path} is too short ({len(raw)} bytes) to be an IDX file")
    zero1, zero2, code, ndim = struct.unpack(">BBBB", raw[:4])
    if zero1 != 0 or zero2 != 0 or code not in _IDX_DTYPES or ndim < 1:
        raise ValueError(
            f"{path} is not an IDX file: magic bytes {raw[:4].hex()} (expected 0000, a type code in "
            f"{[hex(c) for c in _IDX_DTYPES]} and a dimension count >= 1)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: header says shape {shape} of {dtype.name} ({expected} bytes) but the file has "
            f"{len(raw) - header} data bytes; the file is truncated or corrupt"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def load_fashion_mnist(
    split: str = "train", data_dir: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images ``(N, 1, 28, 28)`` uint8 and labels ``(N,)`` int64 (0-9).

    ``split`` is ``"train"`` (60,000) or ``"test"`` (10,000). ``data_dir`` defaults to
    ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).
    """
    _check_split(split)
    folder = Path(data_dir).expanduser() if data_dir is not None else FASHION_MNIST_DIR
    images_stem, labels_stem = _FASHION_FILES[split]
    images_path, labels_path = _find_idx(folder, images_stem), _find_idx(folder, labels_stem)
    if images_path is None or labels_path is None:
        raise DataNotFoundError(
            f"Fashion-MNIST {split} files ({images_stem}[.gz], {labels_stem}[.gz]) not found in {folder}. "
            "On Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist; elsewhere put the four IDX "
            "files from https://github.com/zalandoresearch/fashion-mnist in a folder and pass data_dir=<that folder> "
            "(--data-dir on the command line)"
        )
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"Fashion-MNIST files disagree: images {images.shape} in {images_path}, labels {labels.shape} "
            f"in {labels_path}; expected (N, H, W) and (N,)"
        )
    if images.dtype != np.uint8 or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise ValueError(f"Fashion-MNIST files in {folder} have unexpected contents (dtype or labels)")
    return np.ascontiguousarray(images[:, None]), labels.astype(np.int64)


# ----------------------------------------------------------------------------------------------------------
# CIFAR-10 python batches
# ----------------------------------------------------------------------------------------------------------


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR batches that refuses everything but numpy arrays and builtins."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("builtins", "list"),
            ("builtins", "dict"),
            ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            if module.startswith("numpy.core.") and importlib.util.find_spec("numpy._core") is not None:
                module = "numpy._core." + module.removeprefix("numpy.core.")  # NumPy 2 moved numpy.core
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch file")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            batch = _NumpyOnlyUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise ValueError(f"{path} is not a CIFAR-10 python batch: {exc}") from exc
    if not isinstance(batch, dict):
        raise ValueError(f"{path} is not a CIFAR-10 python batch (expected a dict)")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path} has no 'data'/'labels' entries; is it a CIFAR-10 python batch?")
    data = np.asarray(data, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise ValueError(f"{path}: data {data.shape} / labels {labels.shape} are not N x 3072 / N")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(
    split: str = "train", data_dir: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64 from local python batches.

    ``data_dir`` is the ``cifar-10-batches-py`` folder (or its parent); ``split`` is ``"train"``
    (``data_batch_1`` .. ``data_batch_5``, 50,000 images) or ``"test"`` (``test_batch``, 10,000).
    """
    _check_split(split)
    how = (
        "download and extract the CIFAR-10 python version (cifar-10-python.tar.gz from "
        "https://www.cs.toronto.edu/~kriz/cifar.html) and pass data_dir=<the cifar-10-batches-py folder> (--data-dir on the command line)"
    )
    if data_dir is None:
        raise DataNotFoundError(f"CIFAR-10 is not bundled: {how}")
    folder = Path(data_dir).expanduser()
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataNotFoundError(f"CIFAR-10 {split} batches {missing} not found in {folder}: {how}")
    parts = [_read_cifar_batch(folder / n) for n in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"CIFAR-10 labels in {folder} are outside 0-9")
    return images, labels


# ----------------------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------------------


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of ``uint8`` images ``(N, C, H, W)``, in [0, 1] units."""
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 of shape (N, C, H, W), got {images.dtype} {images.shape}")
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = np.bincount(images[:, c].reshape(-1), minlength=256).astype(np.float64)
        total = counts.sum()
        mean = float(counts @ values / total)
        var = float(counts @ (values - mean) ** 2 / total)
        means.append(mean)
        stds.append(max(var, 1e-12) ** 0.5)
    return np.asarray(means, dtype=np.float32), np.asarray(stds, dtype=np.float32)


class ImageDataset(Dataset):
    """``(image, label)`` pairs: ``float32 (C, H, W)`` normalised per channel, and an ``int64`` label.

    Args:
        images: ``uint8`` array ``(N, C, H, W)``.
        labels: integer array ``(N,)`` of class ids.
        mean, std: per-channel statistics in [0, 1] units; default: computed from ``images``. Pass the
            training set's statistics when building a validation set.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
    ) -> None:
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 of shape (N, C, H, W), got {images.dtype} {images.shape}")
        if labels.shape != (images.shape[0],) or labels.dtype.kind not in "iu":
            raise ValueError(
                f"labels must be integers of shape ({images.shape[0]},), got {labels.dtype} {labels.shape}"
            )
        if images.shape[0] == 0:
            raise ValueError("images is empty")
        if mean is None or std is None:
            stats = channel_stats(images)
            mean = stats[0] if mean is None else mean
            std = stats[1] if std is None else std
        mean = np.asarray(mean, dtype=np.float32).reshape(-1)
        std = np.asarray(std, dtype=np.float32).reshape(-1)
        if mean.shape != (images.shape[1],) or std.shape != (images.shape[1],) or np.any(std <= 0):
            raise ValueError(f"mean and std need one value per channel ({images.shape[1]}) and std > 0")
        self.images = images
        self.labels = labels.astype(np.int64)
        self.mean = mean
        self.std = std
        self._scale = torch.from_numpy(1.0 / (255.0 * std)).view(-1, 1, 1)
        self._shift = torch.from_numpy(mean / std).view(-1, 1, 1)

    @property
    def tokens_per_sample(self) -> int:
        """D is counted in images: each sample contributes 1."""
        return 1

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)``."""
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(np.array(self.images[index], dtype=np.float32))
        return image * self._scale - self._shift, torch.tensor(self.labels[index])


def load_image_datasets(
    name: str = "fashion-mnist", data_dir: str | os.PathLike[str] | None = None
) -> tuple[ImageDataset, ImageDataset]:
    """Training and validation (the official test split) :class:`ImageDataset` s, both normalised with
    the training set's channel statistics. ``name`` is ``"fashion-mnist"`` or ``"cifar10"``."""
    loaders = {"fashion-mnist": load_fashion_mnist, "cifar10": load_cifar10}
    if name not in loaders:
        raise ValueError(f"unknown image data set {name!r}; choose one of {sorted(loaders)}")
    train_images, train_labels = loaders[name]("train", data_dir)
    test_images, test_labels = loaders[name]("test", data_dir)
    train = ImageDataset(train_images, train_labels)
    return train, ImageDataset(test_images, test_labels, mean=train.mean, std=train.std)
