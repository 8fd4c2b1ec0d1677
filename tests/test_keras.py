"""Keras import (sepconv.interop): outputs against Keras itself, hostile files, the CLI.

Keras 3 is the oracle (a test extra, run on its torch backend); the import
code under test reads the files with zipfile/json/h5py only.
"""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras", reason="Keras 3 is the test oracle: pip install 'sepconv[test]'")
h5py = pytest.importorskip("h5py", reason="the Keras importer reads HDF5 weights: pip install 'sepconv[keras]'")
pytest.importorskip("safetensors", reason="imported models are saved as safetensors: pip install 'sepconv[keras]'")

import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sepconv.interop import SUPPORTED_LAYERS, from_keras, load_imported  # noqa: E402
from sepconv.layers import DepthwiseConv2d, SeparableConv2d  # noqa: E402

L = keras.layers
RTOL = 1e-5  # the goal: float32 outputs within 1e-5 relative to Keras


# ----------------------------------------------------------------------------- helpers


def randomize(model: "keras.Model", seed: int) -> None:
    """Give every weight a random value (Keras initializes biases and BN statistics to constants)."""
    rng = np.random.default_rng(seed)
    values = []
    for w in model.weights:
        shape, path = tuple(w.shape), w.path
        if path.endswith(("moving_variance", "gamma")):
            values.append(rng.uniform(0.5, 1.5, shape))
        elif path.endswith(("bias", "beta", "moving_mean")):
            values.append(rng.normal(0.0, 0.2, shape))
        else:  # kernels: unit variance per output, like Glorot
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            if "depthwise" in path:  # (*k, C, M): each output reads one channel
                fan_in = int(np.prod(shape[:-2]))
            values.append(rng.normal(0.0, 1.0 / np.sqrt(max(fan_in, 1)), shape))
    model.set_weights([v.astype(np.float32) for v in values])


def keras_output(model: "keras.Model", x: np.ndarray) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)), dtype=np.float32)


def torch_output(model: torch.nn.Module, x: np.ndarray, channels_last: bool) -> np.ndarray:
    xt = torch.from_numpy(x)
    if not channels_last and xt.dim() >= 3:
        xt = xt.movedim(-1, 1)
    with torch.no_grad():
        out = model(xt)
    if not channels_last and out.dim() >= 3:
        out = out.movedim(1, -1)
    return out.numpy()


def assert_close(out: np.ndarray, ref: np.ndarray) -> None:
    assert out.shape == ref.shape
    scale = float(np.abs(ref).max()) or 1.0
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=RTOL * scale)


def check_import(model: "keras.Model", tmp_path, x: np.ndarray, *, channels_last: bool = False,
                 formats=(".keras", ".h5")) -> None:
    ref = keras_output(model, x)
    for ext in formats:
        path = tmp_path / f"model{ext}"
        model.save(path)
        imported = from_keras(path, channels_last=channels_last)
        assert not imported.training
        assert_close(torch_output(imported, x, channels_last), ref)


pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]


# ----------------------------------------------------------------------------- random models


def build(spec):
    """A Keras Sequential model from ``[(layer class name, args, kwargs), ...]`` (the first entry: the input shape)."""
    shape, *layers = spec
    return keras.Sequential([keras.Input(shape)] + [getattr(L, cls)(*args, **kwargs) for cls, args, kwargs in layers])


@st.composite
def conv_layer(draw, size: int, ndim: int):
    """A random convolution-like layer spec that fits an input of spatial ``size`` (square), and its output size."""
    kind = draw(st.sampled_from(["Conv", "DepthwiseConv", "SeparableConv"]))
    k = draw(st.integers(1, 4))
    stride = draw(st.integers(1, 3))
    dilation = 1 if stride > 1 else draw(st.integers(1, 2))
    padding = draw(st.sampled_from(["same", "valid"]))
    extent = (k - 1) * dilation + 1
    if padding == "valid" and extent > size:
        padding = "same"
    kw = dict(strides=stride, padding=padding, dilation_rate=dilation, use_bias=draw(st.booleans()),
              activation=draw(st.sampled_from([None, "relu", "relu6", "swish", "sigmoid", "hard_swish"])))
    if kind != "Conv":
        kw["depth_multiplier"] = draw(st.integers(1, 3))
    args = (k,) if kind == "DepthwiseConv" else (draw(st.integers(1, 5)), k)
    out = -(-size // stride) if padding == "same" else (size - extent) // stride + 1
    return (f"{kind}{ndim}D", args, kw), out


@st.composite
def sequential_model(draw):
    ndim = draw(st.sampled_from([1, 2, 2]))
    size = draw(st.integers(3, 11))
    spec = [(size,) * ndim + (draw(st.integers(1, 4)),)]
    for _ in range(draw(st.integers(1, 3))):
        layer, size = draw(conv_layer(size, ndim))
        spec.append(layer)
        extra = draw(st.sampled_from(["none", "bn", "relu", "pool", "pad", "act"]))
        if extra == "bn":
            spec.append(("BatchNormalization", (), dict(epsilon=draw(st.sampled_from([1e-3, 1e-5])),
                                                        momentum=draw(st.sampled_from([0.99, 0.9])))))
        elif extra == "relu":
            spec.append(("ReLU", (), dict(max_value=draw(st.sampled_from([None, 6.0])))))
        elif extra == "act":
            spec.append(("Activation", (draw(st.sampled_from(["relu", "tanh", "gelu", "elu", "hard_sigmoid"])),), {}))
        elif extra == "pool" and size >= 2:
            kind = draw(st.sampled_from(["Max", "Average"]))
            pool = draw(st.integers(1, min(3, size)))
            strides = draw(st.integers(1, 2))
            # Keras' torch backend replicates edges for asymmetric 'same' average pooling; TF and sepconv
            # leave the padding out of the mean, so only 'valid' average pooling is compared with it here
            padding = "valid" if kind == "Average" else draw(st.sampled_from(["valid", "same"]))
            spec.append((f"{kind}Pooling{ndim}D", (pool,), dict(strides=strides, padding=padding)))
            size = -(-size // strides) if padding == "same" else (size - pool) // strides + 1
        elif extra == "pad":
            pad = draw(st.integers(0, 2))
            spec.append((f"ZeroPadding{ndim}D", ((pad, 1) if ndim == 1 else ((pad, 1), (1, pad)),), {}))
            size += pad + 1
    head = draw(st.sampled_from(["none", "flatten", "gap", "reshape"]))
    if head == "flatten":
        spec += [("Flatten", (), {}), ("Dropout", (0.3,), {}), ("Dense", (draw(st.integers(1, 6)),), {})]
    elif head == "gap":
        spec += [("GlobalAveragePooling1D" if ndim == 1 else "GlobalMaxPooling2D", (), {}),
                 ("Dense", (draw(st.integers(1, 6)),), dict(activation="softmax"))]
    elif head == "reshape":
        spec += [("Reshape", ((-1,),), {}), ("Dense", (3,), {})]
    return spec


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(spec=sequential_model(), seed=st.integers(0, 2**16), channels_last=st.booleans())
def test_random_sequential_models_match_keras(spec, seed, channels_last, tmp_path):
    model = build(spec)
    randomize(model, seed)
    shape = tuple(model.inputs[0].shape[1:])
    x = np.random.default_rng(seed).standard_normal((2, *shape)).astype(np.float32)
    check_import(model, tmp_path, x, channels_last=channels_last)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(merge=st.sampled_from(["add", "concat", "multiply", "subtract", "average", "maximum"]),
       stride=st.integers(1, 2), mult=st.integers(1, 2), size=st.integers(4, 9), seed=st.integers(0, 2**16))
def test_random_functional_graphs_match_keras(merge, stride, mult, size, seed, tmp_path):
    """Two branches (separable vs depthwise + pointwise) merged, a residual, a shared layer."""
    inp = keras.Input((size, size, 3))
    a = L.SeparableConv2D(6, 3, strides=stride, padding="same", depth_multiplier=mult)(inp)
    b = L.DepthwiseConv2D(3, strides=stride, padding="same", depth_multiplier=2)(inp)
    b = L.Conv2D(6, 1, activation="relu")(b)
    op = {"add": L.Add(), "concat": L.Concatenate(), "multiply": L.Multiply(), "subtract": L.Subtract(),
          "average": L.Average(), "maximum": L.Maximum()}[merge]
    y = op([a, b])
    y = L.BatchNormalization()(y)
    shared = L.Conv2D(y.shape[-1], 1, padding="same")
    y = L.Add()([y, shared(y)])  # residual
    y = shared(L.ReLU()(y))  # the shared layer called a second time
    out = L.Dense(4)(L.Flatten()(y))
    model = keras.Model(inp, [out, y])
    randomize(model, seed)
    x = np.random.default_rng(seed).standard_normal((2, size, size, 3)).astype(np.float32)
    refs = [np.asarray(keras.ops.convert_to_numpy(r)) for r in model(x, training=False)]
    for ext in (".keras", ".h5"):
        model.save(tmp_path / f"m{ext}")
        imported = from_keras(tmp_path / f"m{ext}")
        with torch.no_grad():
            outs = imported(torch.from_numpy(x).movedim(-1, 1))
        assert_close(outs[0].numpy(), refs[0])
        assert_close(outs[1].movedim(1, -1).numpy(), refs[1])


def test_several_inputs_and_outputs(tmp_path):
    img, vec = keras.Input((8, 8, 3), name="img"), keras.Input((5,), name="vec")
    feat = L.SeparableConv2D(4, 3, strides=2, padding="same", activation="relu6")(img)
    joined = L.Concatenate()([L.GlobalAveragePooling2D()(feat), L.Dense(4, activation="tanh")(vec)])
    model = keras.Model([img, vec], [L.Dense(3)(joined), feat])
    randomize(model, 10)
    rng = np.random.default_rng(10)
    x_img, x_vec = rng.standard_normal((2, 8, 8, 3)).astype(np.float32), rng.standard_normal((2, 5)).astype(np.float32)
    refs = [np.asarray(keras.ops.convert_to_numpy(r)) for r in model([x_img, x_vec])]
    model.save(tmp_path / "m.keras")
    imported = from_keras(tmp_path / "m.keras", channels_last=True)
    with torch.no_grad():
        outs = imported(torch.from_numpy(x_img), torch.from_numpy(x_vec))
    for out, ref in zip(outs, refs):
        assert_close(out.numpy(), ref)
    with pytest.raises(ValueError, match="takes 2 input tensor"):
        imported(torch.from_numpy(x_img))


def test_same_padding_follows_the_input_size(tmp_path):
    """Free spatial dimensions: TF 'same' at stride 2 pads by the actual input size (odd and even)."""
    inp = keras.Input((None, None, 2))
    y = L.SeparableConv2D(3, 4, strides=2, padding="same", depth_multiplier=2)(inp)
    y = L.DepthwiseConv2D(3, strides=2, padding="same")(y)
    model = keras.Model(inp, L.GlobalAveragePooling2D(keepdims=True)(y))
    randomize(model, 1)
    model.save(tmp_path / "m.keras")
    imported = from_keras(tmp_path / "m.keras")
    for h, w in ((7, 8), (10, 5), (1, 1)):
        x = np.random.default_rng(h).standard_normal((1, h, w, 2)).astype(np.float32)
        assert_close(torch_output(imported, x, False), keras_output(model, x))


def test_layers_are_sepconv_layers_with_keras_semantics(tmp_path):
    inp = keras.Input((9, 9, 4))
    y = L.SeparableConv2D(5, 3, strides=2, padding="same", depth_multiplier=3)(inp)
    y = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(y)
    y = L.BatchNormalization(momentum=0.9, epsilon=1e-5)(y)
    model = keras.Model(inp, y)
    model.save(tmp_path / "m.keras")
    imported = from_keras(tmp_path / "m.keras")
    mods = dict(imported.named_modules())
    sep = [m for m in mods.values() if isinstance(m, SeparableConv2d)]
    dw = [m for m in mods.values() if isinstance(m, DepthwiseConv2d)]
    bn = [m for m in mods.values() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(sep) == 1 and sep[0].depth_multiplier == 3 and sep[0].spec.padding == "same"
    assert sep[0].depthwise.bias is None and sep[0].pointwise.bias is not None  # Keras' single bias
    assert len(dw) == 1 and dw[0].weight.shape == (10, 1, 3, 3)
    # Keras: moving = 0.9 * moving + 0.1 * batch; torch's momentum is the weight of the batch
    assert len(bn) == 1 and bn[0].momentum == pytest.approx(0.1) and bn[0].eps == pytest.approx(1e-5)


def test_depthwise_channel_order_is_c_times_m_plus_m(tmp_path):
    """Output channel c*M + m of Keras' DepthwiseConv2D is input channel c filtered by its m-th kernel."""
    model = keras.Sequential([keras.Input((5, 5, 2)), L.DepthwiseConv2D(1, depth_multiplier=3, use_bias=False)])
    kernel = np.arange(1, 7, dtype=np.float32).reshape(1, 1, 2, 3)
    model.set_weights([kernel])
    model.save(tmp_path / "m.keras")
    conv = next(m for m in from_keras(tmp_path / "m.keras").modules() if isinstance(m, DepthwiseConv2d))
    assert conv.weight.flatten().tolist() == [1, 2, 3, 4, 5, 6]


def test_flatten_before_dense_permutes_the_rows(tmp_path):
    """Flatten feeding Dense becomes nn.Flatten with the Dense rows permuted; a Flatten output keeps Keras order."""
    inp = keras.Input((3, 4, 5))
    flat = L.Flatten()(L.Conv2D(2, 1)(inp))
    model = keras.Model(inp, [L.Dense(3)(flat), L.Flatten()(inp)])
    randomize(model, 3)
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 5)).astype(np.float32)
    refs = [keras.ops.convert_to_numpy(r) for r in model(x)]
    model.save(tmp_path / "m.keras")
    imported = from_keras(tmp_path / "m.keras")
    assert any(type(m) is torch.nn.Flatten for m in imported.modules())
    with torch.no_grad():
        outs = imported(torch.from_numpy(x).movedim(-1, 1))
    for out, ref in zip(outs, refs):
        assert_close(out.numpy(), np.asarray(ref))


def test_flatten_into_a_shared_dense_keeps_keras_order(tmp_path):
    """A Dense also called on another input cannot have its rows permuted: the Flatten permutes instead."""
    img, vec = keras.Input((2, 3, 4)), keras.Input((24,))
    dense = L.Dense(5)
    model = keras.Model([img, vec], [dense(L.Flatten()(img)), dense(vec)])
    randomize(model, 11)
    rng = np.random.default_rng(11)
    xs = [rng.standard_normal((2, 2, 3, 4)).astype(np.float32), rng.standard_normal((2, 24)).astype(np.float32)]
    refs = [np.asarray(keras.ops.convert_to_numpy(r)) for r in model(xs)]
    model.save(tmp_path / "m.keras")
    with torch.no_grad():
        outs = from_keras(tmp_path / "m.keras", channels_last=True)(*map(torch.from_numpy, xs))
    for out, ref in zip(outs, refs):
        assert_close(out.numpy(), ref)


def test_3d_and_grouped_convolutions(tmp_path):
    model = keras.Sequential([keras.Input((5, 6, 7, 4)), L.Conv3D(6, (2, 3, 3), strides=2, padding="same", groups=2),
                              L.BatchNormalization(), L.MaxPooling3D(2, padding="same"), L.ZeroPadding3D(1),
                              L.GlobalAveragePooling3D(keepdims=True), L.Flatten(), L.Dense(2)])
    randomize(model, 12)
    x = np.random.default_rng(12).standard_normal((2, 5, 6, 7, 4)).astype(np.float32)
    check_import(model, tmp_path, x)


def test_rescaling_cropping_upsampling_and_1d(tmp_path):
    inp = keras.Input((10, 10, 3))
    y = L.Rescaling(1 / 127.5, offset=-1)(inp)
    y = L.Cropping2D(((1, 2), (0, 1)))(y)
    y = L.UpSampling2D(2)(y)
    y = L.AveragePooling2D(2)(y)
    y = L.Reshape((-1, 3))(y)  # (N, L, C) -> a 1D tail
    y = L.Conv1D(4, 3, padding="causal", dilation_rate=2)(y)
    y = L.SeparableConv1D(2, 3, strides=2, padding="same")(y)
    y = L.Softmax()(L.Dense(5)(y))
    model = keras.Model(inp, y)
    randomize(model, 4)
    x = np.random.default_rng(4).uniform(0, 255, (2, 10, 10, 3)).astype(np.float32)
    check_import(model, tmp_path, x)


def seed_network():
    """The seed article's VGG-block network with Keras' SeparableConv2D (as reconstructed in docs/models.md)."""
    inputs = keras.Input((32, 32, 3))
    x = inputs
    for filters in (64, 128, 256):
        x = L.SeparableConv2D(filters, 3, padding="same", activation="relu")(x)
        x = L.SeparableConv2D(filters, 3, padding="same", activation="relu")(x)
        x = L.MaxPooling2D(2)(x)
    return keras.Model(inputs, L.Dense(10)(L.Flatten()(x)))


def test_seed_network_matches_keras_and_the_zoo(tmp_path):
    """The imported seed network computes what Keras computes, with the zoo's parameter count and MACs."""
    import sepconv
    from sepconv.models import build_model

    model = seed_network()
    randomize(model, 7)
    x = np.random.default_rng(7).standard_normal((2, 32, 32, 3)).astype(np.float32)
    check_import(model, tmp_path, x, formats=(".keras",))
    imported = from_keras(tmp_path / "model.keras")
    zoo = build_model("vgg_blocks", "separable")
    count = sum(p.numel() for p in imported.parameters())
    assert count == sum(p.numel() for p in zoo.parameters()) == 174_821
    assert sepconv.profile(imported, (3, 32, 32)).total_macs == sepconv.profile(zoo, (3, 32, 32)).total_macs


def test_docs_examples_run_and_print_what_they_claim(tmp_path, monkeypatch):
    """docs/keras.md: its Python blocks run in order (one namespace) and print what their comments say."""
    import contextlib
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "keras.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, "docs/keras.md", "exec"), namespace)
        claims = [m.group(1).strip() for m in re.finditer(r"^print\(.*\)\s+# (.+)$", block, flags=re.M)]
        assert out.getvalue().strip().split("\n") == claims


def test_same_average_pooling_leaves_the_padding_out():
    """Against a direct NumPy loop: TF's 'same' average pooling divides by the in-bounds count."""
    from sepconv.interop.modules import KerasPool

    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 2, 6, 5)).astype(np.float32)
    out = KerasPool("avg", (3, 2), (2, 2), "same")(torch.from_numpy(x)).numpy()
    ref = np.zeros((1, 2, 3, 3), np.float32)
    for i in range(3):  # 'same' pads (0, 1) along H ((3-1)*2+3-6 = 1) and along W ((3-1)*2+2-5 = 1)
        for j in range(3):
            ref[0, :, i, j] = x[0, :, 2 * i:2 * i + 3, 2 * j:2 * j + 2].mean(axis=(1, 2))
    np.testing.assert_allclose(out, ref, rtol=1e-6)


# ----------------------------------------------------------------------------- Keras Applications


APPLICATIONS = {
    "MobileNet": lambda: keras.applications.MobileNet(input_shape=(32, 32, 3), alpha=0.25, weights=None, classes=7,
                                                      classifier_activation=None),
    "MobileNetV2": lambda: keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None,
                                                          classes=7, classifier_activation=None),
    "Xception": lambda: keras.applications.Xception(input_shape=(71, 71, 3), weights=None, classes=7,
                                                    classifier_activation=None),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_keras_applications_match_keras(name, tmp_path):
    keras.utils.set_random_seed(0)
    model = APPLICATIONS[name]()
    randomize(model, 0)
    shape = tuple(model.inputs[0].shape[1:])
    x = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
    check_import(model, tmp_path, x)
    import sepconv

    imported = from_keras(tmp_path / "model.keras")
    batchnorms = count_batchnorms(imported)
    assert batchnorms == sum(type(layer).__name__ == "BatchNormalization" for layer in model.layers)
    assert sepconv.fold_batchnorm(imported) == batchnorms  # every BN sits right after its convolution
    assert count_batchnorms(imported) == 0
    assert_close(torch_output(imported, x, False), keras_output(model, x))


def test_in_memory_model_reload_and_cli(tmp_path, capsys):
    from sepconv.cli import main

    model = keras.Sequential([keras.Input((8, 8, 3)), L.SeparableConv2D(4, 3, strides=2, padding="same"),
                              L.BatchNormalization(), L.ReLU(6.0), L.GlobalAveragePooling2D(), L.Dense(2)])
    randomize(model, 5)
    x = np.random.default_rng(5).standard_normal((2, 8, 8, 3)).astype(np.float32)
    ref = keras_output(model, x)
    assert_close(torch_output(from_keras(model), x, False), ref)  # an in-memory model
    model.save(tmp_path / "m.keras")
    out = tmp_path / "sub" / "m.safetensors"
    assert main(["import-keras", str(tmp_path / "m.keras"), str(out), "--channels-last"]) == 0
    assert "wrote" in capsys.readouterr().out
    reloaded = load_imported(out)
    assert reloaded.channels_last
    assert_close(torch_output(reloaded, x, True), ref)
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_imported_file_goes_through_profile_convert_and_optimize_from_the_cli(tmp_path, capsys):
    import safetensors.torch

    from sepconv.cli import main

    model = keras.Sequential([keras.Input((12, 12, 3)), L.Conv2D(8, 3, padding="same"), L.BatchNormalization(),
                              L.ReLU(), L.Conv2D(8, 3, padding="same"), L.GlobalAveragePooling2D(), L.Dense(4)])
    randomize(model, 3)
    model.save(tmp_path / "m.keras")
    imported = tmp_path / "m.safetensors"
    assert main(["import-keras", str(tmp_path / "m.keras"), str(imported)]) == 0
    capsys.readouterr()
    # the input size comes from the Keras config; MACs as counted by hand
    assert main(["profile", str(imported), "--format", "json"]) == 0
    macs = json.loads(capsys.readouterr().out)["total_macs"]
    assert macs == 12 * 12 * 8 * 27 + 12 * 12 * 8 * 72 + 8 * 4
    converted = tmp_path / "converted.safetensors"
    assert main(["convert", str(imported), str(converted)]) == 0
    state = safetensors.torch.load_file(str(converted))
    assert any("depthwise" in key for key in state)  # the second 3x3 conv became separable
    capsys.readouterr()
    assert main(["profile", str(imported), "--weights", str(converted), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_macs"] < macs
    assert main(["optimize", str(imported), "--weights", str(converted)]) == 0
    assert main(["profile", str(imported), "--variant", "separable"]) == 2
    assert "does not apply to an imported Keras model" in capsys.readouterr().err


def test_imported_models_work_with_profile_and_convert(tmp_path):
    import sepconv

    model = keras.Sequential([keras.Input((12, 12, 3)), L.Conv2D(8, 3, padding="same"), L.ReLU(),
                              L.SeparableConv2D(8, 3, strides=2, padding="same"), L.GlobalAveragePooling2D()])
    model.save(tmp_path / "m.keras")
    imported = from_keras(tmp_path / "m.keras")
    prof = sepconv.profile(imported, (3, 12, 12))
    # 3x3 conv 3->8 at 12x12, then depthwise 3x3 on 8 channels and pointwise 8->8 at 6x6
    assert prof.total_macs == 12 * 12 * 8 * 27 + 6 * 6 * 8 * 9 + 6 * 6 * 8 * 8
    converted, report = sepconv.convert(imported)
    assert any(isinstance(m, SeparableConv2d) for m in converted.modules())
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        assert converted(x).shape == imported(x).shape == (1, 8)


def mobilenet_like():
    """A small MobileNet-style Functional model: conv/depthwise/separable steps each followed by BN (+ ReLU/ReLU6)."""
    inp = keras.Input((16, 16, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inp)
    x = L.ReLU(6.0)(L.BatchNormalization()(x))
    x = L.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = L.ReLU(6.0)(L.BatchNormalization()(x))
    x = L.Conv2D(16, 1, use_bias=False)(x)
    x = L.Activation("relu")(L.BatchNormalization()(x))
    y = L.SeparableConv2D(16, 3, padding="same")(x)
    x = L.Add()([x, L.BatchNormalization()(y)])
    x = L.ZeroPadding2D(((0, 1), (0, 1)))(x)  # Keras MobileNet's stride-2 step
    x = L.DepthwiseConv2D(3, strides=2, depth_multiplier=2)(x)
    x = L.ReLU()(L.BatchNormalization(epsilon=1e-5)(x))
    x = L.Conv1D(4, 3, padding="causal")(L.Reshape((16, 32))(x))  # a 1D conv + BN, no activation after
    x = L.BatchNormalization()(x)
    model = keras.Model(inp, L.Dense(5)(L.Flatten()(x)))
    randomize(model, 11)
    return model


def count_batchnorms(model: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.fixture(scope="module")
def mobilenet_import(tmp_path_factory):
    """(Keras model, imported model, NHWC inputs, Keras' outputs on them)."""
    model = mobilenet_like()
    path = tmp_path_factory.mktemp("mobilenet") / "m.keras"
    model.save(path)
    x = np.random.default_rng(11).standard_normal((64, 16, 16, 3)).astype(np.float32)
    return model, from_keras(path), x, keras_output(model, x)


def test_conv_batchnorm_activation_become_one_node(mobilenet_import, tmp_path):
    model, imported, x, ref = mobilenet_import
    assert_close(torch_output(imported, x, False), ref)
    assert count_batchnorms(imported) == 6
    for module in imported.layers.values():  # each BN sits right after its convolution, inside one node
        assert not isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
    sep = next(m for m in imported.modules() if isinstance(m, SeparableConv2d))
    assert isinstance(sep.pw_norm, torch.nn.BatchNorm2d)  # after the pointwise step and its bias, as in Keras
    model.save(tmp_path / "m.h5")
    assert_close(torch_output(from_keras(tmp_path / "m.h5"), x, False), ref)
    from sepconv.interop import save_imported

    save_imported(tmp_path / "m.safetensors", imported)
    reloaded = load_imported(tmp_path / "m.safetensors")
    assert list(reloaded.state_dict()) == list(imported.state_dict())
    assert_close(torch_output(reloaded, x, False), ref)


def test_fold_batchnorm_folds_every_imported_batchnorm(mobilenet_import):
    import copy

    import sepconv

    _, imported, x, ref = mobilenet_import
    folded = copy.deepcopy(imported)
    assert sepconv.fold_batchnorm(folded) == count_batchnorms(imported) == 6
    assert count_batchnorms(folded) == 0
    assert_close(torch_output(folded, x, False), ref)


def test_chains_with_fused_activations_group_and_fold_where_keras_order_allows(tmp_path):
    """A BN after a fused activation cannot fold; the rest of the chain still groups and folds."""
    import sepconv

    model = build([(10, 10, 3), ("Conv2D", (6, 3), dict(strides=2, padding="same")), ("BatchNormalization", (), {}),
                   ("ReLU", (), {}), ("SeparableConv2D", (8, 3), dict(padding="same", activation="relu")),
                   ("DepthwiseConv2D", (3,), dict(strides=2, padding="same", activation="relu")),
                   ("BatchNormalization", (), {}), ("Conv2D", (4, 1), {}), ("BatchNormalization", (), {}),
                   ("Activation", ("swish",), {})])
    randomize(model, 13)
    x = np.random.default_rng(13).standard_normal((3, 10, 10, 3)).astype(np.float32)
    check_import(model, tmp_path, x)
    imported = from_keras(tmp_path / "model.h5")
    assert [type(m).__name__ for m in imported.layers.values()] == ["Sequential", "BatchNorm2d", "Sequential"]
    sep = next(m for m in imported.modules() if isinstance(m, SeparableConv2d))
    assert isinstance(sep.pw_act, torch.nn.ReLU)
    assert sepconv.fold_batchnorm(imported) == 2 and count_batchnorms(imported) == 1
    assert_close(torch_output(imported, x, False), keras_output(model, x))


def test_a_conv_output_read_elsewhere_keeps_its_batchnorm_apart(tmp_path):
    """Folding would change the conv output the Add also reads: that BN stays its own node, unfolded."""
    import sepconv

    inp = keras.Input((8, 8, 2))
    z = L.Conv2D(4, 3, padding="same")(inp)
    out = L.Add()([z, L.ReLU()(L.BatchNormalization()(z))])
    model = keras.Model(inp, out)
    randomize(model, 12)
    x = np.random.default_rng(12).standard_normal((2, 8, 8, 2)).astype(np.float32)
    model.save(tmp_path / "m.keras")
    imported = from_keras(tmp_path / "m.keras")
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in imported.layers.values()) == 1
    assert sepconv.fold_batchnorm(imported) == 0
    assert_close(torch_output(imported, x, False), keras_output(model, x))


def test_imported_model_optimizes_and_profiles(mobilenet_import):
    import sepconv
    from torch.utils.flop_counter import FlopCounterMode

    _, imported, x, ref = mobilenet_import
    sample = torch.from_numpy(x[:8]).movedim(-1, 1)
    fast = sepconv.optimize(imported, sample, rounds=1)
    with torch.no_grad():
        out = fast(torch.from_numpy(x).movedim(-1, 1))
    assert_close(out.numpy(), ref)
    assert count_batchnorms(imported) == 6  # optimize works on a copy
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        imported(torch.zeros(1, 3, 16, 16))
    assert sepconv.profile(imported, (3, 16, 16)).total_macs * 2 == counter.get_total_flops()


def test_profile_counts_a_depthwise_with_asymmetric_same_padding(tmp_path):
    import sepconv
    from torch.utils.flop_counter import FlopCounterMode

    model = keras.Sequential([keras.Input((8, 8, 4)), L.DepthwiseConv2D(3, strides=2, padding="same")])
    model.save(tmp_path / "m.keras")
    imported = from_keras(tmp_path / "m.keras")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        imported(torch.zeros(1, 4, 8, 8))
    assert sepconv.profile(imported, (4, 8, 8)).total_macs * 2 == counter.get_total_flops() == 2 * 4 * 4 * 4 * 9


def test_imported_model_quantizes_to_int8(mobilenet_import):
    pytest.importorskip("onnx", reason="sepconv.quantize exports to ONNX: pip install 'sepconv[onnx]'")
    pytest.importorskip("onnxruntime", reason="sepconv.quantize runs ONNX Runtime: pip install 'sepconv[onnx]'")
    import sepconv

    _, imported, x, ref = mobilenet_import
    nchw = torch.from_numpy(x).movedim(-1, 1)
    qmodel, report = sepconv.quantize(imported, nchw[:32])
    assert report.transforms["batchnorms_folded"] == 6
    assert report.transforms["pairs_equalized"] == 3  # conv -> depthwise -> 1x1 conv, and inside the separable
    with torch.no_grad():
        out = qmodel(nchw).numpy()
    agree = float((out.argmax(1) == ref.argmax(1)).mean())
    assert agree >= 0.9, agree


# ----------------------------------------------------------------------------- hostile and malformed files


def small_model():
    model = keras.Sequential([keras.Input((6, 6, 2)), L.Conv2D(3, 3, name="conv"), L.Flatten(), L.Dense(2, name="fc")])
    randomize(model, 6)
    return model


def rewrite_archive(src, dst, *, config=None, weights=None):
    """Copy a .keras archive, replacing config.json (a dict) and/or editing model.weights.h5 (a callable on the file)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json" and config is not None:
                data = json.dumps(config(json.loads(data))).encode()
            if item.filename == "model.weights.h5" and weights is not None:
                buf = io.BytesIO(data)
                with h5py.File(buf, "r+") as h5:
                    weights(h5)
                data = buf.getvalue()
            zout.writestr(item.filename, data)


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "ok.keras"
    small_model().save(path)
    return path


def layer_entry(cfg, name):
    return next(layer for layer in cfg["config"]["layers"] if layer["config"].get("name") == name)


def edit_layer(name, **changes):
    def edit(cfg):
        layer_entry(cfg, name).update(changes)
        return cfg
    return edit


def test_wrong_weight_shape_is_refused(saved, tmp_path):
    def wrong(h5):
        del h5["layers/dense/vars/0"]
        h5["layers/dense/vars/0"] = np.zeros((48, 3), np.float32)
    rewrite_archive(saved, tmp_path / "bad.keras", weights=wrong)
    with pytest.raises(ValueError, match=r"kernel of layer 'fc' \(Dense\) has shape \(48, 3\), expected \(48, 2\)"):
        from_keras(tmp_path / "bad.keras")


def test_missing_weight_is_refused(saved, tmp_path):
    rewrite_archive(saved, tmp_path / "bad.keras", weights=lambda h5: h5.__delitem__("layers/conv2d/vars/1"))
    with pytest.raises(ValueError, match=r"layer 'conv' \(Conv2D\) has 1 weight\(s\), expected 2"):
        from_keras(tmp_path / "bad.keras")
    rewrite_archive(saved, tmp_path / "bad2.keras", weights=lambda h5: h5.__delitem__("layers/dense"))
    with pytest.raises(ValueError, match=r"layer 'fc' \(Dense\) has no weights in the file"):
        from_keras(tmp_path / "bad2.keras")


def test_external_links_in_the_weights_are_refused(saved, tmp_path):
    def link(h5):
        del h5["layers/dense/vars/1"]
        h5["layers/dense/vars/1"] = h5py.ExternalLink("/etc/hostname", "/x")
    rewrite_archive(saved, tmp_path / "bad.keras", weights=link)
    with pytest.raises(ValueError, match="ExternalLink; only data stored in the file is read"):
        from_keras(tmp_path / "bad.keras")


@pytest.mark.parametrize("change, message", [
    (dict(class_name="FancyLayer"), r"unsupported layers: 'fc' \(FancyLayer\)"),
    (dict(class_name="Lambda"), r"'fc' is a Lambda layer"),
    (dict(class_name="MyDense", module="my_package.layers", registered_name="my_package>MyDense"),
     r"'fc' is a custom object \(class 'MyDense'\)"),
])
def test_unknown_lambda_and_custom_layers_are_refused(saved, tmp_path, change, message):
    rewrite_archive(saved, tmp_path / "bad.keras", config=edit_layer("fc", **change))
    with pytest.raises(ValueError, match=message):
        from_keras(tmp_path / "bad.keras")


def test_every_unsupported_layer_is_listed(saved, tmp_path):
    def edit(cfg):
        layer_entry(cfg, "conv")["class_name"] = "Conv2DTranspose"
        layer_entry(cfg, "fc")["class_name"] = "LSTM"
        return cfg
    rewrite_archive(saved, tmp_path / "bad.keras", config=edit)
    with pytest.raises(ValueError, match=r"'conv' \(Conv2DTranspose\); 'fc' \(LSTM\)") as info:
        from_keras(tmp_path / "bad.keras")
    assert "SeparableConv2D" in str(info.value)  # the supported list
    assert set(SUPPORTED_LAYERS) >= {"SeparableConv2D", "DepthwiseConv2D", "Conv2D", "Dense", "BatchNormalization"}


def test_custom_activation_and_custom_model_are_refused(saved, tmp_path):
    custom = {"module": "my_package", "class_name": "function", "config": "evil", "registered_name": "evil"}
    rewrite_archive(saved, tmp_path / "a.keras", config=edit_layer("fc", config={
        **layer_entry(json.loads(zipfile.ZipFile(saved).read("config.json")), "fc")["config"], "activation": custom}))
    with pytest.raises(ValueError, match="layer 'fc' uses a custom activation"):
        from_keras(tmp_path / "a.keras")

    def model_class(cfg):
        cfg.update(class_name="MyModel", module="my_package")
        return cfg
    rewrite_archive(saved, tmp_path / "b.keras", config=model_class)
    with pytest.raises(ValueError, match="the model class is 'MyModel'"):
        from_keras(tmp_path / "b.keras")


def test_config_asking_for_huge_or_malformed_layers_is_refused(saved, tmp_path):
    """A config is checked before anything is allocated: a 10^12-weight layer is refused, not built."""
    base = json.loads(zipfile.ZipFile(saved).read("config.json"))
    huge = {**layer_entry(base, "conv")["config"], "filters": 10**11}
    rewrite_archive(saved, tmp_path / "huge.keras", config=edit_layer("conv", config=huge))
    with pytest.raises(ValueError, match=r"layer 'conv' \(Conv2D\) brings the model's weights past"):
        from_keras(tmp_path / "huge.keras")
    bad = {**layer_entry(base, "conv")["config"], "kernel_size": {"a": 1}}
    rewrite_archive(saved, tmp_path / "bad.keras", config=edit_layer("conv", config=bad))
    with pytest.raises(ValueError, match="layer 'conv'"):
        from_keras(tmp_path / "bad.keras")
    rewrite_archive(saved, tmp_path / "bad2.keras", config=lambda cfg: {**cfg, "config": {**cfg["config"], "layers": 3}})
    with pytest.raises(ValueError, match="'layers' must be a list"):
        from_keras(tmp_path / "bad2.keras")


def test_zip_bomb_and_size_limits(saved, tmp_path):
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", zipfile.ZipFile(saved).read("config.json"))
        z.writestr("model.weights.h5", b"\0" * (16 * 2**20))
    with pytest.raises(ValueError, match="zip bomb"):
        from_keras(bomb)
    with pytest.raises(ValueError, match="over the limit of 1000"):
        from_keras(saved, max_bytes=1000)


@pytest.mark.parametrize("content, message", [
    (b"not a model", "neither a .keras archive"),
    (b"PK\x03\x04 truncated", "not a .keras archive"),
])
def test_malformed_files_are_refused(tmp_path, content, message):
    path = tmp_path / "m.keras"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        from_keras(path)


def test_malformed_config_is_refused(saved, tmp_path):
    with zipfile.ZipFile(tmp_path / "a.keras", "w") as z:
        z.writestr("config.json", "{" * 100000)
        z.writestr("model.weights.h5", zipfile.ZipFile(saved).read("model.weights.h5"))
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        from_keras(tmp_path / "a.keras")
    with zipfile.ZipFile(tmp_path / "b.keras", "w") as z:
        z.writestr("model.weights.h5", b"")
    with pytest.raises(ValueError, match="has no config.json"):
        from_keras(tmp_path / "b.keras")


def test_legacy_config_format(tmp_path):
    """A .h5 whose config lists inbound nodes the Keras 2 way, [[[layer, node, tensor, kwargs], ...]]."""
    inp = keras.Input((6, 6, 2))
    a = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(inp)
    y = L.Concatenate()([a, L.Conv2D(3, 1)(inp)])
    model = keras.Model(inp, L.GlobalAveragePooling2D()(y))
    randomize(model, 9)
    model.save(tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "r+") as h5:
        cfg = json.loads(h5.attrs["model_config"])
        for layer in cfg["config"]["layers"]:
            layer["inbound_nodes"] = [
                [[*arg["config"]["keras_history"], {}] for arg in
                 (node["args"][0] if isinstance(node["args"][0], list) else [node["args"][0]])]
                for node in layer["inbound_nodes"]]
            layer["config"]["batch_input_shape"] = layer["config"].pop("batch_shape", None)
        cfg["config"]["input_layers"] = [cfg["config"]["input_layers"]]
        h5.attrs["model_config"] = json.dumps(cfg)
    x = np.random.default_rng(9).standard_normal((2, 6, 6, 2)).astype(np.float32)
    assert_close(torch_output(from_keras(tmp_path / "m.h5"), x, False), keras_output(model, x))


def test_weights_only_h5_is_refused(tmp_path):
    model = small_model()
    model.save_weights(tmp_path / "w.weights.h5")
    with pytest.raises(ValueError, match="weights only"):
        from_keras(tmp_path / "w.weights.h5")


def test_cli_errors_are_one_line_and_write_nothing(saved, tmp_path, capsys):
    from sepconv.cli import main

    rewrite_archive(saved, tmp_path / "bad.keras", config=edit_layer("fc", class_name="Lambda"))
    out = tmp_path / "out.safetensors"
    for args in ([str(tmp_path / "bad.keras"), str(out)], [str(tmp_path / "missing.keras"), str(out)],
                 [str(saved), str(out), "--max-mb", "0"]):
        assert main(["import-keras", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sepconv import-keras: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".out.safetensors*"))


def test_bad_arguments():
    with pytest.raises(ValueError, match="path_or_model must be a path"):
        from_keras(42)
    with pytest.raises(ValueError, match="channels_last must be True or False"):
        from_keras("x.keras", channels_last="yes")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_keras("/nonexistent/x.keras")
