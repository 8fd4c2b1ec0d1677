"""Data sets for ``sepconv compare``: embedded digits, CIFAR-10 and Fashion-MNIST from disk, class-per-folder images.

Every loader returns an :class:`ImageDataset`: float32 image tensors in
``(N, C, H, W)`` layout, int64 labels, a train and a validation split and the
class names. Everything is held in memory; the data sets this is meant for
(digits, CIFAR-10, small folders) fit easily.

Validation split
----------------
Digits and image folders have no official validation set, so
:func:`stratified_split` holds out ``val_fraction`` (default 0.2) of *each
class*, chosen by a NumPy generator seeded with ``split_seed`` (default 0,
independent of the training seed so runs with different ``--seed`` values are
scored on the same images). CIFAR-10 uses its official 10 000-image test batch
and Fashion-MNIST its official 10 000-image test set (``t10k-*``) as the
validation split.
"""

from __future__ import annotations

from ._common import ImageDataset, stratified_split, standardize
from .cifar10 import load_cifar10, read_cifar10_python_batch, read_cifar10_binary_batch
from .digits import load_digits
from .fashion_mnist import load_fashion_mnist, read_idx
from .imagefolder import IMAGE_EXTENSIONS, load_imagefolder

#: Names accepted by :func:`load_dataset` (and ``sepconv compare --dataset``).
DATASETS = ("digits", "cifar10", "fashion-mnist", "imagefolder")


def load_dataset(
    name: str,
    data_dir: str | None = None,
    *,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    image_size: int = 32,
    download: bool = False,
) -> ImageDataset:
    """Load the data set ``name`` (one of :data:`DATASETS`).

    ``data_dir`` is required for ``cifar10`` and ``imagefolder``, optional for
    ``fashion-mnist`` (default: where Debian's ``dataset-fashion-mnist``
    installs it) and ignored for ``digits``. ``val_fraction``/``split_seed`` define the stratified
    validation split (digits, imagefolder); ``image_size`` is the side in
    pixels image folders are resized to; ``download`` lets ``cifar10`` fetch
    the archive when ``data_dir`` does not hold it (needs network access).
    """
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {name!r}")
    if name == "digits":
        return load_digits(val_fraction=val_fraction, split_seed=split_seed)
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir)
    if data_dir is None:
        raise ValueError(f"dataset {name!r} needs --data-dir (a directory); got none")
    if name == "cifar10":
        return load_cifar10(data_dir, download=download)
    return load_imagefolder(data_dir, image_size=image_size, val_fraction=val_fraction, split_seed=split_seed)


__all__ = [
    "DATASETS", "IMAGE_EXTENSIONS", "ImageDataset",
    "load_dataset", "load_digits", "load_cifar10", "load_fashion_mnist", "load_imagefolder", "read_idx",
    "read_cifar10_python_batch", "read_cifar10_binary_batch",
    "stratified_split", "standardize",
]
