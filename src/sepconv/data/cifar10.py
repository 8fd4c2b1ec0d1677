"""CIFAR-10 read from its standard files, without unpickling arbitrary objects.

Krizhevsky's CIFAR-10 (https://www.cs.toronto.edu/~kriz/cifar.html) comes in
two formats, both accepted here:

* the *python version*, ``cifar-10-batches-py/`` with ``data_batch_1`` ..
  ``data_batch_5``, ``test_batch`` and ``batches.meta``: pickled dicts. They
  are read with :class:`RestrictedUnpickler`, which resolves only the three
  NumPy names an array needs (``_reconstruct``, ``ndarray``, ``dtype``) and
  ``_codecs.encode``; any other global (``os.system``, ...) is refused, so a
  malicious file cannot run code.
* the *binary version*, ``cifar-10-batches-bin/`` with ``data_batch_1.bin``
  .. ``test_batch.bin``: 10 000 records of ``1 label byte + 3072 pixel
  bytes`` (R, G, B planes of 32x32), parsed with NumPy.

The official 50 000 training images are the training split and the 10 000
test images the validation split. Pixels are scaled to [0, 1] and
standardized with the training split's per-channel mean and std.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._common import ImageDataset, check_data_dir, check_labels, standardized_dataset

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
RECORD = 1 + 3 * 32 * 32

_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's array-rebuilding function, whatever module holds it
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): __import__("codecs").encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can build NumPy arrays, dicts, lists and strings, and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: a CIFAR-10 batch holds only arrays, lists and strings"
            ) from None


def _safe_unpickle(data: bytes, path: Path) -> Any:
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise ValueError(f"{path}: not a valid CIFAR-10 python batch ({error})") from error


def _key(d: dict, name: str) -> Any:
    for k in (name.encode(), name):
        if k in d:
            return d[k]
    raise KeyError(name)


def read_cifar10_python_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one python-version batch file: ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``.

    Raises ``ValueError`` naming the file when it is not a well-formed batch
    (or tries to load anything but arrays and plain data).
    """
    path = Path(path)
    obj = _safe_unpickle(path.read_bytes(), path)
    try:
        data = np.asarray(_key(obj, "data"))
        labels = np.asarray(_key(obj, "labels"), dtype=np.int64)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: not a CIFAR-10 batch (needs 'data' and 'labels' entries): {error}") from error
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise ValueError(
            f"{path}: expected uint8 data of shape (N, 3072) and N labels, got {data.dtype} {data.shape} "
            f"and {labels.shape[0]} labels"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels must lie in 0..9, got {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar10_binary_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one binary-version batch file (records of 1 label byte + 3072 pixel bytes)."""
    path = Path(path)
    raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD:
        raise ValueError(f"{path}: size {raw.size} bytes is not a positive multiple of the {RECORD}-byte CIFAR-10 record")
    records = raw.reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ValueError(f"{path}: label byte {labels.max()} out of range 0..9; not a CIFAR-10 binary batch")
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def _find_batches(data_dir: Path) -> tuple[Path, str] | None:
    for candidate in (data_dir, data_dir / "cifar-10-batches-py", data_dir / "cifar-10-batches-bin"):
        if all((candidate / name).is_file() for name in TRAIN_BATCHES + [TEST_BATCH]):
            return candidate, "python"
        if all((candidate / f"{name}.bin").is_file() for name in TRAIN_BATCHES + [TEST_BATCH]):
            return candidate, "binary"
    return None


def download_cifar10(data_dir: str | os.PathLike) -> Path:
    """Download and verify (MD5) the python-version archive into ``data_dir``; needs network access.

    Only the expected batch files are extracted, as plain files, so a tampered
    archive cannot write outside ``data_dir/cifar-10-batches-py``.
    """
    import urllib.request

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=data_dir, suffix=".tar.gz.part")
    os.close(fd)
    try:
        try:
            urllib.request.urlretrieve(URL, tmp)  # noqa: S310 - fixed https URL
        except OSError as error:
            raise ValueError(f"could not download CIFAR-10 from {URL}: {error}") from error
        digest = hashlib.md5(Path(tmp).read_bytes()).hexdigest()  # noqa: S324 - published checksum
        if digest != MD5:
            raise ValueError(f"downloaded CIFAR-10 archive has MD5 {digest}, expected {MD5}")
        target = data_dir / "cifar-10-batches-py"
        target.mkdir(exist_ok=True)
        wanted = {f"cifar-10-batches-py/{n}" for n in TRAIN_BATCHES + [TEST_BATCH, "batches.meta"]}
        with tarfile.open(tmp, "r:gz") as archive:
            for member in archive.getmembers():
                if member.name in wanted and member.isfile():
                    src = archive.extractfile(member)
                    assert src is not None
                    out = target / Path(member.name).name
                    part = out.with_suffix(".part")
                    part.write_bytes(src.read())
                    os.replace(part, out)
        return target
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_cifar10(data_dir: str | os.PathLike, download: bool = False) -> ImageDataset:
    """Load CIFAR-10 from ``data_dir`` (the batches folder or its parent), python or binary version.

    With ``download=True`` and no batches found, the python archive is fetched
    from :data:`URL` first (needs network). Missing files raise
    ``FileNotFoundError``/``ValueError`` naming the directory and what was expected.
    """
    root = Path(data_dir)
    try:
        check_data_dir(root)
    except FileNotFoundError:
        if not download:
            raise FileNotFoundError(f"--data-dir {str(root)!r} does not exist (for CIFAR-10 give the folder holding "
                                    "cifar-10-batches-py, or add --download)") from None
    found = _find_batches(root) if root.exists() else None
    if found is None and download:
        download_cifar10(root)
        found = _find_batches(root)
    if found is None:
        raise ValueError(
            f"--data-dir {str(root)!r} holds no CIFAR-10 batches: expected {', '.join(TRAIN_BATCHES)} and "
            f"{TEST_BATCH} (python version) or the same names with .bin (binary version), in it or in "
            "cifar-10-batches-py/ or cifar-10-batches-bin/ below it; add --download to fetch them"
        )
    folder, fmt = found
    reader = read_cifar10_python_batch if fmt == "python" else read_cifar10_binary_batch
    suffix = "" if fmt == "python" else ".bin"
    parts = [reader(folder / f"{name}{suffix}") for name in TRAIN_BATCHES]
    train_images = np.concatenate([p[0] for p in parts])
    train_labels = check_labels(np.concatenate([p[1] for p in parts]), 10, what="CIFAR-10 training labels")
    val_images, val_labels = reader(folder / f"{TEST_BATCH}{suffix}")
    to_float = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0)  # noqa: E731
    return standardized_dataset(
        "cifar10", to_float(train_images), torch.from_numpy(train_labels), to_float(val_images),
        torch.from_numpy(val_labels), list(CLASSES), scale="1/255",
        info={
            "source": f"CIFAR-10 {fmt} version read from {folder}",
            "split": "official: data_batch_1..5 train, test_batch validation",
        },
    )
