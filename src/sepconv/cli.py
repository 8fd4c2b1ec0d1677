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
USAGE_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
                ImportError)


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``sepconv`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except USAGE_ERRORS as error:
        print(f"sepconv {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sepconv {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
