"""The top-level package: every public name resolves, and importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import sepconv


@pytest.mark.parametrize("name", sorted(set(sepconv.__all__) - {"__version__"}))
def test_public_name_resolves_to_its_defining_module(name):
    value = getattr(sepconv, name)
    assert getattr(value, "__name__", name).split(".")[-1] == name


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        sepconv.no_such_name  # noqa: B018


def test_import_sepconv_does_not_import_torch():
    code = "import sys, sepconv; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_dir_lists_lazy_names():
    assert {"optimize", "profile", "convert", "SeparableConv2d"} <= set(dir(sepconv))


def test_cli_help_does_not_import_torch():
    # `sepconv --help` builds every sub-command's parser; none of them may pull in torch to do so
    code = "import sys, sepconv.cli as c; c.build_parser(); print(sorted(m for m in ('torch', 'onnxruntime', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("package", ["sepconv.quantization", "sepconv.interop", "sepconv.cost", "sepconv.factorize", "sepconv.bench", "sepconv.models"])
def test_subpackage_lazy_names_resolve(package):
    import importlib

    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError, match="nope"):
        module.nope  # noqa: B018


@pytest.mark.parametrize(("package", "name"), [("sepconv.cost", "profile"), ("sepconv.factorize", "convert")])
def test_submodule_import_does_not_replace_the_function_of_the_same_name(package, name):
    import importlib

    importlib.import_module(f"{package}.{name}")
    assert callable(getattr(importlib.import_module(package), name))
