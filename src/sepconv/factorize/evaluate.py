"""Whole-network figures of a conversion: how far the converted network's outputs are from the original's."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

#: Top-1 agreement with the original below which a conversion is reported as far from it.
AGREEMENT_WARNING = 0.8


@torch.no_grad()
def outputs(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``model(x)`` in eval mode, in batches, as float64 on the CPU (the mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i:i + batch_size]).double().cpu() for i in range(0, x.shape[0], batch_size)])
    finally:
        model.train(was_training)


def compare_networks(original: nn.Module, converted: nn.Module, x: torch.Tensor,
                     y: Optional[torch.Tensor] = None, batch_size: int = 256) -> dict:
    """Whole-network figures of ``converted`` against ``original`` on the held-out inputs ``x`` (labels ``y``).

    ``output_error``: ``||f_conv(x) - f_orig(x)||_F / ||f_orig(x)||_F`` over the whole batch of outputs;
    ``top1_agreement``: fraction of inputs whose arg-max class is the same; with labels, ``accuracy_original``
    and ``accuracy_converted`` (fractions) and ``chance`` (1 / number of classes).
    """
    if x.shape[0] == 0:
        raise ValueError("held-out inputs are empty")
    ref, out = outputs(original, x, batch_size), outputs(converted, x, batch_size)
    if ref.shape != out.shape:
        raise ValueError(f"the converted network outputs {tuple(out.shape)}, the original {tuple(ref.shape)}")
    ref2, out2 = ref.reshape(ref.shape[0], -1), out.reshape(out.shape[0], -1)
    denom = float(ref2.norm())
    figures = {
        "samples": int(x.shape[0]),
        "output_error": float((out2 - ref2).norm()) / denom if denom else float((out2 - ref2).norm()),
        "top1_agreement": float((out2.argmax(1) == ref2.argmax(1)).double().mean()),
    }
    if y is not None:
        figures["accuracy_original"] = float((ref2.argmax(1) == y).double().mean())
        figures["accuracy_converted"] = float((out2.argmax(1) == y).double().mean())
        figures["chance"] = 1.0 / ref2.shape[1]
    return figures


def warnings_for(figures: dict) -> list[str]:
    """Plain-language warnings when the converted network is far from the original or near chance."""
    found = []
    if figures["top1_agreement"] < AGREEMENT_WARNING:
        found.append(f"the converted network agrees with the original on only {100 * figures['top1_agreement']:.1f} % "
                     f"of held-out inputs (output error {figures['output_error']:.2f}); fine-tune it "
                     f"(--finetune-epochs N) or convert fewer layers (--include/--exclude)")
    if "accuracy_converted" in figures:
        chance = figures["chance"]
        if figures["accuracy_converted"] < max(2 * chance, chance + 0.1) and figures["accuracy_original"] > 2 * chance:
            found.append(f"the converted network is near chance: accuracy {100 * figures['accuracy_converted']:.1f} % "
                         f"(chance {100 * chance:.1f} %, original {100 * figures['accuracy_original']:.1f} %); "
                         f"it needs fine-tuning before use")
    return found
