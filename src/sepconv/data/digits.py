"""scikit-learn's handwritten digits: 1797 real 8x8 grey images, shipped with the package (no download)."""

from __future__ import annotations

import numpy as np
import torch

from ._common import ImageDataset, standardized_dataset, stratified_split


def load_digits(val_fraction: float = 0.2, split_seed: int = 0) -> ImageDataset:
    """The UCI optical digits bundled with scikit-learn, as ``(N, 1, 8, 8)`` images.

    Pixel values (0..16 in the source) are divided by 16 and standardized with
    the training split's mean and std. The validation split is
    :func:`~sepconv.data.stratified_split` with ``val_fraction`` and
    ``split_seed`` (defaults: 20 % of each class, seed 0, i.e. 1437 train /
    360 validation images). Needs scikit-learn (``pip install "sepconv[experiments]"``).
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ValueError(
            "the digits data set needs scikit-learn: pip install \"sepconv[experiments]\""
        ) from error
    bunch = sk_load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, val_idx = stratified_split(labels, val_fraction, split_seed)
    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(labels)
    return standardized_dataset(
        "digits", x[train_idx], y[train_idx], x[val_idx], y[val_idx], [str(c) for c in range(10)], scale="1/16",
        info={
            "source": "sklearn.datasets.load_digits (UCI optical recognition of handwritten digits)",
            "split": f"stratified, val_fraction={val_fraction}, split_seed={split_seed}",
        },
    )
