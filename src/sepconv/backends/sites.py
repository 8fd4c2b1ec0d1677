"""Where engines can act in a model: plain 2D convolutions and the ReLU/ReLU6 directly after each.

The oneDNN, cuDNN and training engines all replace an ``nn.Conv2d`` in place
and may absorb the activation that follows it; this module answers the two
questions they share: which convolutions an engine can take
(:func:`plain_conv2d`), and which activation directly follows each one
(:func:`conv_sites`).
"""

from __future__ import annotations

from typing import Callable, Optional

from torch import nn

from ..layers.separable import SeparableConvNd

#: Activations an engine may apply to a convolution's output in the same pass.
FUSABLE_ACTIVATIONS = (nn.ReLU, nn.ReLU6)


def plain_conv2d(conv: nn.Module) -> bool:
    """Whether ``conv`` is an ``nn.Conv2d`` (not transposed) with integer, zero padding: what engines can replace."""
    return (isinstance(conv, nn.Conv2d) and not isinstance(conv, nn.ConvTranspose2d)
            and not isinstance(conv.padding, str) and conv.padding_mode == "zeros")


def is_identity(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.Identity`` (a folded norm or a removed activation)."""
    return isinstance(module, nn.Identity)


def _next_activation(parent: nn.Sequential, name: str) -> Optional[tuple[nn.Module, str]]:
    """The fusable activation right after ``parent.name`` (Identity modules skipped), as (parent, name), or None."""
    names = list(parent._modules)
    following = [n for n in names[names.index(name) + 1:] if not is_identity(parent._modules[n])]
    return (parent, following[0]) if following and type(parent._modules[following[0]]) in FUSABLE_ACTIVATIONS else None


def conv_sites(model: nn.Module, usable: Callable[[nn.Module], bool] = lambda conv: True
               ) -> list[tuple[nn.Module, str, Optional[tuple[nn.Module, str]]]]:
    """Every 2D convolution ``usable`` accepts (default: all that :func:`plain_conv2d` accepts) as (parent, name, activation site or None), the
    activation being a ReLU or ReLU6 that can be fused.

    An activation is fusable when it directly follows the convolution: the next
    non-Identity module of an ``nn.Sequential``; a separable layer's
    ``dw_act``/``pw_act`` with an Identity norm between (BatchNorm folded);
    or, for a separable layer whose ``pw_norm`` and ``pw_act`` are Identity,
    the activation that follows the layer in its ``nn.Sequential``.
    """
    after: dict[int, tuple[nn.Module, str]] = {}  # id(module) -> the activation following it in a Sequential
    for parent in model.modules():
        if isinstance(parent, nn.Sequential):
            for name in parent._modules:
                site = _next_activation(parent, name)
                if site is not None:
                    after[id(parent._modules[name])] = site
    sites: list = []
    seen: set[int] = set()
    for parent in model.modules():
        if not isinstance(parent, SeparableConvNd):
            continue
        for conv_name, norm_name, act_name in (("depthwise", "dw_norm", "dw_act"), ("pointwise", "pw_norm", "pw_act")):
            conv, norm, act = (getattr(parent, n) for n in (conv_name, norm_name, act_name))
            if not (plain_conv2d(conv) and usable(conv)):
                continue
            site = None
            if is_identity(norm) and type(act) in FUSABLE_ACTIVATIONS:
                site = (parent, act_name)
            elif conv_name == "pointwise" and is_identity(norm) and is_identity(act):
                site = after.get(id(parent))
            sites.append((parent, conv_name, site))
            seen.add(id(conv))
    for name, conv in model.named_modules():
        if name and id(conv) not in seen and plain_conv2d(conv) and usable(conv):
            parent_name, _, child = name.rpartition(".")
            sites.append((model.get_submodule(parent_name), child, after.get(id(conv))))
            seen.add(id(conv))
    return sites
