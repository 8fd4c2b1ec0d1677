"""Import Keras models (``.keras`` archives and legacy ``.h5`` files) as PyTorch modules built from sepconv layers.

The file is read as data only: the JSON model config and the HDF5 weights,
through ``zipfile``, ``json`` and ``h5py``. Keras itself is never imported
and nothing in the file is executed: ``Lambda`` layers, custom classes and
custom activations are refused with a message naming the layer.

The imported model is a :class:`~sepconv.interop.modules.KerasGraph`. Its
convolutions are sepconv layers (:class:`~sepconv.layers.SeparableConv2d`,
:class:`~sepconv.layers.DepthwiseConv2d`, ...) or ``nn.Conv*d``, which
already follow Keras: TF-style 'same' padding for every stride, depthwise
output channel ``c*M + m`` and a single bias after the pointwise step.
Tensors of rank >= 3 are channels-first inside the model; ``channels_last``
chooses the layout at its boundary. A convolution followed by its
BatchNormalization (and activation, and the next convolution) becomes one
node (see :class:`_Group`), so ``sepconv.fold_batchnorm`` and
``sepconv.quantize`` see them as neighbours.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..geometry import ConvSpec, effective_kernel
from ..layers import DepthwiseConv1d, DepthwiseConv2d, SeparableConv1d, SeparableConv2d, conv_module
from ..layers.separable import SeparableConvNd
from .modules import (
    ChannelsLastFlatten,
    Concatenate,
    GlobalPool,
    KerasGraph,
    KerasPool,
    KerasReLU,
    KerasReshape,
    Merge,
    Rescaling,
    Softmax,
    SpatialPad,
    UpsampleNearest,
)

#: Largest ``config.json`` accepted, in bytes.
MAX_CONFIG_BYTES = 64 * 2**20
#: Default cap on the uncompressed weights file, in bytes (``max_bytes`` of :func:`from_keras`).
DEFAULT_MAX_BYTES = 4 * 2**30
#: Largest ratio of uncompressed to compressed size accepted for a member of a ``.keras`` archive.
MAX_COMPRESSION_RATIO = 200
#: Most members a ``.keras`` archive may have.
MAX_MEMBERS = 1000

Shape = tuple  # a Keras shape without the batch dimension; entries are ints or None


# ----------------------------------------------------------------------------- reading the file


class _WeightStore:
    """The weights of one file: ``get(layer_name, fallback_path)`` lists a layer's h5py datasets in Keras order."""

    def __init__(self, lookup: Callable[[str, str], Optional[list]]):
        self._lookup = lookup

    def get(self, layer: str, path: str) -> Optional[list]:
        return self._lookup(layer, path)


def _check_hard_link(group: Any, name: str, where: str) -> Any:
    """``group[name]`` after checking it is stored in this file (no external or soft links, no external data)."""
    import h5py

    link = group.get(name, getlink=True)
    if link is None:
        return None
    if not isinstance(link, h5py.HardLink):
        raise ValueError(f"weights file: {where}/{name} is a {type(link).__name__}; only data stored in the file is read")
    obj = group[name]
    if isinstance(obj, h5py.Dataset) and (obj.external or obj.is_virtual):
        raise ValueError(f"weights file: {where}/{name} refers to data outside the file; only data stored in it is read")
    return obj


def _keras3_store(h5: Any) -> _WeightStore:
    """Index a Keras 3 ``model.weights.h5``: ``layers/<path>/vars/<i>``, with each ``vars`` group naming its layer."""
    import h5py

    by_name: dict[str, Any] = {}
    by_path: dict[str, Any] = {}
    top = _check_hard_link(h5, "layers", "")
    if isinstance(top, h5py.Group):
        for path in top.keys():
            group = _check_hard_link(top, path, "layers")
            if not isinstance(group, h5py.Group):
                continue
            var_group = _check_hard_link(group, "vars", f"layers/{path}")
            if not isinstance(var_group, h5py.Group):
                continue
            by_path[path] = var_group
            name = var_group.attrs.get("name")
            if isinstance(name, bytes):
                name = name.decode("utf-8", "replace")
            if isinstance(name, str):
                by_name[name] = var_group

    def lookup(layer: str, path: str) -> Optional[list]:
        group = by_name.get(layer, by_path.get(path))
        if group is None:
            return None
        keys = sorted((k for k in group.keys() if k.isdigit()), key=int)
        if keys != [str(i) for i in range(len(keys))]:
            raise ValueError(f"weights file: layer {layer!r} has variables {sorted(group.keys())}; expected 0, 1, 2, ...")
        return [_check_hard_link(group, k, f"layer {layer!r}") for k in keys]

    return _WeightStore(lookup)


def _legacy_store(h5: Any) -> _WeightStore:
    """Index a legacy ``.h5`` model: ``model_weights/<layer>`` with a ``weight_names`` attribute in Keras order."""
    import h5py

    root = _check_hard_link(h5, "model_weights", "")
    if not isinstance(root, h5py.Group):
        raise ValueError("the .h5 file has no 'model_weights' group: it is not a full Keras model file "
                         "(a file written by save_weights() holds no architecture)")

    def lookup(layer: str, path: str) -> Optional[list]:
        if layer not in root:
            return None
        group = _check_hard_link(root, layer, "model_weights")
        names = group.attrs.get("weight_names", [])
        out = []
        for name in names:
            name = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
            node: Any = group
            for part in name.split("/"):
                if not isinstance(node, h5py.Group) or part not in node:
                    raise ValueError(f"weights file: layer {layer!r} lists weight {name!r}, which is missing")
                node = _check_hard_link(node, part, f"layer {layer!r}")
            out.append(node)
        return out

    return _WeightStore(lookup)


def _loads(text: Union[str, bytes], where: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:
        raise ValueError(f"{where} is not valid JSON: {str(error)[:200]}") from None


def _copy_capped(source: Any, target: Any, limit: int, what: str) -> None:
    copied = 0
    while True:
        chunk = source.read(2**20)
        if not chunk:
            return
        copied += len(chunk)
        if copied > limit:
            raise ValueError(f"{what} is larger than max_bytes={limit}")
        target.write(chunk)


@contextlib.contextmanager
def _open_keras_archive(path: Path, max_bytes: int) -> Iterator[tuple[dict, _WeightStore]]:
    import h5py

    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{str(path)!r} is not a .keras archive (not a zip file: {error})") from None
    with archive, tempfile.TemporaryDirectory(prefix="sepconv-keras-") as tmp:
        members = archive.infolist()
        if len(members) > MAX_MEMBERS:
            raise ValueError(f"{str(path)!r} has {len(members)} members; a .keras archive has a handful (limit {MAX_MEMBERS})")
        names = {m.filename: m for m in members}
        for member in members:
            limit = MAX_CONFIG_BYTES if member.filename.endswith(".json") else max_bytes
            if member.file_size > limit:
                raise ValueError(f"{str(path)!r}: member {member.filename!r} is {member.file_size} bytes uncompressed, "
                                 f"over the limit of {limit} (max_bytes)")
            if member.file_size > 2**20 and member.file_size > MAX_COMPRESSION_RATIO * max(member.compress_size, 1):
                raise ValueError(f"{str(path)!r}: member {member.filename!r} expands {member.file_size} / "
                                 f"{member.compress_size} times, over {MAX_COMPRESSION_RATIO}: refusing a likely zip bomb")
        if "config.json" not in names:
            raise ValueError(f"{str(path)!r} has no config.json: not a Keras 3 .keras archive "
                             f"(members: {sorted(names)[:10]})")
        if "model.weights.h5" not in names:
            if "model.weights.json" in names:
                raise ValueError(f"{str(path)!r} holds sharded weights (model.weights.json); save it unsharded")
            raise ValueError(f"{str(path)!r} has no model.weights.h5 (members: {sorted(names)[:10]})")
        with archive.open("config.json") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ValueError(f"{str(path)!r}: config.json is over {MAX_CONFIG_BYTES} bytes")
        config = _loads(raw, f"{str(path)!r}: config.json")
        weights_path = os.path.join(tmp, "model.weights.h5")
        with archive.open("model.weights.h5") as source, open(weights_path, "wb") as target:
            _copy_capped(source, target, max_bytes, f"{str(path)!r}: model.weights.h5")
        try:
            h5 = h5py.File(weights_path, "r")
        except OSError as error:
            raise ValueError(f"{str(path)!r}: model.weights.h5 is not a readable HDF5 file ({error})") from None
        with h5:
            yield config, _keras3_store(h5)


@contextlib.contextmanager
def _open_legacy_h5(path: Path, max_bytes: int) -> Iterator[tuple[dict, _WeightStore]]:
    import h5py

    if path.stat().st_size > max_bytes:
        raise ValueError(f"{str(path)!r} is {path.stat().st_size} bytes, over max_bytes={max_bytes}")
    try:
        h5 = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{str(path)!r} is not a readable HDF5 file ({error})") from None
    with h5:
        raw = h5.attrs.get("model_config")
        if raw is None:
            raise ValueError(f"{str(path)!r} has no 'model_config' attribute: it holds weights only, not a Keras model")
        if isinstance(raw, np.ndarray):
            raw = raw.tobytes()
        if len(raw) > MAX_CONFIG_BYTES:
            raise ValueError(f"{str(path)!r}: model_config is over {MAX_CONFIG_BYTES} bytes")
        yield _loads(raw, f"{str(path)!r}: model_config"), _legacy_store(h5)


def _h5py():
    try:
        import h5py  # noqa: F401
    except ImportError as error:
        raise ImportError("importing Keras models needs h5py: pip install 'sepconv[keras]'") from error


@contextlib.contextmanager
def _open(path: Path, max_bytes: int) -> Iterator[tuple[dict, _WeightStore]]:
    _h5py()
    if not path.exists():
        raise FileNotFoundError(f"Keras model file {str(path)!r} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a directory; expected a .keras or .h5 file "
                                "(TensorFlow SavedModel directories are not supported)")
    with open(path, "rb") as handle:
        magic = handle.read(8)
    if magic.startswith(b"PK"):
        opener = _open_keras_archive
    elif magic == b"\x89HDF\r\n\x1a\n":
        opener = _open_legacy_h5
    else:
        raise ValueError(f"{str(path)!r} is neither a .keras archive (zip) nor a legacy .h5 model (HDF5)")
    with opener(path, max_bytes) as opened:
        yield opened


# ----------------------------------------------------------------------------- the config


def _snake_case(name: str) -> str:
    """Keras' path name for a class (``SeparableConv2D`` -> ``separable_conv2d``)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


@dataclass
class _Layer:
    name: str
    cls: str
    config: dict
    calls: list = field(default_factory=list)  # one list of input refs (layer, node, tensor) per call
    path: str = ""
    builtin: bool = True


def _ref(value: Any, where: str) -> tuple[str, int, int]:
    if (isinstance(value, (list, tuple)) and len(value) >= 3 and isinstance(value[0], str)
            and all(isinstance(v, int) for v in value[1:3])):
        return value[0], int(value[1]), int(value[2])
    raise ValueError(f"model config: {where} is not a tensor reference [layer, node, index]: {str(value)[:120]}")


def _refs(value: Any, where: str) -> list[tuple[str, int, int]]:
    """A single reference or a list of them."""
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
        return [_ref(value, where)]
    if isinstance(value, (list, tuple)):
        return [_ref(v, where) for v in value]
    raise ValueError(f"model config: {where} must list tensor references, got {str(value)[:120]}")


def _tensor_refs(arg: Any, where: str) -> list[tuple[str, int, int]]:
    """References in one Keras 3 call argument: a ``__keras_tensor__`` or a list of them."""
    if isinstance(arg, dict) and arg.get("class_name") == "__keras_tensor__":
        return [_ref(arg.get("config", {}).get("keras_history"), where)]
    if isinstance(arg, (list, tuple)):
        out = []
        for item in arg:
            out += _tensor_refs(item, where)
        return out
    raise ValueError(f"model config: {where} passes a non-tensor argument {str(arg)[:120]}; only tensors are supported")


def _parse_calls(entry: dict, name: str) -> list[list[tuple[str, int, int]]]:
    calls = []
    for node in entry.get("inbound_nodes") or []:
        where = f"layer {name!r}"
        if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
            args = node.get("args") or []
            if len(args) != 1:
                raise ValueError(f"model config: {where} is called with {len(args)} positional arguments; "
                                 "sepconv supports one (a tensor or a list of tensors)")
            calls.append(_tensor_refs(args[0], where))
        elif isinstance(node, list):  # legacy: [[layer, node, tensor, kwargs], ...]
            calls.append([_ref(item, where) for item in node])
        else:
            raise ValueError(f"model config: {where} has a malformed inbound node {str(node)[:120]}")
    return calls


def _is_builtin(entry: dict) -> bool:
    module = entry.get("module")
    registered = entry.get("registered_name")
    if module is not None and not (isinstance(module, str) and (module == "keras" or module.startswith("keras."))):
        return False
    return registered in (None, entry.get("class_name"))


def _parse_model(config: Any) -> tuple[list[_Layer], list, list, str]:
    """``(layers, input_refs, output_refs, model_name)`` from a Sequential or Functional config."""
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise ValueError("model config: expected an object with 'class_name' and 'config'")
    cls = config.get("class_name")
    body = config["config"]
    if cls not in ("Sequential", "Functional", "Model") or not _is_builtin(config):
        raise ValueError(f"model config: the model class is {cls!r} (module {config.get('module')!r}); sepconv imports "
                         "Keras Sequential and Functional models only, never custom model classes")
    entries = body.get("layers")
    if not isinstance(entries, list):
        raise ValueError("model config: 'layers' must be a list")
    layers: list[_Layer] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str):
            raise ValueError(f"model config: layer #{i} is malformed")
        lcfg = entry.get("config") if isinstance(entry.get("config"), dict) else {}
        name = entry.get("name", lcfg.get("name"))
        if not isinstance(name, str):
            raise ValueError(f"model config: layer #{i} has no name")
        layers.append(_Layer(name, entry["class_name"], lcfg, builtin=_is_builtin(entry)))
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        raise ValueError("model config: layer names are not unique")
    if cls == "Sequential":
        if layers and layers[0].cls == "InputLayer":
            first, rest = layers[0], layers[1:]
        else:
            cfg = layers[0].config if layers else {}
            shape = cfg.get("batch_shape", cfg.get("batch_input_shape", body.get("build_input_shape")))
            if shape is None:
                raise ValueError("model config: the Sequential model has no input shape (it was never built)")
            first, rest = _Layer("input_layer", "InputLayer", {"batch_shape": shape}), layers
        previous = first.name
        for layer in rest:
            layer.calls = [[(previous, 0, 0)]]
            previous = layer.name
        # Sequential.layers omits the InputLayer: the weight paths are counted over the rest
        _assign_paths(rest)
        return [first, *rest], [(first.name, 0, 0)], [(previous, 0, 0)], str(body.get("name", "sequential"))
    for layer, entry in zip(layers, entries):
        layer.calls = _parse_calls(entry, layer.name)
    _assign_paths(layers)
    inputs = _refs(body.get("input_layers"), "input_layers")
    outputs = _refs(body.get("output_layers"), "output_layers")
    return layers, inputs, outputs, str(body.get("name", "model"))


def _assign_paths(layers: Sequence[_Layer]) -> None:
    used: dict[str, int] = {}
    for layer in layers:
        base = _snake_case(layer.cls)
        if base in used:
            used[base] += 1
            layer.path = f"{base}_{used[base]}"
        else:
            used[base] = 0
            layer.path = base


# ----------------------------------------------------------------------------- layer builders


class _Budget:
    """How many more weights the config may ask for: a hostile config must not allocate more than the file can hold."""

    def __init__(self, elements: Optional[int]):
        self.left = elements

    def reserve(self, layer: _Layer, weights: Sequence[tuple[str, tuple]]) -> None:
        if self.left is None:
            return
        count = sum(math.prod(int(n) for n in shape) for _, shape in weights)
        self.left -= count
        if self.left < 0:
            raise ValueError(f"layer {layer.name!r} ({layer.cls}) brings the model's weights past what a weights "
                             f"file within max_bytes can hold; the config asks for more than the file can fill")


class _Built:
    """What a layer builder returns: the module, the output shape and how to fill its weights."""

    def __init__(self, module: nn.Module, out_shape: Shape, weights: Sequence[tuple[str, tuple]] = (),
                 assign: Optional[Callable[[list], None]] = None):
        self.module, self.out_shape = module, out_shape
        self.weights = list(weights)  # (label, expected Keras shape), in the file's order
        self.assign = assign


def _tuple(value: Any, nd: int, what: str, layer: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * nd
    if isinstance(value, (list, tuple)) and len(value) == nd and all(isinstance(v, int) for v in value):
        return tuple(int(v) for v in value)
    raise ValueError(f"layer {layer!r}: {what}={value!r} is not an int or {nd} ints")


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "linear": nn.Identity, "relu": nn.ReLU, "relu6": nn.ReLU6, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
    "swish": nn.SiLU, "silu": nn.SiLU, "hard_swish": nn.Hardswish, "hard_silu": nn.Hardswish,
    "hard_sigmoid": nn.Hardsigmoid, "gelu": nn.GELU, "elu": nn.ELU, "selu": nn.SELU, "softplus": nn.Softplus,
    "softsign": nn.Softsign, "mish": nn.Mish, "leaky_relu": lambda: nn.LeakyReLU(0.2),
}
SUPPORTED_ACTIVATIONS = tuple(sorted([*_ACTIVATIONS, "softmax"]))


def _activation(value: Any, layer: str) -> Optional[nn.Module]:
    """The module for a Keras activation setting; None for 'linear'/None."""
    if isinstance(value, dict):  # a serialized built-in function
        module = value.get("module")
        if value.get("class_name") == "function" and module in ("keras.activations", "builtins", "keras"):
            value = value.get("config")
        else:
            raise ValueError(f"layer {layer!r} uses a custom activation {str(value)[:120]}; "
                             "sepconv never runs code from the file")
    if value is None or value == "linear":
        return None
    if value == "softmax":
        return Softmax(1)
    if not isinstance(value, str) or value not in _ACTIVATIONS:
        raise ValueError(f"layer {layer!r}: activation {value!r} is not supported; supported: {', '.join(SUPPORTED_ACTIVATIONS)}")
    return _ACTIVATIONS[value]()


def _with_activation(module: nn.Module, cfg: dict, name: str) -> nn.Module:
    act = _activation(cfg.get("activation"), name)
    return module if act is None else nn.Sequential(module, act)


def _check_channels_last(cfg: dict, name: str) -> None:
    fmt = cfg.get("data_format")
    if fmt not in (None, "channels_last"):
        raise ValueError(f"layer {name!r} has data_format={fmt!r}; sepconv imports channels_last Keras models only")


def _spatial_out(shape: Shape, kernel, stride, dilation, padding) -> Shape:
    """Keras' output size per spatial dimension (None stays None)."""
    out = []
    per_dim = [padding] * len(kernel) if padding == "same" else padding
    for n, k, s, d, p in zip(shape[:-1], kernel, stride, dilation, per_dim):
        if n is None:
            out.append(None)
        elif p == "same":
            out.append(-(-n // s))
        else:
            before, after = p
            span = n + before + after - effective_kernel(k, d)
            if span < 0:
                raise ValueError(f"kernel {kernel} with dilation {dilation} does not fit input {shape[:-1]}")
            out.append(span // s + 1)
    return tuple(out)


def _conv_geometry(cfg: dict, name: str, nd: int) -> tuple[tuple, tuple, tuple, Union[str, tuple]]:
    kernel = _tuple(cfg.get("kernel_size"), nd, "kernel_size", name)
    stride = _tuple(cfg.get("strides", 1), nd, "strides", name)
    dilation = _tuple(cfg.get("dilation_rate", 1), nd, "dilation_rate", name)
    padding = str(cfg.get("padding", "valid")).lower()
    if padding == "valid":
        pads: Union[str, tuple] = ((0, 0),) * nd
    elif padding == "same":
        pads = "same"
    elif padding == "causal" and nd == 1:
        pads = ((effective_kernel(kernel[0], dilation[0]) - 1, 0),)
    else:
        raise ValueError(f"layer {name!r}: padding={cfg.get('padding')!r} is not supported (valid, same, causal for 1D)")
    return kernel, stride, dilation, pads


def _need_rank(shape: Shape, rank: int, name: str, cls: str) -> int:
    if len(shape) != rank:
        raise ValueError(f"layer {name!r} ({cls}) needs an input of rank {rank + 1} (batch included), "
                         f"got shape (None, {', '.join(map(str, shape))})")
    channels = shape[-1]
    if channels is None:
        raise ValueError(f"layer {name!r} ({cls}): the channel dimension of its input is unknown")
    return int(channels)


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _copy(param: torch.Tensor, value: torch.Tensor) -> None:
    with torch.no_grad():
        param.copy_(value.reshape(param.shape))


def _build_conv(layer: _Layer, shape: Shape, nd: int, budget: _Budget) -> _Built:
    cfg, name = layer.config, layer.name
    _check_channels_last(cfg, name)
    cin = _need_rank(shape, nd + 1, name, layer.cls)
    kernel, stride, dilation, pads = _conv_geometry(cfg, name, nd)
    filters, groups, use_bias = int(cfg.get("filters")), int(cfg.get("groups", 1) or 1), bool(cfg.get("use_bias", True))
    spec = ConvSpec.make(cin, filters, kernel, stride, pads, dilation, groups=groups, bias=use_bias, ndim=nd)
    weights = [("kernel", (*kernel, cin // groups, filters))] + ([("bias", (filters,))] if use_bias else [])
    budget.reserve(layer, weights)
    conv, pad = conv_module(spec)
    module = _with_activation(conv if pad is None else nn.Sequential(pad, conv), cfg, name)
    perm = (nd + 1, nd, *range(nd))

    def assign(arrays: list) -> None:
        _copy(conv.weight, _t(arrays[0].transpose(perm)))
        if use_bias:
            _copy(conv.bias, _t(arrays[1]))

    return _Built(module, (*_spatial_out(shape, kernel, stride, dilation, pads), filters), weights, assign)


def _depthwise_to_torch(kernel: np.ndarray, nd: int) -> torch.Tensor:
    """Keras ``(*k, C, M)`` -> torch ``(C*M, 1, *k)``; output channel ``c*M + m``."""
    k = kernel.shape[:nd]
    flat = kernel.reshape(*k, -1)
    return _t(np.moveaxis(flat, -1, 0)).unsqueeze(1)


def _build_depthwise(layer: _Layer, shape: Shape, nd: int, budget: _Budget) -> _Built:
    cfg, name = layer.config, layer.name
    _check_channels_last(cfg, name)
    cin = _need_rank(shape, nd + 1, name, layer.cls)
    kernel, stride, dilation, pads = _conv_geometry(cfg, name, nd)
    mult, use_bias = int(cfg.get("depth_multiplier", 1)), bool(cfg.get("use_bias", True))
    cls = DepthwiseConv1d if nd == 1 else DepthwiseConv2d
    weights = [("kernel", (*kernel, cin, mult))] + ([("bias", (cin * mult,))] if use_bias else [])
    budget.reserve(layer, weights)
    conv = cls(cin, kernel, stride, pads, dilation, depth_multiplier=mult, bias=use_bias)

    def assign(arrays: list) -> None:
        _copy(conv.weight, _depthwise_to_torch(arrays[0], nd))
        if use_bias:
            _copy(conv.bias, _t(arrays[1]))

    out = (*_spatial_out(shape, kernel, stride, dilation, pads), cin * mult)
    return _Built(_with_activation(conv, cfg, name), out, weights, assign)


def _build_separable(layer: _Layer, shape: Shape, nd: int, budget: _Budget) -> _Built:
    cfg, name = layer.config, layer.name
    _check_channels_last(cfg, name)
    cin = _need_rank(shape, nd + 1, name, layer.cls)
    kernel, stride, dilation, pads = _conv_geometry(cfg, name, nd)
    filters, mult = int(cfg.get("filters")), int(cfg.get("depth_multiplier", 1))
    use_bias = bool(cfg.get("use_bias", True))
    cls = SeparableConv1d if nd == 1 else SeparableConv2d
    weights = [("depthwise_kernel", (*kernel, cin, mult)), ("pointwise_kernel", (*(1,) * nd, cin * mult, filters))]
    weights += [("bias", (filters,))] if use_bias else []
    budget.reserve(layer, weights)
    conv = cls(cin, filters, kernel, stride, pads, dilation, bias=use_bias, depth_multiplier=mult)
    perm = (nd + 1, nd, *range(nd))

    def assign(arrays: list) -> None:
        _copy(conv.depthwise.weight, _depthwise_to_torch(arrays[0], nd))
        _copy(conv.pointwise.weight, _t(arrays[1].transpose(perm)))
        if use_bias:
            _copy(conv.pointwise.bias, _t(arrays[2]))

    out = (*_spatial_out(shape, kernel, stride, dilation, pads), filters)
    return _Built(_with_activation(conv, cfg, name), out, weights, assign)


def _build_dense(layer: _Layer, shape: Shape, flattened_from: Optional[Shape], budget: _Budget) -> _Built:
    """``Dense``; ``flattened_from`` is the channels-last shape a plain ``nn.Flatten`` flattened (rows are permuted)."""
    cfg, name = layer.config, layer.name
    if not shape or shape[-1] is None:
        raise ValueError(f"layer {name!r} (Dense): the last dimension of its input is unknown")
    cin, units, use_bias = int(shape[-1]), int(cfg.get("units")), bool(cfg.get("use_bias", True))
    weights = [("kernel", (cin, units))] + ([("bias", (units,))] if use_bias else [])
    budget.reserve(layer, weights)
    if len(shape) == 1:
        linear: nn.Module = nn.Linear(cin, units, bias=use_bias)
    else:  # Dense on the channel axis of a (N, C, *spatial) tensor is a pointwise convolution
        nd = len(shape) - 1
        if nd > 3:
            raise ValueError(f"layer {name!r} (Dense): input rank {len(shape) + 1} is not supported (at most 5)")
        spec = ConvSpec.make(cin, units, 1, 1, 0, 1, bias=use_bias, ndim=nd)
        linear, _ = conv_module(spec)

    def assign(arrays: list) -> None:
        kernel = arrays[0]
        if flattened_from is not None:  # Keras flattened (*spatial, C); nn.Flatten flattens (C, *spatial)
            order = np.arange(kernel.shape[0]).reshape(flattened_from)
            order = np.moveaxis(order, -1, 0).reshape(-1)
            kernel = kernel[order]
        _copy(linear.weight, _t(kernel.T))
        if use_bias:
            _copy(linear.bias, _t(arrays[1]))

    return _Built(_with_activation(linear, cfg, name), (*shape[:-1], units), weights, assign)


def _build_batchnorm(layer: _Layer, shape: Shape, budget: _Budget) -> _Built:
    cfg, name = layer.config, layer.name
    axis = cfg.get("axis", -1)
    if isinstance(axis, (list, tuple)) and len(axis) == 1:
        axis = axis[0]
    if axis not in (-1, len(shape)):
        raise ValueError(f"layer {name!r} (BatchNormalization): axis={cfg.get('axis')!r} is not supported; "
                         "only the channel axis (-1)")
    if cfg.get("renorm"):
        raise ValueError(f"layer {name!r} (BatchNormalization): renorm=True is not supported")
    channels = shape[-1]
    if channels is None:
        raise ValueError(f"layer {name!r} (BatchNormalization): the channel dimension is unknown")
    nd = len(shape) - 1
    if nd > 3:
        raise ValueError(f"layer {name!r} (BatchNormalization): input rank {len(shape) + 1} is not supported")
    cls = {0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[nd]
    budget.reserve(layer, [("statistics", (4, int(channels)))])
    # Keras updates moving = m * moving + (1 - m) * batch; torch uses (1 - momentum) * moving + momentum * batch
    bn = cls(int(channels), eps=float(cfg.get("epsilon", 1e-3)), momentum=1.0 - float(cfg.get("momentum", 0.99)))
    scale, center = bool(cfg.get("scale", True)), bool(cfg.get("center", True))
    weights = ([("gamma", (channels,))] if scale else []) + ([("beta", (channels,))] if center else [])
    weights += [("moving_mean", (channels,)), ("moving_variance", (channels,))]

    def assign(arrays: list) -> None:
        values = list(arrays)
        _copy(bn.weight, _t(values.pop(0)) if scale else torch.ones(int(channels)))
        _copy(bn.bias, _t(values.pop(0)) if center else torch.zeros(int(channels)))
        _copy(bn.running_mean, _t(values[0]))
        _copy(bn.running_var, _t(values[1]))

    return _Built(bn, shape, weights, assign)


def _torch_dim(axis: Any, rank: int, name: str) -> int:
    """The channels-first tensor dimension for Keras axis ``axis`` of a tensor of ``rank`` dims (batch excluded)."""
    if not isinstance(axis, int) or not -rank <= axis <= rank or axis == 0 or axis == -rank - 1:
        raise ValueError(f"layer {name!r}: axis={axis!r} is not a non-batch axis of a rank-{rank + 1} tensor")
    full = axis if axis > 0 else rank + 1 + axis  # 1..rank
    if rank < 2:
        return full
    return 1 if full == rank else full + 1


def _pads_config(value: Any, nd: int, name: str, what: str) -> tuple:
    if isinstance(value, int):
        return ((value, value),) * nd
    if isinstance(value, (list, tuple)) and len(value) == nd:
        out = []
        for v in value:
            if isinstance(v, int):
                out.append((v, v))
            elif isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(q, int) for q in v):
                out.append((int(v[0]), int(v[1])))
            else:
                break
        else:
            return tuple(out)
    if nd == 1 and isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(q, int) for q in value):
        return ((int(value[0]), int(value[1])),)
    raise ValueError(f"layer {name!r}: {what}={value!r} is not understood")


def _known(n: Optional[int]) -> bool:
    return n is not None


def _build_simple(layer: _Layer, shapes: list[Shape], flatten_plain: set) -> _Built:
    """Layers without weights (and Flatten, whose form depends on its consumers)."""
    cls, cfg, name = layer.cls, layer.config, layer.name
    shape = shapes[0]
    if cls in ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
               "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity"):
        if cls == "Dropout":
            return _Built(nn.Dropout(float(cfg.get("rate", 0.0))), shape)
        if cls == "SpatialDropout2D":
            return _Built(nn.Dropout2d(float(cfg.get("rate", 0.0))), shape)
        return _Built(nn.Identity(), shape)  # inactive at inference
    if cls == "Activation":
        act = _activation(cfg.get("activation"), name)
        return _Built(act if act is not None else nn.Identity(), shape)
    if cls == "ReLU":
        max_value, slope, threshold = cfg.get("max_value"), float(cfg.get("negative_slope", 0.0) or 0.0), \
            float(cfg.get("threshold", 0.0) or 0.0)
        if slope == 0 and threshold == 0 and max_value is None:
            return _Built(nn.ReLU(), shape)
        if slope == 0 and threshold == 0 and max_value is not None and float(max_value) == 6.0:
            return _Built(nn.ReLU6(), shape)
        return _Built(KerasReLU(max_value, slope, threshold), shape)
    if cls == "LeakyReLU":
        slope = cfg.get("negative_slope", cfg.get("alpha", 0.3))
        return _Built(nn.LeakyReLU(float(slope)), shape)
    if cls == "ELU":
        return _Built(nn.ELU(float(cfg.get("alpha", 1.0))), shape)
    if cls == "Softmax":
        return _Built(Softmax(_torch_dim(cfg.get("axis", -1), len(shape), name)), shape)
    if cls == "Flatten":
        _check_channels_last(cfg, name)
        out = (math.prod(shape) if all(map(_known, shape)) else None,)
        if name in flatten_plain:
            return _Built(nn.Flatten(), out)
        return _Built(ChannelsLastFlatten(), out)
    if cls == "Reshape":
        target = cfg.get("target_shape")
        if not isinstance(target, (list, tuple)) or not all(isinstance(v, int) for v in target):
            raise ValueError(f"layer {name!r} (Reshape): target_shape={target!r} is not a list of ints")
        out = list(target)
        if -1 in out and all(map(_known, shape)):
            rest = math.prod(v for v in out if v != -1)
            out[out.index(-1)] = math.prod(shape) // max(rest, 1)
        return _Built(KerasReshape(target), tuple(None if v == -1 else v for v in out))
    if cls in ("GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
               "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D"):
        _check_channels_last(cfg, name)
        nd = int(cls[-2])
        _need_rank(shape, nd + 1, name, cls)
        keep = bool(cfg.get("keepdims", False))
        out = (*(1,) * nd, shape[-1]) if keep else (shape[-1],)
        return _Built(GlobalPool("avg" if "Average" in cls else "max", keep), out)
    if cls in ("MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
               "AveragePooling3D"):
        _check_channels_last(cfg, name)
        nd = int(cls[-2])
        _need_rank(shape, nd + 1, name, cls)
        pool = _tuple(cfg.get("pool_size", 2), nd, "pool_size", name)
        strides = _tuple(cfg.get("strides") if cfg.get("strides") is not None else pool, nd, "strides", name)
        padding = str(cfg.get("padding", "valid")).lower()
        if padding not in ("valid", "same"):
            raise ValueError(f"layer {name!r}: padding={padding!r} is not supported")
        pads = "same" if padding == "same" else ((0, 0),) * nd
        out = (*_spatial_out(shape, pool, strides, (1,) * nd, pads), shape[-1])
        return _Built(KerasPool("max" if cls.startswith("Max") else "avg", pool, strides, padding), out)
    if cls in ("ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D"):
        _check_channels_last(cfg, name)
        nd = int(cls[-2])
        _need_rank(shape, nd + 1, name, cls)
        crop = cls.startswith("Cropping")
        pads = _pads_config(cfg.get("cropping" if crop else "padding", 1), nd, name, "cropping" if crop else "padding")
        sign = -1 if crop else 1
        out = tuple(None if n is None else n + sign * (a + b) for n, (a, b) in zip(shape[:-1], pads))
        return _Built(SpatialPad(pads, crop), (*out, shape[-1]))
    if cls in ("UpSampling1D", "UpSampling2D", "UpSampling3D"):
        _check_channels_last(cfg, name)
        nd = int(cls[-2])
        _need_rank(shape, nd + 1, name, cls)
        if cfg.get("interpolation", "nearest") != "nearest":
            raise ValueError(f"layer {name!r}: interpolation={cfg.get('interpolation')!r} is not supported (nearest)")
        size = _tuple(cfg.get("size", 2), nd, "size", name)
        out = tuple(None if n is None else n * s for n, s in zip(shape[:-1], size))
        return _Built(UpsampleNearest(size), (*out, shape[-1]))
    if cls == "Rescaling":
        scale = np.asarray(cfg.get("scale", 1.0), dtype=np.float64).reshape(-1)
        offset = np.asarray(cfg.get("offset", 0.0), dtype=np.float64).reshape(-1)
        for v, what in ((scale, "scale"), (offset, "offset")):
            if v.size not in (1, shape[-1]):
                raise ValueError(f"layer {name!r} (Rescaling): {what} has {v.size} values; one or one per channel "
                                 f"({shape[-1]}) is supported")
        return _Built(Rescaling(_t(scale), _t(offset)), shape)
    if cls in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"):
        ranks = {len(s) for s in shapes}
        if len(ranks) != 1:
            raise ValueError(f"layer {name!r} ({cls}) merges tensors of different ranks {shapes}; "
                             "broadcasting across ranks is not supported")
        if cls == "Concatenate":
            dim = _torch_dim(cfg.get("axis", -1), len(shape), name)
            axis = dim - 1 if len(shape) < 2 else (len(shape) - 1 if dim == 1 else dim - 2)
            sizes = [s[axis] for s in shapes]
            out = list(shape)
            out[axis] = sum(sizes) if all(map(_known, sizes)) else None
            return _Built(Concatenate(dim), tuple(out))
        if cls == "Subtract" and len(shapes) != 2:
            raise ValueError(f"layer {name!r} (Subtract) needs exactly 2 inputs, got {len(shapes)}")
        out = tuple(max((s[i] for s in shapes if s[i] is not None), default=None) for i in range(len(shape)))
        return _Built(Merge(cls.lower()), out)
    raise AssertionError(cls)  # pragma: no cover - the caller checks SUPPORTED_LAYERS


_CONV_LAYERS = {"Conv1D": 1, "Conv2D": 2, "Conv3D": 3, "Convolution1D": 1, "Convolution2D": 2, "Convolution3D": 3}
_DEPTHWISE_LAYERS = {"DepthwiseConv1D": 1, "DepthwiseConv2D": 2}
_SEPARABLE_LAYERS = {"SeparableConv1D": 1, "SeparableConv2D": 2, "SeparableConvolution1D": 1,
                     "SeparableConvolution2D": 2}
_MERGE_LAYERS = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"}
_SIMPLE_LAYERS = {
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise", "GaussianDropout",
    "AlphaDropout", "ActivityRegularization", "Identity", "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax",
    "Flatten", "Reshape", "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
    "Cropping1D", "Cropping2D", "Cropping3D", "UpSampling1D", "UpSampling2D", "UpSampling3D", "Rescaling",
    *_MERGE_LAYERS,
}
#: Keras layer classes :func:`from_keras` can import.
SUPPORTED_LAYERS = tuple(sorted({"InputLayer", "Dense", "BatchNormalization", *_CONV_LAYERS, *_DEPTHWISE_LAYERS,
                                 *_SEPARABLE_LAYERS, *_SIMPLE_LAYERS}))


# ----------------------------------------------------------------------------- building the graph


def _module_key(name: str, used: set) -> str:
    key = re.sub(r"[^0-9A-Za-z_]", "_", name) or "layer"
    if key[0].isdigit():
        key = "l_" + key
    base, i = key, 1
    while key in used:
        key, i = f"{base}_{i}", i + 1
    used.add(key)
    return key


#: Convolution layers: a group opens at one followed by BatchNormalization, and may take in the next one.
_GROUP_CONVS = {*_CONV_LAYERS, *_DEPTHWISE_LAYERS, *_SEPARABLE_LAYERS}
#: Layers that may follow a group's BatchNormalization.
_GROUP_ACTIVATIONS = {"Activation", "ReLU", "LeakyReLU", "ELU"}
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class _Group:
    """A run of imported layers that becomes one node: ``conv -> BatchNorm [-> activation] [-> conv -> ...]``.

    It opens at a convolution (Conv, DepthwiseConv, SeparableConv) without a fused activation whose
    only reader is a BatchNormalization; the BatchNorm, then an activation layer, then the next
    convolution join it while each output in between has exactly one reader. The node is an
    ``nn.Sequential`` whose children are named after the Keras layers (a convolution's TF 'same'
    padding as ``<conv>_pad``), so BatchNorm folding and int8 pair finding see each convolution, its
    normalization and the next convolution as neighbours. A SeparableConv takes its BatchNorm and
    activation as ``pw_norm`` and ``pw_act``, which apply after the pointwise step and its bias, where
    Keras applies them; a group of one SeparableConv is that layer itself.
    """

    def __init__(self, layer: _Layer, key: str, module: nn.Module, used_keys: set):
        self.key, self.used_keys = key, used_keys
        self.parts: list[tuple[str, nn.Module]] = []
        self.separable: Optional[SeparableConvNd] = None
        self.stage = ""
        self._add_conv(layer, key, module)

    def _add_conv(self, layer: _Layer, key: str, module: nn.Module) -> None:
        act = None
        if _activation(layer.config.get("activation"), layer.name) is not None:
            module, act = module[0], module[1]  # _with_activation's (conv, activation)
        if isinstance(module, nn.Sequential):  # (pad, conv): a Conv with TF 'same' padding
            pad, module = module
            self.parts.append((_module_key(f"{key}_pad", self.used_keys), pad))
        self.parts.append((key, module))
        self.separable = module if isinstance(module, SeparableConvNd) else None
        self.stage = "conv"
        if act is not None:
            self._add_act(_module_key(f"{key}_act", self.used_keys), act)

    def _add_act(self, key: str, act: nn.Module) -> None:
        if self.separable is not None and isinstance(self.separable.pw_act, nn.Identity):
            self.separable.pw_act = act
        else:
            self.parts.append((key, act))
        self.stage = "act"

    def next_classes(self) -> set:
        """Keras classes the group can take in next."""
        return {"conv": {"BatchNormalization"}, "norm": _GROUP_ACTIVATIONS | _GROUP_CONVS,
                "act": _GROUP_CONVS}.get(self.stage, set())

    def accepts(self, layer: _Layer, built: "_Built") -> bool:
        if len(layer.calls) != 1 or layer.cls not in self.next_classes():
            return False
        return layer.cls != "BatchNormalization" or isinstance(built.module, _BATCHNORMS)

    def add(self, layer: _Layer, key: str, module: nn.Module) -> None:
        if layer.cls in _GROUP_CONVS:
            self._add_conv(layer, key, module)
        elif layer.cls == "BatchNormalization":
            if self.separable is not None:
                self.separable.pw_norm = module
            else:
                self.parts.append((key, module))
            self.stage = "norm"
        else:
            self._add_act(key, module)

    def module(self) -> nn.Module:
        if len(self.parts) == 1 and isinstance(self.parts[0][1], SeparableConvNd):
            return self.parts[0][1]
        return nn.Sequential(OrderedDict(self.parts))


def _input_shape(layer: _Layer) -> Shape:
    cfg = layer.config
    shape = cfg.get("batch_shape", cfg.get("batch_input_shape"))
    if shape is None and cfg.get("shape") is not None:
        shape = [None, *cfg["shape"]]
    if not isinstance(shape, (list, tuple)) or len(shape) < 2 or not all(v is None or isinstance(v, int)
                                                                         for v in shape):
        raise ValueError(f"input layer {layer.name!r} has no usable shape: {shape!r}")
    if len(shape) > 5:
        raise ValueError(f"input layer {layer.name!r}: rank {len(shape)} is not supported (at most 5)")
    return tuple(shape[1:])


def _check_supported(layers: Sequence[_Layer]) -> None:
    problems = []
    for layer in layers:
        if not layer.builtin:
            problems.append(f"{layer.name!r} is a custom object (class {layer.cls!r}); sepconv imports built-in Keras "
                            "layers only and never runs code from the file")
        elif layer.cls == "Lambda":
            problems.append(f"{layer.name!r} is a Lambda layer (it holds Python code; sepconv never runs code from "
                            "the file)")
        elif layer.cls in ("Sequential", "Functional", "Model"):
            problems.append(f"{layer.name!r} is a nested model ({layer.cls}); flatten it into one model first")
        elif layer.cls not in SUPPORTED_LAYERS:
            problems.append(f"{layer.name!r} ({layer.cls})")
    if problems:
        raise ValueError("cannot import this Keras model; unsupported layers: " + "; ".join(problems)
                         + f". Supported layers: {', '.join(SUPPORTED_LAYERS)}")


def _read_weights(store: _WeightStore, layer: _Layer, built: _Built) -> list:
    import h5py

    datasets = store.get(layer.name, layer.path)
    expected = built.weights
    if datasets is None:
        if expected:
            raise ValueError(f"weights file: layer {layer.name!r} ({layer.cls}) has no weights in the file; "
                             f"expected {', '.join(f'{label} {shape}' for label, shape in expected)}")
        return []
    if len(datasets) != len(expected):
        raise ValueError(f"weights file: layer {layer.name!r} ({layer.cls}) has {len(datasets)} weight(s), expected "
                         f"{len(expected)}: {', '.join(f'{label} {shape}' for label, shape in expected) or 'none'}")
    arrays = []
    for dataset, (label, shape) in zip(datasets, expected):
        if not isinstance(dataset, h5py.Dataset):
            raise ValueError(f"weights file: {label} of layer {layer.name!r} is not a dataset")
        if tuple(dataset.shape) != tuple(shape):  # checked before anything is read
            raise ValueError(f"weights file: {label} of layer {layer.name!r} ({layer.cls}) has shape "
                             f"{tuple(dataset.shape)}, expected {tuple(shape)}")
        if dataset.dtype.kind != "f":
            raise ValueError(f"weights file: {label} of layer {layer.name!r} has dtype {dataset.dtype}; "
                             "expected floating point")
        array = np.asarray(dataset[()], dtype=np.float32)
        if not np.all(np.isfinite(array)):
            raise ValueError(f"weights file: {label} of layer {layer.name!r} holds NaN or infinite values")
        arrays.append(array)
    return arrays


def build_from_config(config: Any, store: Optional[_WeightStore] = None, *, channels_last: bool = False,
                      max_weights: Optional[int] = None) -> KerasGraph:
    """Build the :class:`KerasGraph` for a Keras model config (the parsed ``config.json``).

    With ``store`` the weights are copied from it (every expected weight must
    be there with its exact shape); without, the modules keep their initial
    values (used to rebuild a model before loading a saved state dict).
    ``max_weights`` caps the number of weight elements the config may ask
    for (checked before each layer is allocated). Raises ``ValueError``
    listing unsupported layers before building anything.
    """
    budget = _Budget(max_weights)
    try:
        layers, input_refs, output_refs, _ = _parse_model(config)
    except (TypeError, KeyError, AttributeError, IndexError) as error:
        raise ValueError(f"model config is malformed: {error}") from None
    _check_supported(layers)
    by_name = {layer.name: layer for layer in layers}
    for ref in [*input_refs, *output_refs]:
        if ref[0] not in by_name:
            raise ValueError(f"model config: the model input/output refers to unknown layer {ref[0]!r}")
    inputs = []
    for ref in input_refs:
        layer = by_name[ref[0]]
        if layer.cls != "InputLayer":
            raise ValueError(f"model config: model input {ref[0]!r} is a {layer.cls}, not an InputLayer")
        inputs.append(layer)

    # every call ("node") of every layer, and who consumes which output
    slot_of: dict[tuple[str, int], int] = {(layer.name, 0): i for i, layer in enumerate(inputs)}
    shape_of: dict[int, Shape] = {i: _input_shape(layer) for i, layer in enumerate(inputs)}
    pending = [(layer, k, call) for layer in layers if layer.cls != "InputLayer" for k, call in enumerate(layer.calls)]
    for layer in layers:
        if layer.cls == "InputLayer" and layer not in inputs and any(layer.calls):
            raise ValueError(f"model config: input layer {layer.name!r} is called on other tensors")
        for call in layer.calls:
            for ref in call:
                if ref[0] not in by_name:
                    raise ValueError(f"model config: layer {layer.name!r} takes an input from unknown layer {ref[0]!r}")
                if ref[2] != 0:
                    raise ValueError(f"model config: layer {layer.name!r} reads output {ref[2]} of {ref[0]!r}; "
                                     "only single-output layers are supported")
    consumers: dict[tuple[str, int], list[str]] = {}
    for layer, k, call in pending:
        for ref in call:
            consumers.setdefault((ref[0], ref[1]), []).append(layer)
    output_keys = {(ref[0], ref[1]) for ref in output_refs}
    # Flatten feeding only Dense layers: a plain nn.Flatten, and the Dense rows are permuted instead
    flatten_plain: set = set()

    def sole_consumer(key: tuple[str, int], classes: Any) -> bool:
        """Whether the output ``key`` is read once, by a single-call layer of one of ``classes``, and is no model output."""
        users = consumers.get(key, [])
        return (len(users) == 1 and users[0].cls in classes and len(users[0].calls) == 1
                and key not in output_keys)

    modules: dict[str, nn.Module] = {}
    module_key: dict[str, str] = {}
    used_keys: set = set()
    nodes: list[tuple[str, list[int]]] = []
    built_of: dict[str, _Built] = {}
    flat_source: dict[int, Shape] = {}
    open_groups: dict[int, _Group] = {}  # slot -> the conv group whose last output it holds
    while pending:
        progress = False
        remaining = []
        for layer, k, call in pending:
            keys = [(ref[0], ref[1]) for ref in call]
            if not all(key in slot_of for key in keys):
                remaining.append((layer, k, call))
                continue
            progress = True
            slots = [slot_of[key] for key in keys]
            shapes = [shape_of[s] for s in slots]
            if not call:
                raise ValueError(f"model config: layer {layer.name!r} is called without inputs")
            if layer.cls not in _MERGE_LAYERS and len(call) != 1:
                raise ValueError(f"model config: layer {layer.name!r} ({layer.cls}) takes one input, got {len(call)}")
            if layer.cls == "Flatten" and len(shapes[0]) >= 2 and all(map(_known, shapes[0])):
                users = consumers.get((layer.name, k), [])
                # a Dense called elsewhere too would see its rows permuted for the other input as well
                if users and all(u.cls == "Dense" and len(u.calls) == 1 for u in users) \
                        and (layer.name, k) not in output_keys \
                        and len(layer.calls) == 1:
                    flatten_plain.add(layer.name)
            built = _build_layer(layer, shapes, flatten_plain, flat_source.get(slots[0]), budget)
            group = open_groups.pop(slots[0], None)
            if group is not None and group.accepts(layer, built):
                # the layer joins the group's node: its output takes over the group's slot,
                # which nothing else reads (checked when the group was left open for it)
                built_of[layer.name] = built
                module_key[layer.name] = _module_key(layer.name, used_keys)
                group.add(layer, module_key[layer.name], built.module)
                modules[group.key] = group.module()
                slot_of[(layer.name, k)] = slots[0]
                shape_of[slots[0]] = built.out_shape
                if sole_consumer((layer.name, k), group.next_classes()):
                    open_groups[slots[0]] = group
                continue
            if layer.name in built_of:  # a shared layer called again: same module, same weights
                if built_of[layer.name].weights != built.weights:
                    raise ValueError(f"model config: shared layer {layer.name!r} is called on inputs of "
                                     f"different shapes {shapes}")
            else:
                built_of[layer.name] = built
                module_key[layer.name] = _module_key(layer.name, used_keys)
                modules[module_key[layer.name]] = built.module
            slot = len(inputs) + len(nodes)
            nodes.append((module_key[layer.name], slots))
            slot_of[(layer.name, k)] = slot
            shape_of[slot] = built.out_shape
            if layer.name in flatten_plain:
                flat_source[slot] = shapes[0]
            if (layer.cls in _GROUP_CONVS and len(layer.calls) == 1
                    and _activation(layer.config.get("activation"), layer.name) is None
                    and sole_consumer((layer.name, k), ("BatchNormalization",))):
                open_groups[slot] = _Group(layer, module_key[layer.name], built.module, used_keys)
        if not progress:
            names = sorted({layer.name for layer, _, _ in remaining})
            raise ValueError(f"model config: layers {names[:10]} cannot be reached from the model inputs "
                             "(a cycle or a missing input)")
        pending = remaining

    outputs = []
    for ref in output_refs:
        key = (ref[0], ref[1])
        if key not in slot_of:
            raise ValueError(f"model config: model output {ref[0]!r} (call {ref[1]}) is never computed")
        outputs.append(slot_of[key])

    if store is not None:
        filled = [(layer, built_of[layer.name]) for layer in layers if layer.name in built_of]
        values = [(_read_weights(store, layer, built), built) for layer, built in filled]  # every check first
        for arrays, built in values:
            if built.assign is not None and arrays:
                built.assign(arrays)
    model = KerasGraph(modules, nodes, len(inputs), outputs, channels_last=channels_last)
    #: Keras input shapes (batch excluded, channels last; None where free) and the config it was built from.
    model.input_shapes = [tuple(shape_of[i]) for i in range(len(inputs))]  # type: ignore[assignment]
    model.keras_config = config  # type: ignore[assignment]
    return model.eval()


def _build_layer(layer: _Layer, shapes: list[Shape], flatten_plain: set, flattened_from: Optional[Shape],
                 budget: _Budget) -> _Built:
    cls, shape = layer.cls, shapes[0]
    try:
        if cls in _CONV_LAYERS:
            return _build_conv(layer, shape, _CONV_LAYERS[cls], budget)
        if cls in _DEPTHWISE_LAYERS:
            return _build_depthwise(layer, shape, _DEPTHWISE_LAYERS[cls], budget)
        if cls in _SEPARABLE_LAYERS:
            return _build_separable(layer, shape, _SEPARABLE_LAYERS[cls], budget)
        if cls == "Dense":
            return _build_dense(layer, shape, flattened_from, budget)
        if cls == "BatchNormalization":
            return _build_batchnorm(layer, shape, budget)
        return _build_simple(layer, shapes, flatten_plain)
    except (TypeError, KeyError, AttributeError, IndexError, OverflowError) as error:  # a malformed config entry
        raise ValueError(f"layer {layer.name!r} ({cls}) has a malformed config: {error}") from None


# ----------------------------------------------------------------------------- public entry points


def read_keras_config(path: Union[str, os.PathLike], *, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """The model config (parsed JSON) of a ``.keras`` or ``.h5`` file, without building anything."""
    with _open(Path(path), max_bytes) as (config, _):
        return config


def from_keras(path_or_model: Any, *, channels_last: bool = False, max_bytes: int = DEFAULT_MAX_BYTES) -> KerasGraph:
    """Import a Keras model as a PyTorch module built from sepconv and torch layers.

    ``path_or_model`` is a Keras 3 ``.keras`` archive, a legacy ``.h5``
    model file, or an in-memory Keras model (saved to a temporary ``.keras``
    file with its own ``save`` method, then read like any file). The file is
    read as data (JSON config and HDF5 weights); nothing in it is executed.

    Each Keras layer is one node of the graph, except that a convolution
    followed by a BatchNormalization that alone reads it, and the activation
    and next convolution after that (each the only reader of the one
    before), form one ``nn.Sequential`` node named after its first layer,
    its children named after the Keras layers; BatchNorm folding and int8
    quantization then treat them as neighbours.

    The result is in eval mode. It takes NCHW (channels-first) inputs and
    returns channels-first outputs for tensors of rank >= 3; with
    ``channels_last=True`` it takes and returns Keras' NHWC layout instead.
    ``max_bytes`` caps the uncompressed size of the weights file.

    Raises ``ValueError`` for an unsupported layer (listing every one, before
    anything is built), a Lambda layer or custom object (naming it), a
    missing or wrongly shaped weight, a malformed file or one over the size
    limits; ``ImportError`` if h5py is missing.
    """
    if not isinstance(channels_last, bool):
        raise ValueError(f"channels_last must be True or False, got {channels_last!r}")
    if not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")
    if isinstance(path_or_model, (str, os.PathLike)):
        with _open(Path(path_or_model), max_bytes) as (config, store):
            # float16 weights take 2 bytes: a file within max_bytes holds at most max_bytes // 2 of them
            return build_from_config(config, store, channels_last=channels_last, max_weights=max_bytes // 2)
    if hasattr(path_or_model, "save") and hasattr(path_or_model, "get_config"):
        tmp = tempfile.mkdtemp(prefix="sepconv-keras-")
        try:
            path = os.path.join(tmp, "model.keras")
            path_or_model.save(path)
            return from_keras(path, channels_last=channels_last, max_bytes=max_bytes)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    raise ValueError(f"path_or_model must be a path to a .keras/.h5 file or a Keras model, got "
                     f"{type(path_or_model).__name__}")
