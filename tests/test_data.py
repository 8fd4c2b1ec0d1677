"""Data loaders: digits, CIFAR-10 (fake files in both official formats), image folders, the split."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sepconv.data import (
    load_dataset, read_cifar10_binary_batch, read_cifar10_python_batch, stratified_split,
)
from sepconv.data.cifar10 import TEST_BATCH, TRAIN_BATCHES


# ---------------------------------------------------------------- stratified split

@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(2, 30), min_size=2, max_size=6),
    frac=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**31),
    data=st.data(),
)
def test_stratified_split_properties(counts, frac, seed, data):
    labels = np.concatenate([np.full(c, k) for k, c in enumerate(counts)])
    labels = data.draw(st.permutations(labels.tolist()))
    labels = np.array(labels, dtype=np.int64)
    train, val = stratified_split(labels, frac, seed)
    # a partition of all indices
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(labels.size))
    # per class: the rounded fraction, at least one on each side
    for k, c in enumerate(counts):
        n_val = int((labels[val] == k).sum())
        assert 1 <= n_val <= c - 1
        assert n_val == min(max(1, round(frac * c)), c - 1)
    # deterministic
    train2, val2 = stratified_split(labels, frac, seed)
    assert np.array_equal(train, train2) and np.array_equal(val, val2)


def test_stratified_split_seed_changes_choice():
    labels = np.repeat(np.arange(3), 50)
    _, a = stratified_split(labels, 0.2, 0)
    _, b = stratified_split(labels, 0.2, 1)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("labels,frac,match", [
    (np.zeros(10, dtype=np.int64), 0.2, "at least 2 classes"),
    (np.array([0, 1, 1, 1]), 0.2, "class 0 has 1 sample"),
    (np.array([0, 0, 1, 1]), 1.5, "val_fraction"),
    (np.array([0, 0, 1, 1]), 0.0, "val_fraction"),
    (np.array([0.5, 1.0]), 0.2, "ints"),
])
def test_stratified_split_rejects(labels, frac, match):
    with pytest.raises(ValueError, match=match):
        stratified_split(labels, frac)


# ---------------------------------------------------------------- digits

def test_digits_shapes_split_and_normalization():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits as sk

    d = load_dataset("digits")
    raw = sk()
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    assert d.train_x.shape[0] + d.val_x.shape[0] == raw.images.shape[0] == 1797
    assert d.train_x.dtype == torch.float32 and d.train_y.dtype == torch.int64
    # stratified: each class is ~20 % in validation
    counts = np.bincount(raw.target, minlength=10)
    assert d.val_y.bincount(minlength=10).tolist() == [round(0.2 * c) for c in counts]
    # standardized with training statistics
    assert abs(float(d.train_x.mean())) < 1e-5 and abs(float(d.train_x.std()) - 1) < 1e-3
    # the same images as scikit-learn's, up to the affine normalization
    mean, std = d.info["normalization"]["mean"][0], d.info["normalization"]["std"][0]
    train_idx, _ = stratified_split(raw.target, 0.2, 0)
    expected = raw.images[train_idx] / 16.0
    np.testing.assert_allclose(d.train_x[:, 0].numpy() * std + mean, expected, atol=1e-5)
    assert np.array_equal(d.train_y.numpy(), raw.target[train_idx])


# ---------------------------------------------------------------- CIFAR-10 (fake files)

def _fake_cifar(rng, n):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    labels[:2] = [0, 1]
    return data, labels


def _write_python_batches(folder, rng, n=6):
    folder.mkdir(parents=True)
    truth = {}
    for name in TRAIN_BATCHES + [TEST_BATCH]:
        data, labels = _fake_cifar(rng, n)
        # the layout of the official files: a dict with bytes keys, pickled by Python 2 (protocol 2)
        obj = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
               b"filenames": [f"{i}.png".encode() for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
        truth[name] = (data, labels)
    return truth


def test_cifar10_python_version(tmp_path):
    truth = _write_python_batches(tmp_path / "cifar-10-batches-py", np.random.default_rng(0))
    images, labels = read_cifar10_python_batch(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    data, lab = truth["data_batch_3"]
    # channel-first planes: pixel (c, y, x) is byte c*1024 + y*32 + x
    assert images.shape == (6, 3, 32, 32)
    assert images[2, 1, 5, 7] == data[2, 1024 + 5 * 32 + 7]
    assert labels.tolist() == lab

    d = load_dataset("cifar10", str(tmp_path))
    assert d.input_shape == (3, 32, 32) and d.num_classes == 10
    assert d.train_x.shape[0] == 30 and d.val_x.shape[0] == 6
    assert d.train_y.tolist() == sum((truth[n][1] for n in TRAIN_BATCHES), [])
    # undo the normalization and compare with the bytes
    mean = torch.tensor(d.info["normalization"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(d.info["normalization"]["std"]).view(1, 3, 1, 1)
    back = ((d.val_x * std + mean) * 255).round().to(torch.uint8)
    assert torch.equal(back.reshape(6, -1), torch.from_numpy(truth[TEST_BATCH][0]))


def test_cifar10_binary_version(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    all_labels = []
    for name in TRAIN_BATCHES + [TEST_BATCH]:
        data, labels = _fake_cifar(rng, 4)
        records = np.concatenate([np.array(labels, dtype=np.uint8)[:, None], data], axis=1)
        (folder / f"{name}.bin").write_bytes(records.tobytes())
        all_labels.append((data, labels))
    images, labels = read_cifar10_binary_batch(folder / "test_batch.bin")
    assert labels.tolist() == all_labels[-1][1]
    assert np.array_equal(images.reshape(4, -1), all_labels[-1][0])
    d = load_dataset("cifar10", str(tmp_path))
    assert d.train_x.shape == (20, 3, 32, 32)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_cifar10_refuses_code_in_pickle(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Evil(), b"labels": [0]}, protocol=2))
    with pytest.raises(ValueError, match="refusing to load global"):
        read_cifar10_python_batch(path)


@pytest.mark.parametrize("payload,match", [
    (b"not a pickle at all", "not a valid CIFAR-10 python batch"),
    (pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, protocol=2), "expected uint8 data"),
    (pickle.dumps({b"labels": [0, 1]}, protocol=2), "needs 'data' and 'labels'"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}, protocol=2), "0..9"),
])
def test_cifar10_corrupt_python_batch(tmp_path, payload, match):
    path = tmp_path / "data_batch_1"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match=match):
        read_cifar10_python_batch(path)


def test_cifar10_corrupt_binary_batch(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"\x00" * 3000)
    with pytest.raises(ValueError, match="3073-byte"):
        read_cifar10_binary_batch(path)


def test_cifar10_missing_or_empty_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("cifar10", str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="holds no CIFAR-10 batches"):
        load_dataset("cifar10", str(tmp_path))
    with pytest.raises(ValueError, match="needs --data-dir"):
        load_dataset("cifar10")


# ---------------------------------------------------------------- image folders

def _write_images(root, per_class, rng, size=(10, 12)):
    PIL = pytest.importorskip("PIL.Image")
    pixels = {}
    for cls, n in per_class.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            PIL.fromarray(arr).save(root / cls / f"{i}.png")
            pixels[(cls, i)] = arr
    return pixels


def test_imagefolder_loads_classes_and_pixels(tmp_path):
    rng = np.random.default_rng(0)
    pixels = _write_images(tmp_path, {"cat": 5, "dog": 4, "emu": 3}, rng, size=(8, 8))
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "README").write_text("top-level file is ignored")
    d = load_dataset("imagefolder", str(tmp_path), image_size=8)
    assert d.classes == ["cat", "dog", "emu"]
    assert d.input_shape == (3, 8, 8)
    assert d.train_x.shape[0] + d.val_x.shape[0] == 12
    assert sorted(d.val_y.tolist()) == [0, 1, 2]  # one of each class: round(0.2*5)=1, 1, max(1, 1)=1
    # at the native size resizing is the identity: undo the normalization and find the exact pixels
    mean = torch.tensor(d.info["normalization"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(d.info["normalization"]["std"]).view(1, 3, 1, 1)
    back = ((torch.cat([d.train_x, d.val_x]) * std + mean) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    found = {bytes(b.numpy().tobytes()) for b in back}
    assert found == {arr.tobytes() for arr in pixels.values()}


def test_imagefolder_resizes(tmp_path):
    _write_images(tmp_path, {"a": 2, "b": 2}, np.random.default_rng(1), size=(20, 30))
    d = load_dataset("imagefolder", str(tmp_path), image_size=16)
    assert d.input_shape == (3, 16, 16)


def test_imagefolder_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("imagefolder", str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        load_dataset("imagefolder", str(empty))
    one = tmp_path / "one"
    _write_images(one, {"only": 3}, np.random.default_rng(2))
    with pytest.raises(ValueError, match="single class"):
        load_dataset("imagefolder", str(one))
    corrupt = tmp_path / "corrupt"
    _write_images(corrupt, {"a": 2, "b": 2}, np.random.default_rng(3))
    (corrupt / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match="broken.png"):
        load_dataset("imagefolder", str(corrupt))
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("imagefolder", str(corrupt), image_size=0)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="digits, cifar10, imagefolder"):
        load_dataset("mnist")
