"""The ``sepconv`` command line: thin, it parses arguments, calls the library and prints.

Each command lives next to the code it drives, in a module exposing
``register(subparsers)``, which adds one sub-parser and sets
``func=run`` on it. Those modules import heavy dependencies (matplotlib,
scikit-learn, ...) inside ``run`` so that ``sepconv --help`` stays fast.

Errors from bad input (``ValueError`` and file errors raised by the
library) are printed as one line, ``sepconv CMD: error: ...``, and the
process exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

#: Modules that each register one sub-command, in the order ``--help`` lists them.
COMMAND_MODULES = (
    "sepconv.experiments.cli",
    "sepconv.cost.cli",
    "sepconv.factorize.cli",
    "sepconv.bench.cli",
    "sepconv.interop.cli",
    "sepconv.quantization.cli",
    "sepconv.models.cli",
)

# ImportError: an optional extra is missing (the message names the pip command), e.g. `sepconv convert --to cp`
# OverflowError, TypeError: a number or value torch cannot take (``--seed 99999999999999999999999``), named by the
# library's message
USAGE_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
                ImportError, OverflowError, TypeError)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="sepconv",
        description="Separable convolutions for PyTorch: costs, experiments, conversion and benchmarks.",
    )
    parser.add_argument("--version", action="version", version=f"sepconv {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def one_line(error: BaseException) -> str:
    """The first non-empty line of ``error``'s message (its type's name if it has none)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``sepconv`` console script; returns the exit status."""
    import logging

    # torch.utils.cpp_extension (imported by torch.utils.benchmark) logs "No CUDA runtime is found" on CPU-only
    # machines that have a CUDA toolkit; sepconv needs no CUDA runtime there
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except USAGE_ERRORS as error:
        print(f"sepconv {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sepconv {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
