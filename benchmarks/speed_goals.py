"""Whether the CPU speed goals are met, read from `bench_isa.py` and `bench_fused_training.py` records.

    python benchmarks/speed_goals.py RECORD [RECORD ...] [--out FILE.json]
    python benchmarks/speed_goals.py --machine-name

A RECORD is a record's directory or its JSON file (`isa.json`, `fused_training.json`). Every pass of every record
is checked against the goals the project holds its CPU engines to (per machine kind, with the ISA named):

* forward, `bench_isa.py`: realized at least 0.85 at the median over the suite shapes, at least 0.9 of the
  fused-layer roofline ceiling on every shape, and never slower than ONNX Runtime alone on any shape, each for
  `sepconv.optimize`'s choice (the `sepconv` candidate); the fused kernel's builds are shown beside it. The
  ceiling takes the memory bandwidth measured around each shape's rounds where the record has it
  (`of_ceiling_around`; a shared host's bandwidth moves within a pass), else the pass's roofline (older records).
  Where the record has each shape's `placement` (two threads, the hop between them), the shapes run with the threads
  far apart are marked, and whether every other shape meets the ceiling goal is shown beside the goal;
* training, `bench_fused_training.py`: the layer as `tune_training` leaves it at least 0.8 of its training GEMM
  ceiling at the median.

It prints one Markdown table per kind (a row per pass, the shapes that miss a goal named) and, with `--out`,
writes the same as JSON. `--machine-name` prints this machine's name as record names use it (`zen4-avx512`,
`zen3-avx2`, `zen4-avx2cap` under the AVX2 caps of `benchmarks/README.md`; `machine_name`). Exit code 2 for a
path that is no such record. `run_cpu_goals.sh` takes the records and runs this on them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

from sepconv.utils.io import atomic_write_bytes

FORWARD_MEDIAN = 0.85  # realized, median over the suite shapes
FORWARD_OF_CEILING = 0.9  # of the fused-layer roofline ceiling, every shape
ONNXRUNTIME_RATIO = 1.0  # optimize's time / ONNX Runtime alone's, every shape
TRAINING_MEDIAN = 0.8  # tuned step / training GEMM ceiling, median over the suite shapes
RECORD_FILES = ("isa.json", "fused_training.json")

# AMD family 25 (0x19) models by core: Zen 4 at 0x10-0x1f (Genoa), 0x60-0x7f (Raphael, Phoenix), 0xa0-0xaf
# (Bergamo, Siena); the others Zen 3 (Milan 0x01, Vermeer 0x21, Rembrandt 0x44, Cezanne 0x50)
_ZEN4_MODELS = (range(0x10, 0x20), range(0x60, 0x80), range(0xA0, 0xB0))
# Intel family 6 models by core (Intel's SDM, volume 4, table 2-1): the Xeon server cores and the recent client ones
_INTEL_CORES = {0x55: "skx", 0x6A: "icx", 0x6C: "icx", 0x8F: "spr", 0xCF: "emr", 0xAD: "gnr", 0xAE: "gnr",
                0xAF: "srf", 0x7E: "icl", 0x8C: "tgl", 0x8D: "tgl", 0x97: "adl", 0x9A: "adl", 0xB7: "rpl",
                0xBA: "rpl", 0xBF: "rpl", 0xAA: "mtl", 0xC5: "arl", 0xC6: "arl", 0xBD: "lnl"}


def core_name(family_model: str | None, arch: str | None = None) -> str:
    """The CPU's core as record names give it, from ``machine_info()['cpu_family_model']`` ("25/17"): ``zen2`` ..
    ``zen5`` for AMD families 23-26; Intel's by its code name (``spr`` Sapphire Rapids, ``emr`` Emerald Rapids,
    ``adl`` Alder Lake, ...), ``intelf6m<model>`` for a model not in the table; ``cpuf<family>m<model>`` for other
    vendors' families; else ``arch`` (``platform.machine()`` where None: ``aarch64`` on ARM, whose /proc/cpuinfo
    has no family). Never a hyphen: record names are ``<core>-<isa>``."""
    try:
        family, model = (int(part) for part in str(family_model).split("/"))
    except ValueError:
        return (arch or platform.machine() or "cpu").lower()
    if family == 23:
        return "zen2" if model >= 0x30 else "zen1"
    if family == 25:
        return "zen4" if any(model in r for r in _ZEN4_MODELS) else "zen3"
    if family == 26:
        return "zen5"
    if family == 6:
        return _INTEL_CORES.get(model, f"intelf{family}m{model}")
    return f"cpuf{family}m{model}"


def machine_name(machine: dict, arch: str | None = None) -> str:
    """``<core>-<isa>`` for a record's ``machine`` (``sepconv.utils.machine.machine_info``): the core
    (:func:`core_name`) and PyTorch's CPU capability (``avx512``, ``avx2``; ``neon`` on ARM, where it says
    ``default``); ``avx2cap`` where the record ran with the libraries capped at AVX2 (``isa_caps``)."""
    core = core_name(machine.get("cpu_family_model"), arch)
    isa = str(machine.get("cpu_isa") or "default").lower()
    if isa == "default" and core in ("aarch64", "arm64"):
        isa = "neon"
    if machine.get("isa_caps"):
        isa = "avx2cap" if any(str(v).lower() == "avx2" for v in machine["isa_caps"].values()) else "capped"
    return f"{core}-{isa}"


def load_record(path: str | Path) -> tuple[str, dict]:
    """``(name, record)`` for a record's directory (holding one of :data:`RECORD_FILES`) or JSON file; ``name`` is
    the directory's name. ValueError naming the path where it is neither."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in RECORD_FILES if (path / name).is_file()]
        if not found:
            raise ValueError(f"record {str(path)!r}: holds none of {', '.join(RECORD_FILES)}")
        path = found[0]
    if path.name not in RECORD_FILES or not path.is_file():
        raise ValueError(f"record {str(path)!r}: not a directory or file named {' or '.join(RECORD_FILES)}")
    return path.parent.name, json.loads(path.read_text())


def _passes(record: dict) -> list[list[dict]]:
    """Each pass's shapes: the first pass at the record's top level, the others under ``passes``."""
    return [record["shapes"]] + [p["shapes"] for p in record.get("passes", [])]


def forward_goals(name: str, record: dict) -> list[dict]:
    """One row per pass of a ``bench_isa.py`` record: the realized medians, the least fraction of the ceiling,
    the shapes under :data:`FORWARD_OF_CEILING` and where ``optimize`` was slower than ONNX Runtime alone, for
    ``optimize``'s choice (``sepconv``) and each fused build, and which goals the pass meets."""
    builds = [f"fused_{isa}" for isa in record.get("kernel_isas", [])]
    rows = []
    for number, shapes in enumerate(_passes(record), start=1):
        row = {"record": name, "pass": number, "threads": record.get("threads"), "shapes": len(shapes),
               "machine": machine_name(record.get("machine", {})), "realized_median": {}, "least_of_ceiling": {},
               "below_ceiling_goal": {}}
        # the ceiling at the bandwidth measured around each shape's rounds where the record has it (bench_isa.py)
        around = all("of_ceiling_around" in s for s in shapes)
        row["ceiling_bandwidth"] = "around each shape" if around else "the pass's roofline"
        key = "of_ceiling_around" if around else "of_ceiling"
        # where the two threads ran (bench_isa.py's `placement`, records with the hop between them): a shape
        # measured with them far apart may run slower for that alone (docs/design-notes.md)
        placed = {s["shape"]: s.get("placement") for s in shapes}
        row["far_shapes"] = (sum(p == "far" for p in placed.values())
                             if any(p is not None for p in placed.values()) else None)
        for candidate in ["sepconv"] + builds:
            values = [(s["shape"], s[key][candidate]) for s in shapes if candidate in s.get(key, {})]
            if not values:
                continue
            row["realized_median"][candidate] = statistics.median(s["realized"][candidate] for s in shapes)
            least = min(values, key=lambda v: v[1])
            row["least_of_ceiling"][candidate] = {"shape": least[0], "of_ceiling": least[1],
                                                  "placement": placed[least[0]]}
            row["below_ceiling_goal"][candidate] = [{"shape": s, "of_ceiling": v, "placement": placed[s]}
                                                    for s, v in values if v < FORWARD_OF_CEILING]
        ratios = [(s["shape"], s["sepconv_vs_onnxruntime_alone"]) for s in shapes
                  if s.get("sepconv_vs_onnxruntime_alone") is not None]
        row["onnxruntime"] = {"shapes": len(ratios),
                              "at_most": sum(r <= ONNXRUNTIME_RATIO for _, r in ratios),
                              "slower": [{"shape": s, "ratio": r} for s, r in ratios if r > ONNXRUNTIME_RATIO]}
        median = row["realized_median"].get("sepconv")
        below = row["below_ceiling_goal"].get("sepconv")
        row["met"] = {"forward_median": median is not None and median >= FORWARD_MEDIAN,
                      "every_shape_of_ceiling": below is not None and not below,
                      # the same for the shapes measured with the threads near (None: no placement recorded)
                      "every_near_shape_of_ceiling": (None if below is None or row["far_shapes"] is None
                                                      else all(b["placement"] == "far" for b in below)),
                      "not_slower_than_onnxruntime": bool(ratios) and not row["onnxruntime"]["slower"]}
        rows.append(row)
    return rows


def training_goals(name: str, record: dict) -> list[dict]:
    """One row per pass of a ``bench_fused_training.py`` record: the tuned layer's fraction of its training GEMM
    ceiling at the median and at its least (with the shape), the shapes under :data:`TRAINING_MEDIAN`, and whether
    the median meets it."""
    rows = []
    for number, shapes in enumerate(_passes(record), start=1):
        values = [(s["shape"], s["vs_ceiling"]["tuned"]) for s in shapes]
        median = statistics.median(v for _, v in values)
        least = min(values, key=lambda v: v[1])
        rows.append({"record": name, "pass": number, "threads": record.get("threads"), "shapes": len(values),
                     "machine": machine_name(record.get("machine", {})), "kernel_isa": record.get("kernel_isa"),
                     "tuned_median": median, "least": {"shape": least[0], "vs_ceiling": least[1]},
                     "below_median_goal": [{"shape": s, "vs_ceiling": v} for s, v in values if v < TRAINING_MEDIAN],
                     "met": {"training_median": median >= TRAINING_MEDIAN}})
    return rows


def _yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def _placed(entry: dict) -> str:
    """``", far"`` where a shape ran with the two threads far apart (``bench_isa.py``'s ``placement``), else ``""``."""
    return ", far" if entry.get("placement") == "far" else ""


def markdown(forward: list[dict], training: list[dict]) -> str:
    """The rows of :func:`forward_goals` and :func:`training_goals` as two Markdown tables."""
    lines = []
    if forward:
        lines += [f"Forward (goals: realized median >= {FORWARD_MEDIAN}, every shape >= {FORWARD_OF_CEILING} of the "
                  f"ceiling, never slower than ONNX Runtime alone; for `optimize`'s choice)", "",
                  "The ceiling takes the memory bandwidth measured around each shape where a pass has it "
                  "(marked *), else the pass's roofline. `far`: the shape ran with its two threads on cores far "
                  "apart (bench_thread_placement.py), where records with the hop between them have it.", "",
                  "| record | pass | threads | realized median: optimize (fused builds) | least of the ceiling | "
                  f"shapes below {FORWARD_OF_CEILING} | at most ONNX Runtime alone | goals met |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in forward:
            builds = ", ".join(f"{k[len('fused_'):]} {v:.2f}" for k, v in r["realized_median"].items()
                               if k != "sepconv")
            least = r["least_of_ceiling"].get("sepconv", {})
            # three digits: a shape just under the goal would otherwise read as 0.90
            below = "; ".join(f"{b['shape']} {b['of_ceiling']:.3f}{_placed(b)}"
                              for b in r["below_ceiling_goal"].get("sepconv", []))
            slower = "; ".join(f"{s['shape']} {s['ratio']:.3f}x" for s in r["onnxruntime"]["slower"])
            ort = f"{r['onnxruntime']['at_most']} of {r['onnxruntime']['shapes']}" + (f" ({slower})" if slower else "")
            met = r["met"]
            mark = "*" if r["ceiling_bandwidth"] == "around each shape" else ""
            near = ""
            if not met["every_shape_of_ceiling"] and met.get("every_near_shape_of_ceiling") is not None:
                near = f" ({_yes(met['every_near_shape_of_ceiling'])} where the threads ran near)"
            lines.append(f"| `{r['record']}` | {r['pass']}{mark} | {r['threads']} | "
                         f"{r['realized_median'].get('sepconv', float('nan')):.2f} ({builds}) | "
                         f"{least.get('of_ceiling', float('nan')):.3f} ({least.get('shape', '-')}{_placed(least)}) | "
                         f"{below or '-'} | {ort} | median {_yes(met['forward_median'])}, every shape "
                         f"{_yes(met['every_shape_of_ceiling'])}{near}, ONNX Runtime "
                         f"{_yes(met['not_slower_than_onnxruntime'])} |")
    if training:
        if lines:
            lines.append("")
        lines += [f"Training (goal: the tuned step at least {TRAINING_MEDIAN} of its training GEMM ceiling at the "
                  "median)", "",
                  "| record | pass | threads | kernel build | tuned median | least | goal met |",
                  "|---|---|---|---|---|---|---|"]
        for r in training:
            lines.append(f"| `{r['record']}` | {r['pass']} | {r['threads']} | {r['kernel_isa']} | "
                         f"{r['tuned_median']:.2f} | {r['least']['vs_ceiling']:.2f} ({r['least']['shape']}) | "
                         f"{_yes(r['met']['training_median'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("records", nargs="*", help="record directories or their isa.json / fused_training.json")
    p.add_argument("--out", help="write the rows as JSON to this file")
    p.add_argument("--machine-name", action="store_true", help="print this machine's name as records use it")
    args = p.parse_args(argv)
    if args.machine_name:
        from sepconv.utils.machine import machine_info

        print(machine_name(machine_info()))
        return 0
    if not args.records:
        p.error("give at least one record (or --machine-name)")
    forward, training = [], []
    try:
        loaded = [load_record(path) for path in args.records]
    except ValueError as exc:
        p.error(str(exc))
    for name, record in loaded:
        if "kernel_isas" in record:
            forward += forward_goals(name, record)
        else:
            training += training_goals(name, record)
    print(markdown(forward, training))
    if args.out:
        atomic_write_bytes(Path(args.out), (json.dumps({"forward": forward, "training": training}, indent=1)
                                            + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
