"""What a comparison will build, checked before anything is allocated or written: model, variants, device, cost.

:func:`validate_config` checks a :class:`~sepconv.experiments.config.CompareConfig`
against its field metadata and against what is installed (data sets, zoo
models and their variants, conversion targets, devices).
:func:`estimate` sizes each variant from :func:`sepconv.cost.profile` run on
PyTorch's ``meta`` device (no memory is allocated) and refuses a run whose
training memory or compute is beyond reason, with the estimate in the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..utils.memory import memory_limit
from .config import CONVERTED, CompareConfig, check_applies, check_fields

#: Largest estimated training compute accepted (3 x forward MACs x training images x epochs, all variants).
MAX_TRAINING_MACS = 10**18
#: Bytes per float32 value.
FLOAT_BYTES = 4


@dataclass(frozen=True)
class Estimate:
    """Size of one variant: parameters, forward MACs and activation values per image, training memory (bytes)."""

    params: int
    macs: int
    activations: int
    train_bytes: int


def resolve_device(name: str) -> "torch.device":  # noqa: F821
    """``cpu``, ``cuda`` (error when unavailable) or ``auto`` (CUDA when available)."""
    import torch

    if name not in ("cpu", "cuda", "auto") and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise ValueError(f"--device must be cpu, cuda, cuda:N or auto, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {name} requested but CUDA is not available (use --device cpu or auto)")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return torch.device(name)


def model_info(name: str) -> Any:
    """The zoo's ``ModelInfo`` of ``name``; ``ValueError`` listing the models otherwise."""
    from ..models import list_models

    infos = list_models()
    if name not in infos:
        raise ValueError(f"--model must be one of {', '.join(sorted(infos))}; got {name!r}")
    return infos[name]


def build_kwargs(config: CompareConfig, info: Any, data_shape: tuple[int, int, int]) -> dict[str, Any]:
    """Zoo options from the data and ``--width``: ``image_size`` where the model takes it, and the
    channel multiplier as ``width`` (VGG blocks) or ``alpha`` (the MobileNets)."""
    options = tuple(info.options)
    kwargs: dict[str, Any] = {}
    if "image_size" in options:
        kwargs["image_size"] = data_shape[1] if data_shape[1] == data_shape[2] else [data_shape[1], data_shape[2]]
    if config.width is not None:
        multiplier = next((name for name in ("width", "alpha") if name in options), None)
        if multiplier is None:
            raise ValueError(f"--width: model {config.model!r} has no channel multiplier "
                             f"(its options: {', '.join(options) or 'none'})")
        kwargs[multiplier] = config.width
    return kwargs


def _ordered_variants(config: CompareConfig, info: Any) -> list[str]:
    available = list(info.variants)
    variants = list(config.variants or available)
    valid = available + ([CONVERTED] if "standard" in available else [])
    unknown = [v for v in variants if v not in valid]
    if unknown:
        raise ValueError(f"--variants: {', '.join(map(repr, unknown))} not available for model {config.model!r}; "
                         f"valid: {', '.join(valid)}")
    if CONVERTED in variants:
        if "standard" not in variants:
            raise ValueError(f"--variants: {CONVERTED!r} converts the run's trained 'standard' network; "
                             f"add 'standard' to --variants (got {','.join(variants)})")
        if variants.index(CONVERTED) < variants.index("standard"):  # it needs the trained standard network
            variants.remove(CONVERTED)
            variants.insert(variants.index("standard") + 1, CONVERTED)
    return variants


def validate_config(config: CompareConfig) -> tuple[Any, list[str]]:
    """Check every setting before anything is loaded or written; the zoo's ``ModelInfo`` and the variants to train.

    Field types, finiteness and bounds come from the config's metadata; then
    the names are checked against the installed data sets, models and
    conversion targets, and settings the run would ignore are refused.
    """
    from ..data import DATASETS
    from ..factorize.convert import TARGETS

    check_fields(config)
    if config.dataset not in DATASETS:
        raise ValueError(f"--dataset must be one of {', '.join(DATASETS)}; got {config.dataset!r}")
    if config.dataset not in ("digits", "fashion-mnist") and not config.data_dir:
        raise ValueError(f"--dataset {config.dataset} needs --data-dir DIR")
    if config.convert_to not in TARGETS:
        raise ValueError(f"--convert-to must be one of {', '.join(TARGETS)}; got {config.convert_to!r}")
    check_applies(config)
    info = model_info(config.model)
    return info, _ordered_variants(config, info)


def estimate_variant(model_name: str, variant: str, shape: tuple[int, int, int], num_classes: int,
                     kwargs: dict[str, Any], batch_size: int) -> Estimate:
    """Size ``variant`` on the meta device: parameters, MACs and activation values per image, training bytes.

    Training memory is taken as float32 weights, gradients and Adam's two
    moments (4 x params) plus each activation kept for the backward pass and
    its gradient (2 x activations x batch).
    """
    import torch

    from ..cost import profile
    from ..models import build_model

    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build_model(model_name, variant, num_classes=num_classes, in_channels=shape[0], **kwargs)
        prof = profile(model.eval(), shape)
    activations = sum(_numel(row.output_shape) for row in prof.rows)
    params, macs = int(prof.total_params), int(prof.total_macs)
    return Estimate(params, macs, activations, FLOAT_BYTES * (4 * params + 2 * activations * batch_size))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape[1:]:  # per image
        n *= int(s)
    return n


def estimate(config: CompareConfig, variants: list[str], shape: tuple[int, int, int], num_classes: int,
             train_size: int, kwargs: dict[str, Any]) -> dict[str, Estimate]:
    """:class:`Estimate` per variant (``converted`` sized as ``standard``, an upper bound); ``ValueError`` when
    one variant's training memory exceeds this machine's memory or the whole run's compute exceeds
    :data:`MAX_TRAINING_MACS`."""
    sizes: dict[str, Estimate] = {}
    for variant in variants:
        built = "standard" if variant == CONVERTED else variant
        try:
            sizes[variant] = sizes.get(built) or estimate_variant(config.model, built, shape, num_classes, kwargs,
                                                                  config.batch_size)
        except (RuntimeError, TypeError, ValueError) as error:
            raise ValueError(f"--model {config.model} (variant {variant}, {kwargs}) cannot be built for "
                             f"{'x'.join(map(str, shape))} inputs of --dataset {config.dataset}: {error}") from None
    total = memory_limit()
    for variant, size in sizes.items():
        if size.train_bytes > total:
            raise ValueError(
                f"--model {config.model} variant {variant} with {kwargs} and --batch-size {config.batch_size} would "
                f"need about {size.train_bytes / 2**30:.1f} GiB to train ({size.params:,} parameters, "
                f"{size.activations:,} activation values per image), more than this machine's "
                f"{total / 2**30:.1f} GiB; use a smaller --width, --image-size or --batch-size")
    work = sum(3 * size.macs * train_size * config.epochs_of(v) for v, size in sizes.items())
    if work > MAX_TRAINING_MACS:
        raise ValueError(f"the run would take about {work:.2e} multiply-accumulates to train "
                         f"(3 x MACs/image x {train_size} images x epochs, all variants), more than "
                         f"{MAX_TRAINING_MACS:.0e}; use a smaller --width, --image-size or --epochs")
    return sizes


def probe_costs(config: CompareConfig, variants: list[str], shape: tuple[int, int, int], num_classes: int,
                kwargs: dict[str, Any], sizes: dict[str, Estimate], convert: Any) -> dict[str, tuple[int, int]]:
    """(params, MACs per image) of each variant, from :func:`sepconv.cost.profile`.

    The built variants' figures are those of :func:`estimate` (the same
    profile, run on the meta device); ``converted`` is built for real from a
    fresh standard network with ``convert(model, init="fresh")``, so a
    conversion that cannot apply fails here, before anything is written.
    """
    import torch

    from ..cost import profile
    from ..models import build_model

    costs = {v: (sizes[v].params, sizes[v].macs) for v in variants if v != CONVERTED}
    if CONVERTED in variants:
        with torch.random.fork_rng(devices=[]):
            try:
                probe = build_model(config.model, "standard", num_classes=num_classes, in_channels=shape[0], **kwargs)
                prof = profile(convert(probe, init="fresh")[0].eval(), shape)
            except (RuntimeError, TypeError, ValueError) as error:
                raise ValueError(f"--model {config.model} (variant {CONVERTED}, {kwargs}) cannot be built for "
                                 f"{'x'.join(map(str, shape))} inputs of --dataset {config.dataset}: {error}") from None
        costs[CONVERTED] = (int(prof.total_params), int(prof.total_macs))
    return costs
