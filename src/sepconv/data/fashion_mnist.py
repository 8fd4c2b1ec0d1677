"""Fashion-MNIST read from its original IDX files (gzip-compressed or plain), validated before use.

Zalando's Fashion-MNIST (https://github.com/zalandoresearch/fashion-mnist)
holds 70 000 grey 28x28 images of ten kinds of clothing in four IDX files:

* ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte``: 60 000 images,
  the training split;
* ``t10k-images-idx3-ubyte`` / ``t10k-labels-idx1-ubyte``: 10 000 images,
  the official test split, used here as the **validation** split (there is no
  separate validation set; the training images are never held out).

Each file may end in ``.gz`` (as distributed) or be uncompressed. Without a
directory, :func:`load_fashion_mnist` looks where Debian's package
``dataset-fashion-mnist`` installs them (:data:`DEBIAN_DIR`).

The IDX format (LeCun's MNIST page): two zero bytes, a type byte, a byte with
the number of dimensions ``d``, then ``d`` big-endian uint32 sizes, then the
values, big-endian, in row-major order. :func:`read_idx` checks every part of
that against the file and raises ``ValueError`` naming the file otherwise.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from ._common import ImageDataset, check_data_dir, check_labels, standardized_dataset

#: Where Debian's ``dataset-fashion-mnist`` package installs the four files (gzip-compressed).
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Class names in label order (label 0 is the first).
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
#: The original file names without ``.gz``: split -> (images, labels).
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: Images per split in the official release.
SIZES = {"train": 60_000, "test": 10_000}
IMAGE_SIDE = 28

#: IDX type byte -> big-endian NumPy dtype.
IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
#: Largest payload :func:`read_idx` accepts by default, in bytes (the training images are 47 040 000).
MAX_IDX_BYTES = 1 << 30
_CHUNK = 1 << 22
_GZIP_MAGIC = b"\x1f\x8b"


def _read_limited(handle, limit: int) -> bytes:
    """At most ``limit`` bytes from ``handle``, in chunks, so a small compressed file that claims or
    expands to a huge size never makes one huge allocation."""
    parts, total = [], 0
    while total < limit:
        chunk = handle.read(min(_CHUNK, limit - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)


def read_idx(path: str | os.PathLike, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file (gzip-compressed or plain; detected from its first bytes) into a native-endian array.

    The shape is the file's dimensions; the dtype follows its type byte
    (:data:`IDX_TYPES`). Raises ``ValueError`` naming the file when the magic
    number is wrong, a dimension is zero, the payload the header declares is
    larger than ``max_bytes`` bytes, the file is shorter or longer than the
    header says, or the gzip stream is damaged.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {str(path)!r} does not exist")
    with open(path, "rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as handle:
            magic = handle.read(4)
            if len(magic) < 4:
                raise ValueError(f"IDX file {str(path)!r}: {len(magic)} byte(s), shorter than the 4-byte magic number")
            zero, type_code, ndim = struct.unpack(">HBB", magic)
            if zero != 0 or type_code not in IDX_TYPES:
                raise ValueError(
                    f"IDX file {str(path)!r}: magic number 0x{magic.hex()} is not IDX (expected 0x0000, a type byte "
                    f"in {', '.join(f'0x{t:02x}' for t in IDX_TYPES)}, then the number of dimensions)"
                )
            if ndim == 0:
                raise ValueError(f"IDX file {str(path)!r}: declares 0 dimensions")
            header = handle.read(4 * ndim)
            if len(header) < 4 * ndim:
                raise ValueError(f"IDX file {str(path)!r}: truncated inside the header ({ndim} dimension sizes)")
            shape = struct.unpack(f">{ndim}I", header)
            if 0 in shape:
                raise ValueError(f"IDX file {str(path)!r}: a dimension is 0 (shape {shape})")
            dtype = IDX_TYPES[type_code]
            expected = math.prod(shape) * dtype.itemsize
            if expected > max_bytes:
                raise ValueError(
                    f"IDX file {str(path)!r}: header declares shape {shape}, {expected:,} bytes of data, more than "
                    f"the {max_bytes:,} accepted (max_bytes)"
                )
            payload = _read_limited(handle, expected + 1)
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise ValueError(f"IDX file {str(path)!r}: damaged gzip stream ({error})") from error
    if len(payload) != expected:
        relation = "truncated" if len(payload) < expected else "longer than its header says"
        got = f"{len(payload):,} bytes" if len(payload) <= expected else "more"
        raise ValueError(
            f"IDX file {str(path)!r} is {relation}: shape {shape} of {dtype.name} needs {expected:,} data bytes, "
            f"found {got}"
        )
    return np.frombuffer(payload, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_fashion_mnist(data_dir: str | os.PathLike | None = None) -> dict[str, tuple[Path, Path]]:
    """Locate the four files: ``{"train": (images, labels), "test": (images, labels)}``.

    With ``data_dir``, only that folder (and a ``fashion-mnist`` folder below
    it) is searched; without, :data:`DEBIAN_DIR`. Each file may be plain or end
    in ``.gz``. Raises ``FileNotFoundError`` saying which files are missing and
    how to get them.
    """
    if data_dir is not None:
        root = check_data_dir(data_dir)
        folders = [root, root / "fashion-mnist"]
    else:
        folders = [DEBIAN_DIR]
    for folder in folders:
        found = {split: (_find(folder, images), _find(folder, labels)) for split, (images, labels) in FILES.items()}
        if all(p is not None for pair in found.values() for p in pair):
            return found  # type: ignore[return-value]
    names = ", ".join(f"{n}[.gz]" for pair in FILES.values() for n in pair)
    where = f"--data-dir {str(data_dir)!r}" if data_dir is not None else f"{DEBIAN_DIR} (no --data-dir given)"
    raise FileNotFoundError(
        f"Fashion-MNIST not found in {where}: expected {names}. Get them with "
        "'apt-get install dataset-fashion-mnist' (Debian/Ubuntu, installs them into "
        f"{DEBIAN_DIR}), or download the original files from https://github.com/zalandoresearch/fashion-mnist "
        "into a folder and pass it as --data-dir"
    )


def read_fashion_mnist_split(images_path: str | os.PathLike, labels_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One split: ``(images uint8 (N, 28, 28), labels int64 (N,))``, checked against each other.

    Raises ``ValueError`` when the images are not unsigned bytes of shape
    ``(N, 28, 28)``, the labels not ``N`` unsigned bytes, or a label is not in 0..9.
    """
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise ValueError(
            f"{str(images_path)!r}: expected unsigned-byte images of shape (N, {IMAGE_SIDE}, {IMAGE_SIDE}), got "
            f"{images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{str(labels_path)!r}: expected a 1-D array of unsigned-byte labels, got {labels.dtype} {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{str(labels_path)!r} holds {labels.shape[0]} labels but {str(images_path)!r} holds {images.shape[0]} images"
        )
    if labels.max() >= len(CLASSES):
        bad = int(np.flatnonzero(labels >= len(CLASSES))[0])
        raise ValueError(
            f"{str(labels_path)!r}: label {int(labels[bad])} at index {bad} is out of range 0..{len(CLASSES) - 1}"
        )
    return images, labels.astype(np.int64)


def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> ImageDataset:
    """Fashion-MNIST as ``(N, 1, 28, 28)`` float32 images: 60 000 training, the 10 000 test images as validation.

    Files are found by :func:`find_fashion_mnist` (``data_dir``, else
    :data:`DEBIAN_DIR`). Pixels are scaled to [0, 1] and standardized with the
    training split's mean and std (one channel). Bad files raise ``ValueError``
    naming the file; missing ones ``FileNotFoundError`` saying how to get them.
    """
    found = find_fashion_mnist(data_dir)
    train_images, train_labels = read_fashion_mnist_split(*found["train"])
    val_images, val_labels = read_fashion_mnist_split(*found["test"])
    check_labels(train_labels, len(CLASSES), what="Fashion-MNIST training labels")
    to_float = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)  # noqa: E731
    folder = found["train"][0].parent
    return standardized_dataset(
        "fashion-mnist", to_float(train_images), torch.from_numpy(train_labels), to_float(val_images),
        torch.from_numpy(val_labels), list(CLASSES), scale="1/255",
        info={
            "source": f"Fashion-MNIST IDX files read from {folder}",
            "split": "official: train-* training, t10k-* (the test set) validation",
        },
    )
