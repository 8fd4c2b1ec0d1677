"""Knowledge distillation for :func:`sepconv.train.fit`: a teacher's soft targets and a tempered student."""

from __future__ import annotations

import math

import torch
from torch import nn


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def distillation_targets(logits: torch.Tensor, temperature: float = 1.0, hard: bool = False) -> torch.Tensor:
    """Training targets from a teacher's ``logits`` ``(N, classes)``.

    ``hard=True``: the top-1 class of each row (int64 ``(N,)``). Otherwise
    the softmax of ``logits / temperature`` as float32 rows of class
    probabilities, which :func:`~sepconv.train.fit` takes as ``train_y``.
    """
    temperature = _check_temperature(temperature)
    if logits.dim() != 2:
        raise ValueError(f"logits must be (N, classes), got shape {tuple(logits.shape)}")
    if hard:
        return logits.argmax(1)
    return torch.softmax(logits.double() / temperature, dim=1).float()


class Tempered(nn.Module):
    """``model``'s logits divided by ``temperature``: the student of distillation at that temperature.

    Trained with :func:`~sepconv.train.fit` on :func:`distillation_targets` of
    the same temperature, the loss is the cross-entropy between the
    teacher's and the student's softened distributions (Hinton, Vinyals and
    Dean 2015, "Distilling the Knowledge in a Neural Network"). Their
    ``T**2`` loss factor only rescales the gradients, and Adam's steps do not
    depend on that scale (apart from its epsilon and any weight decay), so
    it is left out.
    The trained network is ``.model``.
    """

    def __init__(self, model: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.temperature = _check_temperature(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out if self.temperature == 1.0 else out / self.temperature

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:g}"
