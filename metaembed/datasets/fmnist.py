"""Fashion-MNIST (Debian ``dataset-fashion-mnist``): 28x28 greyscale clothing, 10 classes.

Split rule: train = the first 59,000 images of the train files; dev = their last 1,000 (held out of
training, for recipe choices); test = the first 1,000 images of ``t10k``.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

from metaembed.datasets._assets import require

ROOT = Path("/usr/share/datasets/fashion-mnist")
APT_PACKAGE = "dataset-fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
TEST_SIZE = 1000
DEV_SIZE = 1000
_FILES = {"train": "train", "dev": "train", "test": "t10k"}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4")}


class IdxFormatError(ValueError):
    """An idx file whose header or size is inconsistent."""


def read_idx(path: Path) -> np.ndarray:
    """Parse a gzipped idx file (LeCun's MNIST format): magic 0,0,dtype,ndim; big-endian dims; data.

    Hand-written because it is 15 lines of numpy and avoids a dependency for a fixed, tiny format.
    """
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise IdxFormatError(f"{path}: not an idx file (bad magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise IdxFormatError(f"{path}: header promises {dims} ({expected} bytes) but holds {len(raw) - offset}")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(dims)


def load_split(split: str, root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (n, 28, 28), labels int64 (n,))`` of the fixed ``train``, ``dev`` or ``test`` split."""
    if split not in _FILES:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; expected one of {tuple(_FILES)}")
    root = root or ROOT
    prefix = _FILES[split]
    images = read_idx(require(root / f"{prefix}-images-idx3-ubyte.gz", APT_PACKAGE))
    labels = read_idx(require(root / f"{prefix}-labels-idx1-ubyte.gz", APT_PACKAGE)).astype(np.int64)
    if len(images) != len(labels):
        raise IdxFormatError(f"{root}: {len(images)} {prefix} images but {len(labels)} labels")
    if split == "test":
        return images[:TEST_SIZE], labels[:TEST_SIZE]
    if split == "dev":
        return images[-DEV_SIZE:], labels[-DEV_SIZE:]
    return images[:-DEV_SIZE], labels[:-DEV_SIZE]


def to_image(pixels: np.ndarray) -> Image.Image:
    """One 28x28 uint8 array -> greyscale PIL image (dark garment on black, as stored)."""
    return Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
