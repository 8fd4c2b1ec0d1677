"""The in-memory data set type and the deterministic stratified split."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class ImageDataset:
    """A classification data set held in memory, already split.

    ``train_x``/``val_x`` are float32 tensors ``(N, C, H, W)``; ``train_y``/
    ``val_y`` int64 tensors ``(N,)`` with values in ``range(len(classes))``
    (:func:`sepconv.train.fit` also takes float ``(N, len(classes))`` rows of
    class probabilities as ``train_y``, for distillation; the class counts
    of :meth:`describe` then count each row's most likely class).
    ``info`` records where the data came from and how it was split/normalized
    (it goes into ``results.json``).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(int(s) for s in self.train_x.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary: sizes, shape, classes and ``info``."""
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "classes": list(self.classes),
            "train_size": int(self.train_x.shape[0]),
            "val_size": int(self.val_x.shape[0]),
            "train_class_counts": torch.bincount(
                self.train_y.argmax(1) if self.train_y.is_floating_point() else self.train_y,
                minlength=self.num_classes,
            ).tolist(),
            "val_class_counts": torch.bincount(self.val_y, minlength=self.num_classes).tolist(),
            **self.info,
        }


def check_labels(labels: np.ndarray, num_classes: int | None = None, what: str = "labels") -> np.ndarray:
    """Validate class labels (1-D ints >= 0) and require at least two distinct classes."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what} must be a non-empty 1-D array of ints, got shape {labels.shape} dtype {labels.dtype}")
    if labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes):
        raise ValueError(f"{what} must lie in [0, {num_classes}), got values {labels.min()}..{labels.max()}")
    if np.unique(labels).size < 2:
        raise ValueError(f"{what}: a classifier needs at least 2 classes, found only class {labels[0]}")
    return labels


def stratified_split(labels: np.ndarray, val_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into ``(train_idx, val_idx)``, stratified by class.

    For each class with ``n`` samples, ``max(1, round(val_fraction * n))``
    samples (but at most ``n - 1``) go to validation, chosen by a permutation
    from ``numpy.random.default_rng(seed)``; classes are visited in increasing
    label order, so the split depends only on ``labels``, ``val_fraction`` and
    ``seed``. Both returned arrays are sorted. Every class needs >= 2 samples.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be a number strictly between 0 and 1, got {val_fraction!r}")
    labels = check_labels(labels)
    rng = np.random.default_rng(seed)
    train_parts, val_parts = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        if idx.size < 2:
            raise ValueError(
                f"class {int(cls)} has {idx.size} sample; a train/validation split needs at least 2 per class"
            )
        n_val = min(max(1, int(round(val_fraction * idx.size))), idx.size - 1)
        perm = rng.permutation(idx)
        val_parts.append(perm[:n_val])
        train_parts.append(perm[n_val:])
    return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(val_parts))


def standardize(train_x: torch.Tensor, *others: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, list[float]]]:
    """Subtract the per-channel mean and divide by the per-channel std of ``train_x``.

    The statistics come from the training split only and are applied to every
    tensor given; returns the normalized tensors and ``{"mean": [...], "std": [...]}``.
    """
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    out = [(t - mean) / std for t in (train_x, *others)]
    return out, {"mean": mean.flatten().tolist(), "std": std.flatten().tolist()}


def standardized_dataset(name: str, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
                         val_y: torch.Tensor, classes: list[str], *, scale: str, info: dict[str, Any]) -> ImageDataset:
    """The splits as an :class:`ImageDataset`, the images standardized with :func:`standardize`.

    ``train_x``/``val_x`` are float pixel tensors already multiplied by
    ``scale`` (recorded as written, e.g. ``"1/255"``); ``info`` gains
    ``"normalization"``: the scale and the training split's statistics.
    """
    (train_x, val_x), stats = standardize(train_x, val_x)
    return ImageDataset(name=name, train_x=train_x.contiguous(), train_y=train_y, val_x=val_x.contiguous(),
                        val_y=val_y, classes=list(classes), info={**info, "normalization": {"scale": scale, **stats}})


def check_data_dir(path: str | os.PathLike, what: str = "--data-dir") -> Path:
    """``path`` as a :class:`~pathlib.Path` after checking that it is an existing, reachable directory.

    Raises ``FileNotFoundError`` (missing), ``NotADirectoryError`` (a file) or
    ``ValueError`` when the path cannot even be looked up (a component longer
    than the file system allows, no permission on a parent, ...), each naming
    ``what`` and the path, instead of an ``OSError`` from deep inside a loader.
    """
    root = Path(path)
    try:
        exists = root.exists()
        is_dir = exists and root.is_dir()
    except OSError as error:
        if error.errno == errno.ENAMETOOLONG:
            longest = max((len(os.fsencode(part)) for part in root.parts), default=0)
            raise ValueError(
                f"{what} {str(root)!r} cannot be looked up: a path component is {longest} bytes long, more than "
                "the file system allows (usually 255 bytes per component)"
            ) from error
        raise ValueError(f"{what} {str(root)!r} cannot be looked up: {error.strerror or error}") from error
    if not exists:
        raise FileNotFoundError(f"{what} {str(root)!r} does not exist")
    if not is_dir:
        raise NotADirectoryError(f"{what} {str(root)!r} is not a directory")
    return root
