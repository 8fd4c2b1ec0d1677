"""The output directory of ``sepconv compare``: default name, checks before writing, ``--resume``/``--overwrite``."""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from dataclasses import fields
from pathlib import Path

from ..utils.lock import LOCK_NAME
from .config import RESUMABLE_CHANGES, CompareConfig, config_from_record

#: File written first into an output directory; marks it as a sepconv run.
RUN_MARKER = "run.json"
#: What ``--overwrite`` removes from a previous run's directory (nothing else is touched).
RUN_FILES = ("run.json", "results.json", "metrics.csv", "report.html", "accuracy.png", "loss.png", "costs.png")
RUN_DIRS = ("checkpoints", "models")


def default_out() -> Path:
    """``runs/compare-<UTC time>``: where a run goes without ``--out``."""
    return Path("runs") / f"compare-{_dt.datetime.now(_dt.timezone.utc):%Y%m%d-%H%M%S}"


def read_run_file(out: Path) -> CompareConfig:
    """The configuration saved in ``out/run.json``; ``ValueError`` naming the file when it is not a valid one."""
    marker = out / RUN_MARKER
    source = f"--resume: {str(marker)!r}"
    try:
        record = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{source} is not a readable sepconv run file: {type(error).__name__}: {error}") from None
    if not isinstance(record, dict) or "config" not in record:
        raise ValueError(f"{source} is not a sepconv run file (no 'config' object)")
    return config_from_record(record["config"], source)


def _check_resume(out: Path, config: CompareConfig) -> None:
    if not (out / RUN_MARKER).is_file():
        raise ValueError(f"--resume: --out {str(out)!r} holds no sepconv run to resume (no {RUN_MARKER})")
    previous = read_run_file(out)
    for f in fields(CompareConfig):
        if f.name not in RESUMABLE_CHANGES and getattr(previous, f.name) != getattr(config, f.name):
            raise ValueError(
                f"--resume: the run in {str(out)!r} used {f.name}={getattr(previous, f.name)!r}, this command asks "
                f"for {getattr(config, f.name)!r}; resume with the same settings or choose a new --out"
            )


def prepare_out_dir(out: Path, config: CompareConfig, *, resume: bool, overwrite: bool, write: bool = True) -> CompareConfig:
    """Check ``out`` and make it ready; return the config to run.

    * a new or empty directory is used as is;
    * a directory holding a previous run (``run.json``) is refused unless
      ``resume`` (continue it: settings other than
      :data:`~sepconv.experiments.config.RESUMABLE_CHANGES` must match) or
      ``overwrite`` (its run files are removed first, when ``write``);
    * a non-empty directory that is not a sepconv run is always refused, so
      nothing already there is lost. The lock file does not count.
    """
    out = Path(out)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the run in --out, or replace it")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {str(out)!r} exists and is not a directory")
    if resume:
        _check_resume(out, config)
        return config
    contents = [p for p in out.iterdir() if p.name != LOCK_NAME] if out.exists() else []
    if not contents:
        return config
    if not (out / RUN_MARKER).is_file():
        raise ValueError(f"--out {str(out)!r} exists, is not empty and is not a sepconv run; "
                         "choose a new or empty directory")
    if not overwrite:
        raise ValueError(f"--out {str(out)!r} holds a previous sepconv run; "
                         "pass --resume to continue it or --overwrite to replace it")
    if write:
        for name in RUN_FILES:
            if (out / name).is_file():
                (out / name).unlink()
        for name in RUN_DIRS:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
    return config
