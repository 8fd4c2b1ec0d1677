"""Every registered engine computes what eager PyTorch computes, on the same models and layers.

The registry is the single list :func:`sepconv.optimize` and
:func:`sepconv.tune_training` iterate over, so a new engine listed there is
checked here without a test of its own. An engine that cannot run on this
machine or sample is skipped with its own reason.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import sepconv
from sepconv.backends import optimize as optimize_module
from sepconv.backends.engine import BuildContext, check_close
from sepconv.backends.registry import INFERENCE_ENGINES, TRAINING_ENGINES, inference_engine


def separable_net() -> nn.Module:
    """BatchNorm and ReLU between and after the steps, a residual-free MobileNet-like stack."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        sepconv.SeparableConv2d(8, 16, 3, padding="same", bias=False, dw_norm="batchnorm", dw_act="relu",
                                pw_norm="batchnorm", pw_act="relu6"),
        sepconv.SeparableConv2d(16, 16, 3, stride=2, padding="same"),  # nothing between the steps: mergeable
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))


def standard_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


MODELS = {"separable": separable_net, "standard": standard_net}


def trained_statistics(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so that folding them is exercised."""
    torch.manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 16, 16) * 2 + 0.5)
    return model.eval()


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("engine", INFERENCE_ENGINES, ids=lambda e: e.name)
def test_every_inference_engine_matches_eager(engine, model_name):
    torch.manual_seed(0)
    model = trained_statistics(MODELS[model_name]())
    x = torch.randn(2, 3, 16, 16)
    reason = engine.unavailable(x)
    if reason is not None:
        pytest.skip(f"{engine.name} {reason}")
    if not engine.applies(model):
        pytest.skip(f"{engine.name} has nothing to do in the {model_name} network")
    base = copy.deepcopy(model)
    sepconv.fold_batchnorm(base)
    context = BuildContext(base, x, measure=True, candidates={})
    for before in INFERENCE_ENGINES[:INFERENCE_ENGINES.index(engine)]:  # engines that wrap others read these
        if before.default and before.unavailable(x) is None and before.applies(base):
            context.candidates.update(before.build(context))
    built = engine.build(context)
    assert built and all(c.engine == engine.name for c in built.values())
    with torch.no_grad():
        expected = model(x)
        for name, candidate in built.items():
            check_close(candidate.module(x.contiguous(memory_format=candidate.memory_format)), expected, x,
                        f"{engine.name}'s {name} candidate")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in base.modules())  # built from the folded model


@pytest.mark.parametrize("engine", TRAINING_ENGINES, ids=lambda e: e.name)
@pytest.mark.parametrize("kind", ["pointwise", "depthwise", "grouped", "separable"])
def test_every_training_engine_matches_eager_forward_and_backward(engine, kind):
    reason = engine.unavailable()
    if reason is not None:
        pytest.skip(f"{engine.name}: {reason}")
    torch.manual_seed(0)
    conv = {"pointwise": nn.Conv2d(8, 12, 1), "depthwise": nn.Conv2d(8, 8, 3, padding=1, groups=8),
            "grouped": nn.Conv2d(8, 8, 3, padding=1, groups=2),
            "separable": sepconv.SeparableConv2d(8, 12, 3, padding=1, depthwise_bias=True)}[kind]
    if not engine.applies(conv):
        pytest.skip(f"{engine.name} does not run a {kind} convolution")
    routed = copy.deepcopy(conv)
    engine.build(routed)
    x = torch.randn(2, 8, 9, 7).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(2, conv.out_channels, 9, 7)
    outs = []
    for module in (conv, routed):
        xi = x.clone().requires_grad_(True)
        y = module(xi)
        y.backward(grad)
        outs.append((y.detach(), xi.grad, *(p.grad for p in module.parameters())))
    for got, expected in zip(outs[1], outs[0]):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_the_registry_names_each_engine_once_and_optimize_offers_them_all():
    names = [e.name for e in INFERENCE_ENGINES]
    assert len(names) == len(set(names)) and set(names) == set(optimize_module.BACKENDS)
    assert len({e.name for e in TRAINING_ENGINES}) == len(TRAINING_ENGINES)
    assert inference_engine("eager").default and not inference_engine("compile").default
    with pytest.raises(ValueError, match="unknown engine 'nope'; registered"):
        inference_engine("nope")
