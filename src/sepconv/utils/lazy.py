"""Lazy package attributes (PEP 562): public names imported from their module on first use."""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class _LazyPackage(types.ModuleType):
    """A package whose exported names are never replaced by a submodule of the same name.

    ``import sepconv.cost.profile`` sets the attribute ``profile`` of
    ``sepconv.cost`` to the submodule; the package exports the function
    ``profile`` under that name, so the submodule is not stored there.
    """

    def __setattr__(self, key: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and key in getattr(self, "_lazy_exports", ()):
            return
        super().__setattr__(key, value)


def lazy_package(package: str, exports: dict[str, str]) -> None:
    """Make the names in ``exports`` attributes of ``package``, each imported from its module on first use.

    ``exports`` maps a public name to the module that defines it, absolute
    (``sepconv.layers``) or relative to ``package`` (``.formulas``). The value
    is cached in the package's namespace, so later lookups cost nothing.
    Keeping heavy imports (torch, ONNX Runtime) out of a package's
    ``__init__`` this way lets ``sepconv --help`` start without them. Call it
    at the end of the package's ``__init__``: ``lazy_package(__name__, _EXPORTS)``.
    """
    module = sys.modules[package]

    def __getattr__(name: str) -> Any:
        source = exports.get(name)
        if source is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source, package), name)
        setattr(module, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(module)) | set(exports))

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    module.__dir__ = __dir__  # type: ignore[method-assign]
    module._lazy_exports = frozenset(exports)  # type: ignore[attr-defined]
    module.__class__ = _LazyPackage
