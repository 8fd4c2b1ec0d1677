"""Lazy package attributes (PEP 562): public names imported from their module on first use."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose public names live in the modules ``exports`` maps them to.

    A name is imported from its module on first access and then cached in the
    package's namespace, so later lookups cost nothing. Keeping heavy imports
    (torch, ONNX Runtime) out of a package's ``__init__`` this way lets
    ``sepconv --help`` start without them.
    """
    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(exports))

    return __getattr__, __dir__
