"""Hypothesis fuzz of every sub-command's arguments (``compare`` is fuzzed in test_compare): exit 0 or 2, one line
of error and no traceback, in bounded time.

The commands run in-process through :func:`sepconv.cli.main`. Where a valid command would go on to minutes of
work (timing engines, factorizing, training), the expensive step is replaced by a stub that raises ``Accepted``:
reaching it means every argument was accepted, which is a correct outcome; everything before it (parsing,
validation, model references, estimates on the meta device, data loading) runs for real.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sepconv.cli import main

pytest.importorskip("safetensors", reason="model files are safetensors (the experiments extra)")

#: A generous bound for one command; a hang or a runaway allocation exceeds it by far.
BOUND_S = 60

NUMBERS = ["0", "1", "2", "-1", "3", "64", "2147483648", "99999999999999999999999", "1e9", "inf", "nan", "-inf", "",
           "abc", "0x10", "1.5", " 7 "]
SHAPES = ["3x8x8", "1x8x8", "3x16x16", "15x15x3", "hwc:8x8x3", "chw:3x8x8", "15x15", "", "x", "3x0x8",
          "hwc:20000x20000x3", "3x20000x20000", "8x3x8x8", "hwc:", "3\u00d78\u00d78", "-3x8x8", "3x8x8x8x8",
          "nchw:3x8x8", "3x99999999999999999999x8"]
MODELS = ["vgg_blocks", "mobilenet_v2", "bogus", "os:getcwd", "os.path:sep", "json:JSONDecoder", "", ":", "a:b:c",
          "/nonexistent/file.py:f", "torchvision:nope", "no_such_module_q:f", "x.safetensors", "json:nope"]
KWARGS = ['{"width": 0.125}', '{"width": 1e300}', '{"image_size": 0}', "[1]", "{", '{"num_classes": -1}', "null",
          '{"alpha": 0.25}', '{"nope": 1}', '""', '{"width": "x"}']


class Accepted(Exception):
    """Raised by a stub where the real command would start its long work."""


def stub(*args, **kwargs):
    raise Accepted


def patch(monkeypatch, module: str, name: str) -> None:
    monkeypatch.setattr(importlib.import_module(module), name, stub)


def flag_values(flags: dict) -> st.SearchStrategy:
    """A random subset of ``flags`` (name -> list of values, or None for a switch) as an argument list."""
    def build(chosen):
        out = []
        for name, value in chosen:
            out += [name] if value is None else [name, value]
        return out

    items = [st.tuples(st.just(name), st.sampled_from(values) if values else st.none())
             for name, values in flags.items()]
    return st.lists(st.one_of(*items), max_size=5).map(build)


def run(argv: list[str]) -> None:
    err = io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit:  # argparse's own usage errors
            code = exit.code
        except Accepted:
            code = 0
    elapsed = time.monotonic() - start
    text = err.getvalue()
    assert code in (0, 2), (argv, code, text)
    assert "Traceback" not in text, (argv, text)
    if code == 2 and "usage:" not in text:
        errors = [line for line in text.splitlines() if ": error: " in line]
        assert len(errors) == 1 and errors[0].startswith("sepconv "), (argv, text)
        assert "weights_only=False" not in text
    assert elapsed < BOUND_S, (argv, elapsed)


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])


@SETTINGS
@given(args=flag_values({"--input": SHAPES, "--kernel": NUMBERS + ["3x3", "3x"], "--filters": NUMBERS,
                    "--stride": NUMBERS, "--dilation": NUMBERS, "--padding": ["same", "valid", "full", "1", "-1"],
                    "--depth-multiplier": NUMBERS, "--rank": NUMBERS, "--batch": NUMBERS,
                    "--dtype": ["float32", "bfloat16", "float99", "int8", "Tensor"], "--json": None,
                    "--channels-last": None, "--no-bias": None, "--depthwise-bias": None}))
def test_fuzz_cost(args):
    run(["cost", *args])


@SETTINGS
@given(model=st.sampled_from(MODELS),
       args=flag_values({"--input": SHAPES, "--num-classes": NUMBERS, "--kwargs": KWARGS,
                         "--variant": ["standard", "separable", "bogus", ""], "--weights": ["", "nope.pt", "x.txt"],
                         "--format": ["json", "csv"], "--channels-last": None, "--list": None}))
def test_fuzz_profile(model, args, monkeypatch):
    monkeypatch.setenv("SEPCONV_MAX_BYTES", str(4 << 30))
    run(["profile", model, *args])


@SETTINGS
@given(model=st.sampled_from(MODELS),
       output=st.sampled_from(["out.safetensors", "", "out.txt", "missing_dir/x.safetensors"]),
       args=flag_values({"--to": ["separable", "spatial", "cp", "bogus"], "--depth-multiplier": NUMBERS,
                    "--rank": NUMBERS, "--input": SHAPES, "--include": ["(", "features", ""], "--min-kernel": NUMBERS,
                    "--data": ["digits", "cifar10", "imagefolder", "nope.safetensors", ""], "--data-dir": ["", "/nope"],
                    "--calibrate": None, "--samples": NUMBERS, "--finetune-epochs": NUMBERS,
                    "--finetune-lr": NUMBERS, "--distill-temperature": NUMBERS, "--hard-labels": None,
                    "--seed": NUMBERS, "--kwargs": KWARGS, "--batch-size": NUMBERS}))
def test_fuzz_convert(model, output, args, monkeypatch, tmp_path):
    monkeypatch.setenv("SEPCONV_MAX_BYTES", str(4 << 30))
    monkeypatch.chdir(tmp_path)
    patch(monkeypatch, "sepconv.factorize.convert", "convert")
    run(["convert", model, output, *args])


@SETTINGS
@given(args=flag_values({"--suite": ["none", "vgg_blocks", "bogus"], "--shape": ["4x8x8", "4x8", "0x1x1", "3x3x3x3x3x3",
                                                                           "99999999999999999999x2x2"],
                    "--batch": NUMBERS, "--suite-batch": NUMBERS, "--rounds": NUMBERS, "--threads": NUMBERS,
                    "--device": ["cpu", "cuda", "cuda:99", "gpu"], "--dtype": ["float32", "float16", "int8"],
                    "--model": MODELS, "--model-input": SHAPES, "--kwargs": KWARGS, "--quick": None,
                    "--format": ["json", "csv", "xml"], "--verbose": None}))
def test_fuzz_bench(args, monkeypatch):
    monkeypatch.setenv("SEPCONV_MAX_BYTES", str(4 << 30))
    import torch

    patch(monkeypatch, "sepconv.bench.roofline", "measure_roofline")
    threads = torch.get_num_threads()
    try:
        run(["bench", *args])
    finally:
        torch.set_num_threads(threads)


@SETTINGS
@given(model=st.sampled_from(MODELS),
       args=flag_values({"--input": SHAPES, "--batch": NUMBERS, "--rounds": NUMBERS, "--threads": NUMBERS,
                         "--kwargs": KWARGS, "--num-classes": NUMBERS}))
def test_fuzz_optimize(model, args, monkeypatch):
    monkeypatch.setenv("SEPCONV_MAX_BYTES", str(4 << 30))
    import torch

    patch(monkeypatch, "sepconv.backends.optimize", "optimize")
    threads = torch.get_num_threads()
    try:
        run(["optimize", model, *args])
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("argv", [["--seed", "99999999999999999999999"], ["profile", "vgg_blocks", "--input", "15x15"],
                                  ["convert", "vgg_blocks", "o.safetensors", "--rank", "3"],
                                  ["convert", "vgg_blocks", "o.safetensors", "--input", ""]])
def test_known_cases_exit_2_with_one_line(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run(argv)
