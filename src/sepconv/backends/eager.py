"""Eager PyTorch as an inference engine, in NCHW and channels-last, and ``torch.compile`` (opt-in)."""

from __future__ import annotations

import copy

import torch

from .engine import BuildContext, Candidate, InferenceEngine, always_available, applies_to_any_model, check_close


def _build_eager(context: BuildContext) -> dict[str, Candidate]:
    built = {"nchw": Candidate(context.base, torch.contiguous_format, "eager")}
    if context.measure and context.sample.dim() == 4:
        layout = copy.deepcopy(context.base).to(memory_format=torch.channels_last)
        built["channels_last"] = Candidate(layout, torch.channels_last, "eager")
    return built


def _build_compiled(context: BuildContext) -> dict[str, Candidate]:
    import torch._inductor.config as inductor_config

    compiled = torch.compile(context.base)
    # compiled now, not inside the timing; inductor's freezing makes the weights constants it can prepack
    with torch.no_grad(), inductor_config.patch(freezing=True):
        expected, got = context.base(context.sample), compiled(context.sample)
    check_close(got, expected, context.sample, "torch.compile's")
    return {"compile": Candidate(compiled, torch.contiguous_format, "compile")}


EAGER = InferenceEngine(
    name="eager", summary="PyTorch as it is, in NCHW and (4D inputs) channels-last",
    default=True, unavailable=always_available, applies=applies_to_any_model, build=_build_eager)

COMPILE = InferenceEngine(
    name="compile", summary="torch.compile with inductor's freezing, compiled for the sample's shape (opt-in: slow "
                            "to compile)",
    default=False, unavailable=always_available, applies=applies_to_any_model, build=_build_compiled)
