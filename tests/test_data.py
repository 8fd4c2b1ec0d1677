"""Data loaders: digits, CIFAR-10 (fake files in both official formats), Fashion-MNIST (real and synthetic IDX
files), image folders, the split."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sepconv.data import (
    load_dataset, read_cifar10_binary_batch, read_cifar10_python_batch, stratified_split,
)
from sepconv.data.cifar10 import TEST_BATCH, TRAIN_BATCHES
from sepconv.data.fashion_mnist import DEBIAN_DIR, FILES, find_fashion_mnist, load_fashion_mnist, read_idx


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


def test_imagefolder_is_sized_before_decoding(tmp_path, monkeypatch):
    from sepconv.data.imagefolder import PEAK_BYTES_PER_VALUE, load_imagefolder

    _write_images(tmp_path, {"a": 3, "b": 3}, np.random.default_rng(4), size=(8, 8))
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # never reached when refused
    need = 7 * 3 * 16 * 16 * PEAK_BYTES_PER_VALUE
    with pytest.raises(ValueError, match=r"holds 7 images; at --image-size 16 .* use --image-size 15 or less") as info:
        load_imagefolder(tmp_path, image_size=16, max_bytes=need - 1)
    assert "broken.png" not in str(info.value)
    for bad in (0, -5, 1.5, "1e9", True):
        with pytest.raises(ValueError, match="max_bytes must be a positive int"):
            load_imagefolder(tmp_path, image_size=16, max_bytes=bad)
    monkeypatch.setenv("SEPCONV_MAX_BYTES", str(need - 1))  # the default limit: sepconv.utils.memory.memory_limit
    with pytest.raises(ValueError, match="this machine's memory; use --image-size 15 or less"):
        load_imagefolder(tmp_path, image_size=16)
    monkeypatch.delenv("SEPCONV_MAX_BYTES")
    with pytest.raises(ValueError, match="use fewer images"):
        load_imagefolder(tmp_path, image_size=16, max_bytes=7 * 3 * PEAK_BYTES_PER_VALUE - 1)
    with pytest.raises(ValueError, match="broken.png"):  # within the limit: decoding starts
        load_imagefolder(tmp_path, image_size=16, max_bytes=need)
    (tmp_path / "b" / "broken.png").unlink()
    d = load_imagefolder(tmp_path, image_size=16, max_bytes=6 * 3 * 16 * 16 * PEAK_BYTES_PER_VALUE)
    # the estimate covers what the loader returns (float32 train and val images)
    assert (d.train_x.numel() + d.val_x.numel()) * 4 <= 6 * 3 * 16 * 16 * PEAK_BYTES_PER_VALUE


def test_unknown_dataset():
    with pytest.raises(ValueError, match="digits, cifar10, fashion-mnist, imagefolder"):
        load_dataset("mnist")


def _png_header_only(path, width, height):
    """A PNG whose IHDR declares ``width`` x ``height`` pixels (enough for Pillow's size check on open)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_imagefolder_decompression_bomb_is_a_clear_error(tmp_path):
    _write_images(tmp_path, {"a": 2, "b": 2}, np.random.default_rng(4))
    _png_header_only(tmp_path / "b" / "bomb.png", 30_000, 30_000)  # 900 M pixels, > 2 x PIL's default limit
    with pytest.raises(ValueError, match=r"bomb\.png.*too large.*MAX_IMAGE_PIXELS"):
        load_dataset("imagefolder", str(tmp_path))


def test_imagefolder_image_between_pillow_limits_is_refused(tmp_path, monkeypatch):
    from PIL import Image

    _write_images(tmp_path, {"a": 2, "b": 2}, np.random.default_rng(5), size=(8, 8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # 64 pixels: Pillow only warns below twice the limit
    with pytest.raises(ValueError, match="too large"):
        load_dataset("imagefolder", str(tmp_path), image_size=8)


@pytest.mark.parametrize("name", ["imagefolder", "cifar10", "fashion-mnist"])
def test_too_long_path_component_is_a_clear_error(tmp_path, name):
    with pytest.raises(ValueError, match=r"--data-dir .* 300 bytes long, more than the file system allows"):
        load_dataset(name, str(tmp_path / ("x" * 300)))


# ---------------------------------------------------------------- Fashion-MNIST

def _idx_bytes(array, type_code=0x08):
    array = np.asarray(array)
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[type_code]
    header = struct.pack(">HBB", 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def _write_fashion(folder, n_train, n_test, rng, compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10  # every class present
        rng.shuffle(labels)
        arrays[split] = (images, labels)
        for name, array in zip(FILES[split], (images, labels)):
            data = _idx_bytes(array)
            if compress:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return arrays


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    type_code=st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]),
    compress=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_read_idx_round_trips_every_type(tmp_path_factory, shape, type_code, compress, seed):
    rng = np.random.default_rng(seed)
    low, high = {0x08: (0, 256), 0x09: (-128, 128)}.get(type_code, (-30000, 30000))
    array = rng.integers(low, high, size=shape)
    if type_code in (0x0D, 0x0E):
        array = array / 7.0
    data = _idx_bytes(array, type_code)
    path = tmp_path_factory.mktemp("idx") / "a.idx"
    path.write_bytes(gzip.compress(data) if compress else data)
    got = read_idx(path)
    assert got.shape == tuple(shape)
    expected = np.frombuffer(data[4 + 4 * len(shape):], dtype=got.dtype.newbyteorder(">")).reshape(shape)
    assert np.array_equal(got, expected)
    assert got.dtype.isnative


@settings(max_examples=8, deadline=None)
@given(n_train=st.integers(10, 40), n_test=st.integers(10, 25), compress=st.booleans(), seed=st.integers(0, 2**31))
def test_fashion_mnist_synthetic_files(tmp_path_factory, n_train, n_test, compress, seed):
    folder = tmp_path_factory.mktemp("fm")
    arrays = _write_fashion(folder, n_train, n_test, np.random.default_rng(seed), compress)
    d = load_dataset("fashion-mnist", str(folder))
    assert d.name == "fashion-mnist" and d.num_classes == 10 and d.classes[9] == "Ankle boot"
    assert d.train_x.shape == (n_train, 1, 28, 28) and d.val_x.shape == (n_test, 1, 28, 28)
    assert d.train_x.dtype == torch.float32 and d.train_y.dtype == torch.int64
    assert np.array_equal(d.train_y.numpy(), arrays["train"][1]) and np.array_equal(d.val_y.numpy(), arrays["test"][1])
    # standardized with the training split's statistics; undoing it gives back the exact bytes
    stats = d.info["normalization"]
    train = arrays["train"][0].astype(np.float64) / 255
    assert stats["mean"][0] == pytest.approx(train.mean(), rel=1e-4)
    assert stats["std"][0] == pytest.approx(train.std(ddof=1), rel=1e-3)
    back = ((d.val_x.squeeze(1).double() * stats["std"][0] + stats["mean"][0]) * 255).round().to(torch.uint8)
    assert np.array_equal(back.numpy(), arrays["test"][0])


def test_fashion_mnist_found_in_subfolder(tmp_path):
    _write_fashion(tmp_path / "fashion-mnist", 10, 10, np.random.default_rng(0))
    found = find_fashion_mnist(tmp_path)
    assert found["train"][0] == tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz"


def test_fashion_mnist_missing_files_say_how_to_get_them(tmp_path, monkeypatch):
    _write_fashion(tmp_path, 10, 10, np.random.default_rng(0))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist.*--data-dir"):
        load_dataset("fashion-mnist", str(tmp_path))
    monkeypatch.setattr("sepconv.data.fashion_mnist.DEBIAN_DIR", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no --data-dir given.*t10k-labels-idx1-ubyte"):
        load_fashion_mnist()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_fashion_mnist(tmp_path / "missing")


def _corrupt(folder, name, data):
    for stale in (folder / name, folder / f"{name}.gz"):
        if stale.exists():
            stale.unlink()
    (folder / name).write_bytes(data)


@pytest.mark.parametrize("case,match", [
    ("bad magic", "magic number 0x00000308 is not IDX"),
    ("nonzero prefix", "magic number 0x12340803 is not IDX"),
    ("empty", "shorter than the 4-byte magic number"),
    ("header cut", "truncated inside the header"),
    ("truncated", "truncated: shape"),
    ("too long", "longer than its header says"),
    ("zero dimension", "a dimension is 0"),
    ("huge declared size", "more than the .* accepted"),
    ("gzip garbage", "damaged gzip stream"),
    ("gzip cut", "damaged gzip stream"),
    ("label out of range", "label 10 at index 3 is out of range 0..9"),
    ("wrong image size", r"shape \(N, 28, 28\)"),
    ("count mismatch", "holds 9 labels but .* holds 10 images"),
    ("int labels", "unsigned-byte labels"),
])
def test_fashion_mnist_corrupt_files_are_clear_errors(tmp_path, case, match):
    arrays = _write_fashion(tmp_path, 10, 10, np.random.default_rng(1), compress=True)
    images, labels = arrays["test"]
    img_name, lab_name = FILES["test"]
    good = _idx_bytes(images)
    corrupt = {
        "bad magic": (img_name, struct.pack(">HBB", 0, 0x03, 8) + good[4:]),
        "nonzero prefix": (img_name, b"\x12\x34" + good[2:]),
        "empty": (img_name, b""),
        "header cut": (img_name, good[:10]),
        "truncated": (img_name, good[:-5]),
        "too long": (img_name, good + b"\0"),
        "zero dimension": (img_name, struct.pack(">HBBIII", 0, 8, 3, 0, 28, 28)),
        "huge declared size": (img_name, gzip.compress(struct.pack(">HBBIII", 0, 8, 3, 2**32 - 1, 2**16, 2**16))),
        "gzip garbage": (img_name, b"\x1f\x8b\x08\x00" + os.urandom(64)),
        "gzip cut": (img_name, gzip.compress(good)[:200]),
        "label out of range": (lab_name, _idx_bytes(np.array([0, 1, 2, 10, 4, 5, 6, 7, 8, 9]))),
        "wrong image size": (img_name, _idx_bytes(np.zeros((10, 28, 27), dtype=np.uint8))),
        "count mismatch": (lab_name, _idx_bytes(labels[:9])),
        "int labels": (lab_name, _idx_bytes(labels, 0x0C)),
    }[case]
    _corrupt(tmp_path, *corrupt)
    with pytest.raises(ValueError, match=match):
        load_dataset("fashion-mnist", str(tmp_path))


def test_read_idx_bounds_its_memory(tmp_path):
    # a small file declaring a large payload is refused by the header check, before anything is read
    path = tmp_path / "big.idx"
    path.write_bytes(struct.pack(">HBBI", 0, 8, 1, 1000) + b"\0" * 1000)
    assert read_idx(path).shape == (1000,)
    with pytest.raises(ValueError, match="max_bytes"):
        read_idx(path, max_bytes=999)
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "absent.idx")


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason=f"Fashion-MNIST not installed in {DEBIAN_DIR} "
                    "(apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_real_files():
    d = load_dataset("fashion-mnist")
    assert d.train_x.shape == (60_000, 1, 28, 28) and d.val_x.shape == (10_000, 1, 28, 28)
    # the official release is balanced: 6000 training and 1000 test images per class
    assert torch.bincount(d.train_y).tolist() == [6000] * 10
    assert torch.bincount(d.val_y).tolist() == [1000] * 10
    assert float(d.train_x.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(d.train_x.std()) == pytest.approx(1.0, abs=1e-3)
    # the published pixel statistics of the training set (scaled to [0, 1])
    assert d.info["normalization"]["mean"][0] == pytest.approx(0.2860, abs=1e-4)
    assert d.info["normalization"]["std"][0] == pytest.approx(0.3530, abs=1e-4)


def test_compare_runs_on_fashion_mnist_files(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="compare's report needs matplotlib")
    from sepconv.cli import main

    _write_fashion(tmp_path / "fm", 40, 20, np.random.default_rng(3), compress=False)
    out = tmp_path / "run"
    rc = main(["compare", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "fm"), "--variants",
               "standard,separable", "--width", "0.25", "--epochs", "1", "--threads", "1", "--quiet",
               "--latency-time", "0.02", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    data = json.loads((out / "results.json").read_text())["data"]
    assert data["name"] == "fashion-mnist" and data["input_shape"] == [1, 28, 28]
    assert (data["train_size"], data["val_size"]) == (40, 20)
    # missing files: one line saying how to get them, exit status 2
    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    rc = main(["compare", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "empty"), "--out",
               str(tmp_path / "run2")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("sepconv compare: error: Fashion-MNIST not found") and "\n" not in err
    assert "apt-get install dataset-fashion-mnist" in err
