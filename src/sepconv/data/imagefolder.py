"""Class-per-folder images (``DIR/<class>/<image>``), decoded with Pillow."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..utils.memory import memory_limit
from ._common import ImageDataset, check_data_dir, standardized_dataset, stratified_split

#: File name endings read as images (case-insensitive); other files are skipped.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

#: Estimated bytes the loader holds at once per pixel value (image x channel x row x
#: column): the uint8 array (1), its float32 copy (4), the train/val index copies (4) and
#: their standardized results (4). Short-lived temporaries come on top of it.
PEAK_BYTES_PER_VALUE = 13


def _scan(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes: list[str] = []
    files: list[tuple[Path, int]] = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        images = sorted(
            p for p in entry.rglob("*")
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not images:
            continue
        files.extend((p, len(classes)) for p in images)
        classes.append(entry.name)
    return classes, files


def load_imagefolder(
    data_dir: str | os.PathLike,
    image_size: int = 32,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    max_bytes: int | None = None,
) -> ImageDataset:
    """Load ``data_dir/<class>/**/<image>`` as RGB images resized to ``image_size`` x ``image_size`` pixels.

    Classes are the sub-folders holding at least one file ending in one of
    :data:`IMAGE_EXTENSIONS`, in sorted name order (label 0 is the first).
    Hidden files and other endings are skipped. The validation split is
    :func:`~sepconv.data.stratified_split`. A missing directory, no images,
    a single class, a class with one image, an image Pillow cannot decode or
    one larger than ``PIL.Image.MAX_IMAGE_PIXELS`` (a possible decompression
    bomb) raise an error naming the path. Needs Pillow.

    The folder is sized before any image is decoded: ``images x 3 x
    image_size**2 x`` :data:`PEAK_BYTES_PER_VALUE` bytes must fit in
    ``max_bytes`` (default: the machine's physical memory,
    :func:`sepconv.utils.memory.memory_limit`; ``SEPCONV_MAX_BYTES``
    overrides it), else ``ValueError`` with the estimate and the largest
    ``image_size`` that fits.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int (pixels), got {image_size!r}")
    root = check_data_dir(data_dir)
    classes, files = _scan(root)
    if not files:
        raise ValueError(
            f"--data-dir {str(root)!r} holds no images: expected one sub-folder per class containing files "
            f"ending in {', '.join(IMAGE_EXTENSIONS)}"
        )
    if len(classes) < 2:
        raise ValueError(
            f"--data-dir {str(root)!r} has a single class ({classes[0]!r}); a classifier needs at least 2 class folders"
        )
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
        raise ValueError(f"max_bytes must be a positive int (bytes) or None, got {max_bytes!r}")
    limit = memory_limit() if max_bytes is None else max_bytes
    need = len(files) * 3 * image_size**2 * PEAK_BYTES_PER_VALUE
    if need > limit:
        fits = int((limit / (len(files) * 3 * PEAK_BYTES_PER_VALUE)) ** 0.5)
        where = "this machine's memory" if max_bytes is None else "max_bytes"
        raise ValueError(
            f"--data-dir {str(root)!r} holds {len(files):,} images; at --image-size {image_size} loading them needs "
            f"about {need / 2**30:.1f} GiB, more than the {limit / 2**30:.1f} GiB of {where}; "
            + (f"use --image-size {fits} or less, or fewer images" if fits >= 1 else "use fewer images")
        )
    images = np.empty((len(files), 3, image_size, image_size), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        try:
            with warnings.catch_warnings():
                # Pillow only warns between MAX_IMAGE_PIXELS and twice that; refuse those too
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    img = img.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
                    images[i] = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ValueError(
                f"image {str(path)!r} is too large to decode safely (Pillow's limit is "
                f"PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS:,} pixels; possible decompression bomb): {error}"
            ) from error
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            if isinstance(error, PermissionError):
                raise
            raise ValueError(f"cannot decode image {str(path)!r}: {error}") from error
    labels = np.array([label for _, label in files], dtype=np.int64)
    train_idx, val_idx = stratified_split(labels, val_fraction, split_seed)
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    y = torch.from_numpy(labels)
    return standardized_dataset(
        "imagefolder", x[train_idx], y[train_idx], x[val_idx], y[val_idx], classes, scale="1/255",
        info={
            "source": f"image folder {root}",
            "image_size": image_size,
            "split": f"stratified, val_fraction={val_fraction}, split_seed={split_seed}",
        },
    )
