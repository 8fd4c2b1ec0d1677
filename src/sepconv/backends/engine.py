"""The interface every execution engine implements, and what an engine hands back to ``optimize``.

An engine has a name, says whether it can run on this machine and sample
(``unavailable``: ``None`` or the reason), whether it has anything to do in a
given model (``applies``), and builds its candidate(s) (``build``).
:mod:`sepconv.backends.registry` lists the engines; :func:`sepconv.optimize`
and :func:`sepconv.tune_training` iterate over it instead of naming engines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn


@dataclass(frozen=True)
class Candidate:
    """One way to run a whole model for inference: the module, the memory format its input is put in, the engine.

    ``layer_choices`` records per-layer decisions (qualified convolution name ->
    what runs it) for engines that decide layer by layer.
    """

    module: nn.Module
    memory_format: torch.memory_format
    engine: str
    layer_choices: dict[str, str] = field(default_factory=dict)
    #: How the engine configured the candidate, for the record (e.g. ONNX Runtime's session options).
    settings: dict = field(default_factory=dict)


@dataclass
class BuildContext:
    """What an inference engine's ``build`` gets: the model to start from and what has been built so far.

    ``base`` is the eval-mode model with BatchNorm folded; engines copy it
    before changing anything. ``candidates`` holds the candidates of the
    engines built before (in registry order), by candidate name: an engine
    that wraps others (CUDA graphs) reads them.
    """

    base: nn.Module
    sample: torch.Tensor
    measure: bool
    candidates: dict[str, Candidate]


@dataclass(frozen=True)
class InferenceEngine:
    """A whole-model inference engine that :func:`sepconv.optimize` can time as candidate(s).

    ``default``: tried when ``optimize`` is not told which engines to use
    (and ``unavailable`` returns ``None`` for the sample).
    ``unavailable(sample)``: why the engine cannot run on this sample and
    machine, or ``None``.
    ``applies(model)``: whether the engine changes anything in ``model``
    (an engine that would only reproduce eager PyTorch is skipped).
    ``build(context)``: the candidates, by name; raises when the model cannot
    be run this way (``optimize`` then warns and goes on, or raises when the
    engine was asked for explicitly).
    """

    name: str
    summary: str
    default: bool
    unavailable: Callable[[torch.Tensor], Optional[str]]
    applies: Callable[[nn.Module], bool]
    build: Callable[[BuildContext], dict[str, Candidate]]


@dataclass(frozen=True)
class TrainingEngine:
    """A per-convolution training engine that :func:`sepconv.tune_training` can route a layer through.

    ``unavailable()``: why it cannot run on this machine, or ``None``.
    ``applies(conv)``: whether it can run this convolution (forward and backward).
    ``build(conv)``: routes ``conv`` through the engine, in place.
    """

    name: str
    summary: str
    unavailable: Callable[[], Optional[str]]
    applies: Callable[[nn.Module], bool]
    build: Callable[[nn.Module], None]


def always_available(*_: object) -> Optional[str]:
    """An ``unavailable`` for engines that run everywhere."""
    return None


def applies_to_any_model(_: nn.Module) -> bool:
    """An ``applies`` for engines that run any model."""
    return True


def check_close(got: torch.Tensor, expected: torch.Tensor, sample_input: torch.Tensor, what: str) -> None:
    """Raise RuntimeError when a candidate's output differs from eager's by more than the sample's precision allows.

    The largest difference is taken relative to the largest output magnitude:
    1e-2 in half precision and in float32 on CUDA with TF32 convolutions
    allowed (PyTorch's default; different algorithms round differently),
    1e-4 in float32 otherwise, 1e-8 in float64.
    """
    dtype = sample_input.dtype
    if dtype == torch.float64:
        tol = 1e-8
    elif dtype == torch.float32 and not (sample_input.is_cuda and torch.backends.cudnn.allow_tf32):
        tol = 1e-4
    else:
        tol = 1e-2
    if got.shape != expected.shape:
        raise RuntimeError(f"{what} output differs from eager's in shape: {tuple(got.shape)} vs {tuple(expected.shape)}")
    scale = float(expected.detach().abs().max().float()) if expected.numel() else 0.0
    err = float((got.detach().float() - expected.detach().float()).abs().max()) if got.numel() else 0.0
    if not err <= tol * max(scale, 1e-30):
        raise RuntimeError(f"{what} output differs from eager's (max abs difference {err:.3g}, largest output "
                           f"{scale:.3g}, tolerance {tol:g} of it)")
