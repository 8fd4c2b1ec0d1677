"""``sepconv bench``: theoretical vs realized savings of separable convolutions on this machine."""

from __future__ import annotations

import argparse
import re


#: ``--dtype`` choices (torch dtype names).
DTYPES = ("float32", "float16", "bfloat16")


def parse_device(name: str):
    """``--device``: ``cpu``, ``cuda`` or ``cuda:N``, the CUDA ones only where a CUDA device is present."""
    import torch

    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {name!r}")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA device is available here (torch {torch.__version__})")
        if (device.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def parse_case(text: str, batch: int):
    """``CINxCOUTxSIZE[xK[xSTRIDE]]`` (e.g. ``64x128x56x3x2``) -> a benchmark Case."""
    from .suites import _case

    if not re.fullmatch(r"\d+(x\d+){2,4}", text.strip()):
        raise ValueError(f"--shape must be CINxCOUTxSIZE[xK[xSTRIDE]] with positive integers (e.g. 64x128x56x3x2), got {text!r}")
    cin, cout, size, *rest = (int(p) for p in text.split("x"))
    k = rest[0] if rest else 3
    stride = rest[1] if len(rest) > 1 else 1
    if min(cin, cout, size, k, stride) < 1:
        raise ValueError(f"--shape values must be positive, got {text!r}")
    return _case(f"user {cin}->{cout} @{size} k{k} s{stride}", cin, cout, size, stride, batch, k)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help="time standard vs separable convolutions: measured speedup vs the MAC ratio, roofline",
        description="For each layer shape, time the standard 3x3 convolution (at its faster memory layout) and its "
                    "depthwise separable replacement, forward and forward+backward, with the depthwise and pointwise "
                    "stages apart and their roofline bounds from this machine's measured peak FLOP/s and bandwidth. "
                    "realized = measured speedup / theoretical (MAC) speedup.",
    )
    p.add_argument("--suite", choices=("mobilenet_v1", "vgg_blocks", "all", "none"), default="all",
                   help="built-in shapes: MobileNetV1 body at 224x224 batch 1, the seeds' VGG-block layers at batch 32")
    p.add_argument("--shape", action="append", default=[], help="extra layer CINxCOUTxSIZE[xK[xSTRIDE]]: C_in -> C_out "
                                                                 "channels on SIZE x SIZE inputs (repeatable)")
    p.add_argument("--model", default=None, help="also time each standard 2D convolution (kernel > 1, groups 1) of "
                                                 "this model: a zoo name, package.module:factory or "
                                                 "path/to/file.py:factory, at --model-input, batch --batch")
    p.add_argument("--kwargs", default=None, help="keyword arguments of --model's factory as JSON")
    p.add_argument("--model-input", default=None, help="--model's input C x H x W (default: the model's own)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table",
                   help="table (default: the main columns, fits 100 columns), json or csv (every field)")
    p.add_argument("--verbose", action="store_true", help="the table with every column, and the full legend")
    p.add_argument("--batch", type=int, default=1, help="batch size of --shape cases (default 1)")
    p.add_argument("--suite-batch", type=int, default=None,
                   help="batch size of the built-in suites (default: theirs, 1 for MobileNetV1 and 32 for the VGG "
                        "blocks; a GPU needs larger batches to be busy)")
    p.add_argument("--rounds", type=int, default=11, help="interleaved timing rounds (default 11)")
    p.add_argument("--no-backward", action="store_true", help="forward only")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu",
                   help="cpu (default), cuda or cuda:N; on CUDA cuDNN picks its fastest algorithm per shape "
                        "(torch.backends.cudnn.benchmark); the fused kernel is CPU-only")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="float32 (default; on CUDA with TF32 as PyTorch's convolutions use it by default), "
                        "or float16/bfloat16 (CUDA only)")
    p.add_argument("--out", default=None, help="directory for bench.json and bench.png")
    p.add_argument("--quick", action="store_true", help="tiny run (3 rounds, first case of each suite): a smoke test")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="call sepconv.keep_freed_memory() first (glibc malloc keeps freed memory: no page faults on "
                        "each step's fresh tensors); default: the process's allocator as PyTorch users get it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    import torch

    from ..utils.io import atomic_write_bytes
    from .roofline import measure_roofline
    from .suites import SUITES, run_case
    from ..utils.machine import machine_info

    if args.rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {args.rounds}")
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if args.suite_batch is not None and args.suite_batch < 1:
        raise ValueError(f"--suite-batch must be >= 1, got {args.suite_batch}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = parse_device(args.device)
    dtype = getattr(torch, args.dtype)
    if dtype != torch.float32 and device.type != "cuda":
        raise ValueError(f"--dtype {args.dtype} needs --device cuda (on the CPU the suite times float32)")
    if device.type == "cuda":
        if device.index is not None:
            torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # the standard convolution at cuDNN's fastest algorithm, as users run it
    if args.keep_freed_memory:
        from ..utils.memory import keep_freed_memory

        if not keep_freed_memory():
            raise ValueError("--keep-freed-memory needs glibc's malloc (Linux); this C library is another")
    cases = []
    for name in (SUITES if args.suite == "all" else [] if args.suite == "none" else [args.suite]):
        suite = SUITES[name]() if args.suite_batch is None else SUITES[name](batch=args.suite_batch)
        cases += suite[:1] if args.quick else suite
    cases += [parse_case(s, args.batch) for s in args.shape]
    if args.model:
        cases += model_cases(args, args.batch)
    if not cases:
        raise ValueError("nothing to measure: choose a --suite or give --shape")
    rounds = 3 if args.quick else args.rounds
    roof = measure_roofline(device, rounds=3 if args.quick else 7,
                            matmul_n=1024 if args.quick else (8192 if device.type == "cuda" else 2048),
                            copy_mib=64 if args.quick else (1024 if device.type == "cuda" else 256), dtype=dtype,
                            conv_batch=32 if device.type == "cuda" and not args.quick else 1)
    info = machine_info(device)
    info.update(device=str(device), dtype=args.dtype)
    where = (f"{info['gpu']} (CUDA {info['cuda']}, cuDNN {info['cudnn']}, {args.dtype}"
             + (", TF32 allowed" if dtype == torch.float32 and info["tf32"] else "") + ")"
             if device.type == "cuda" else f"{info['cpu']}, {info['torch_threads']} threads")
    import textwrap

    print(textwrap.fill(f"{where}, torch {info['torch']}; measured peak "
          f"{roof.peak_flops / 1e9:.1f} GFLOP/s"
          + (f" (torch.mm: {roof.torch_peak_flops / 1e9:.1f})" if roof.torch_peak_flops is not None else "")
          + f", bandwidth {roof.bandwidth / 1e9:.1f} GB/s"
          + ("; freed memory kept (sepconv.keep_freed_memory)" if info["freed_memory_kept"] else ""), width=100),
          file=sys.stderr if args.format != "table" else sys.stdout)
    info["engines"] = engines_info(device)
    print("engines: " + "; ".join(f"{k}: {v}" for k, v in info["engines"].items()), file=sys.stderr)
    rows = []
    for case in cases:
        result = run_case(case, roof, rounds=rounds, backward=not args.no_backward, device=device, dtype=dtype)
        s = result.summary()
        s["dw_mac_share"] = separable_dw_share(case)
        s["input_shape"] = [case.batch, case.spec.in_channels, *case.size]
        s["roofline_ceiling"] = s["roofline_speedup"] * s["mac_ratio"]
        rows.append(s)
        print(f"  {case.name}: speedup {s['speedup']:.2f}x of {s['theoretical_speedup']:.2f}x", file=sys.stderr,
              flush=True)
    if args.format == "json":
        print(json.dumps({"machine": info, "roofline": roof.as_dict(), "rounds": rounds, "cases": rows}, indent=2))
    elif args.format == "csv":
        print(rows_csv(rows), end="")
    else:
        print(format_table(rows, verbose=args.verbose))
    if args.out:
        out = Path(args.out)
        record = {"machine": info, "roofline": roof.as_dict(), "rounds": rounds, "cases": rows}
        atomic_write_bytes(out / "bench.json", json.dumps(record, indent=2).encode())
        _plot(rows, out / "bench.png")
        where_to = sys.stderr if args.format != "table" else sys.stdout
        print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}", file=where_to)
    return 0


#: The default table: (header, summary key, format).
MAIN_COLUMNS = (("std ms", "standard_ms", "{:.3f}"), ("sep ms", "separable_ms", "{:.3f}"),
                ("speedup", "speedup", "{:.2f}x"), ("MAC ratio", "mac_ratio", "{:.3f}"),
                ("realized", "realized", "{:.2f}"), ("roofline ceiling", "roofline_ceiling", "{:.2f}"))
#: The rest, with --verbose.
MORE_COLUMNS = (("theory", "theoretical_speedup", "{:.2f}x"), ("roofline", "roofline_speedup", "{:.2f}x"),
                ("fused roofline", "fused_roofline_ceiling", "{:.2f}"), ("train realized", "train_realized", "{:.2f}"),
                ("train best", "train_realized_best", "{:.2f}"), ("oneDNN realized", "realized_onednn", "{:.2f}"),
                ("best realized", "realized_best", "{:.2f}"), ("GEMM ceiling", "gemm_ceiling", "{:.2f}"),
                ("train GEMM ceiling", "train_gemm_ceiling", "{:.2f}"), ("DW %MACs", "dw_mac_share", "{:.1%}"),
                ("DW %time", "dw_time_share", "{:.1%}"), ("DW roofline", "dw_roofline_fraction", "{:.0%}"),
                ("PW roofline", "pw_roofline_fraction", "{:.0%}"))
LEGEND = ("std/sep ms: medians of interleaved rounds, eager PyTorch, each side at its faster layout; speedup = std / "
          "sep; MAC ratio = separable / standard MACs; realized = speedup x MAC ratio (1 = the full theoretical "
          "saving); roofline ceiling = the realized ratio the two roofline bounds allow. More: --verbose, "
          "--format json|csv, --out (plot).")
VERBOSE_LEGEND = (
    "theory = 1 / MAC ratio; roofline = the speedup the two roofline bounds allow; fused roofline = the realized ratio "
    "a fused depthwise->pointwise kernel could reach at its roofline bound; oneDNN = both sides as packed oneDNN "
    "convolutions (inference); best = each side on its fastest engine (sepconv.optimize); train best = "
    "forward+backward of the separable layer on eager PyTorch or after sepconv.tune_training, whichever is faster; "
    "GEMM ceiling = the realized ratio if the depthwise step took no time and the 1x1 step ran at its measured rate; "
    "train GEMM ceiling = the same for a training step; DW/PW roofline = bound time / measured time of the eager "
    "stage (over 100%: the stage ran from cache)")


def _cell(row: dict, key: str, fmt: str) -> str:
    return "-" if row.get(key) is None else fmt.format(row[key])


def format_table(rows: list[dict], verbose: bool = False, width: int = 100) -> str:
    """The per-case table: the main columns (within ``width`` characters), or every column with ``verbose``."""
    import textwrap

    columns = MAIN_COLUMNS + (MORE_COLUMNS if verbose else ())
    body = [[_cell(r, key, fmt) for _, key, fmt in columns] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, (h, _, _) in enumerate(columns)]
    room = max(12, width - sum(w + 2 for w in widths)) if not verbose else 10 ** 6
    names = [r["case"] if len(r["case"]) <= room else r["case"][:room - 1] + "~" for r in rows]
    first = max(len("case"), *(len(n) for n in names))
    lines = ["  ".join(["case".ljust(first)] + [h.rjust(w) for (h, _, _), w in zip(columns, widths)])]
    lines += ["  ".join([n.ljust(first)] + [c.rjust(w) for c, w in zip(b, widths)]) for n, b in zip(names, body)]
    legend = LEGEND + (" " + VERBOSE_LEGEND if verbose else "")
    return "\n".join(lines + textwrap.wrap(legend, width=width))


def rows_csv(rows: list[dict]) -> str:
    """Every field of every case as CSV (nested values as JSON)."""
    import csv
    import io
    import json

    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(keys)
    for r in rows:
        writer.writerow([json.dumps(r[k]) if isinstance(r.get(k), (list, dict)) else r.get(k, "") for k in keys])
    return buf.getvalue()


def model_cases(args: argparse.Namespace, batch: int) -> list:
    """A benchmark case per standard 2D convolution of ``--model`` (groups 1, a kernel > 1, no dilation)."""
    from ..cost import spec_from_conv
    from ..geometry import ConvSpec
    from ..models.cli import resolve_from_args
    from .suites import Case

    margs = argparse.Namespace(model=args.model, kwargs=args.kwargs, variant=None, num_classes=None,
                               input=args.model_input, channels_last=False, weights=None)
    meta, _, shape = resolve_from_args(margs, what=f"benchmarking {args.model}", meta_only=True)
    from ..cost import profile

    rows = {r.name: r for r in profile(meta, shape).rows}
    cases = []
    for name, m in meta.named_modules():
        if (type(m).__name__ == "Conv2d" and m.groups == 1 and max(m.kernel_size) > 1 and set(m.dilation) == {1}
                and name in rows and m.padding_mode == "zeros"):
            spec = spec_from_conv(m)
            size = tuple(rows[name].input_shape[-2:])
            spec = ConvSpec.make(spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride, spec.padding,
                                 bias=False)
            cases.append(Case(f"{name} {spec.in_channels}->{spec.out_channels} @{size[0]}x{size[1]}", spec, size, batch))
    if not cases:
        raise ValueError(f"--model {args.model} has no standard 2D convolution with a kernel > 1 to time")
    return cases


def engines_info(device=None) -> dict:
    """Which of sepconv's engines this run could time on ``device`` (default CPU), and why not where it could not."""
    if device is not None and device.type == "cuda":
        return {"fused": "unavailable: CPU only", "onednn": "unavailable: CPU only"}
    import os

    from ..backends.fused import fused_available, fused_isa, fused_unavailable_reason
    from ..backends.native import build_note
    from ..backends.onednn import onednn_available

    names = {"avx512": "AVX-512", "avx2": "AVX2 + FMA", "neon": "ARM NEON", "scalar": "portable loops"}
    if fused_available():
        isa = fused_isa()
        fused = f"available, {names.get(isa, isa)}"
        if os.environ.get("SEPCONV_ISA"):
            fused += f" (SEPCONV_ISA={os.environ['SEPCONV_ISA']})"
        note = build_note()
        if note:
            fused += f"; cache entry rebuilt: {note}"
    else:
        fused = f"unavailable: {fused_unavailable_reason()}"
    return {"onednn": "available" if onednn_available() else "unavailable: no torch.ops.mkldnn convolution operators",
            "fused": fused}


def separable_dw_share(case) -> float:
    """Depthwise share of the separable layer's MACs (from the cost model)."""
    from ..cost import separable_cost

    dw, pw = separable_cost(case.spec, case.size, batch=case.batch).stages
    return dw.macs / (dw.macs + pw.macs)


def _plot(rows: list[dict], path) -> None:
    import sys

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are optional
        print("matplotlib is not installed: no plot (pip install 'sepconv[experiments]')", file=sys.stderr)
        return
    import io

    from ..utils.io import atomic_write_bytes

    series = [("realized", "forward, eager"), ("train_realized", "forward+backward, eager"),
              ("train_realized_best", "forward+backward, best training engine"),
              ("realized_best", "forward, best engine (sepconv.optimize)")]
    series = [(key, label) for key, label in series if all(key in r for r in rows)]
    fig, ax = plt.subplots(figsize=(max(7, 0.7 * len(rows)), 4.5))
    xs = range(len(rows))
    width = 0.8 / len(series)
    for i, (key, label) in enumerate(series):
        ax.bar([x - 0.4 + width * (i + 0.5) for x in xs], [r[key] for r in rows], width=width, label=label)
    ax.plot(list(xs), [r["roofline_speedup"] * r["mac_ratio"] for r in rows], "k_", markersize=14, mew=2,
            label="roofline ceiling (roofline speedup / MAC ratio)")
    if all("gemm_ceiling" in r for r in rows):
        ax.plot(list(xs), [r["gemm_ceiling"] for r in rows], "rx", markersize=7, mew=1.5,
                label="GEMM ceiling (1x1 step at its measured rate, depthwise step free)")
    if all("train_gemm_ceiling" in r for r in rows):
        ax.plot(list(xs), [r["train_gemm_ceiling"] for r in rows], "b+", markersize=8, mew=1.5,
                label="training GEMM ceiling (1x1 forward+backward alone, depthwise free)")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(list(xs), [r["case"] for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("realized = measured speedup / MAC ratio")
    ax.set_title("Separable vs standard convolution: realized share of the MAC saving", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
