"""What ``sepconv compare`` writes: results.json, metrics.csv, PNG plots and a self-contained report.html.

Every file is written atomically (temporary file in the same directory, then
``os.replace``). Plots use matplotlib's Agg backend (no display needed). The
PNG files on disk keep the seed article's layout (one panel per variant); the
HTML report has its own figures, one per metric, sized to stay legible at
phone width, plus the accuracy-against-cost (Pareto) plots, all embedded as
base64 PNGs so the single file opens anywhere with no external asset.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Optional

from ..utils.io import atomic_write_bytes

#: Columns of metrics.csv, one row per (variant, epoch).
CSV_COLUMNS = ("variant", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "train_time_s", "val_time_s")
#: Columns of the final table: (key in a summary row, header, format).
TABLE_COLUMNS = (
    ("variant", "variant", "{}"),
    ("params", "params", "{:,}"),
    ("macs", "MACs/sample", "{:,}"),
    ("train_s_per_epoch", "train s/epoch", "{:.3f}"),
    ("latency_ms", "latency ms (b=1)", "{:.3f}"),
    ("latency_optimized_ms", "optimized ms (b=1)", "{:.3f}"),
    ("best_val_acc", "best val acc", "{:.4f}"),
    ("final_val_acc", "final val acc", "{:.4f}"),
    ("train_val_gap", "train-val gap", "{:+.4f}"),
    ("val_acc_converted", "val acc converted", "{:.4f}"),
)
PLOTS = ("accuracy.png", "loss.png", "costs.png")


#: Columns shown only when some row has a value (an opt-in variant or measurement: ``--no-optimized-latency``
#: leaves the optimized latency out).
OPTIONAL_COLUMNS = ("latency_optimized_ms", "val_acc_converted")


def table_columns(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """:data:`TABLE_COLUMNS` without the optional ones that no row fills."""
    return [c for c in TABLE_COLUMNS if c[0] not in OPTIONAL_COLUMNS or any(r.get(c[0]) is not None for r in rows)]


def format_table(rows: list[dict[str, Any]]) -> str:
    """The final comparison as an aligned plain-text table (one line per variant)."""
    columns = table_columns(rows)
    header = [h for _, h, _ in columns]
    body = []
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key)
            cells.append("-" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value))
        body.append(cells)
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in body])


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def write_metrics_csv(path: Path, histories: dict[str, list[dict[str, float]]]) -> None:
    """One row per variant and epoch with the columns :data:`CSV_COLUMNS`, atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for variant, history in histories.items():
        for record in history:
            writer.writerow({"variant": variant, **record})
    atomic_write_bytes(path, buffer.getvalue().encode())


def _figure_png(fig: Any, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def make_plots(results: dict[str, Any]) -> dict[str, bytes]:
    """Render the plots as PNG bytes: ``accuracy.png`` and ``loss.png`` (one panel per variant,
    train and validation per epoch, as in the seed article's figures) and ``costs.png`` (bars of
    parameters, MACs, train time per epoch and latency per variant)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    variants = list(results["variants"])
    out: dict[str, bytes] = {}
    for metric, name, label in (("acc", "accuracy.png", "accuracy"), ("loss", "loss.png", "cross-entropy loss")):
        ncols = min(len(variants), 4)
        nrows = math.ceil(len(variants) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows + 0.4), squeeze=False, sharey=True,
                                 layout="constrained")
        for ax, variant in zip(axes.flat, variants):
            history = results["variants"][variant]["history"]
            epochs = [h["epoch"] for h in history]
            ax.plot(epochs, [h[f"train_{metric}"] for h in history], "o-", ms=3, label="train")
            ax.plot(epochs, [h[f"val_{metric}"] for h in history], "s--", ms=3, label="validation")
            ax.set_title(variant)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(variants):]:
            ax.axis("off")
        axes[0][0].set_ylabel(label)
        axes[0][0].legend()
        fig.suptitle(f"{results['config']['model']} on {results['config']['dataset']}: train vs validation {label}")
        out[name] = _figure_png(fig)
        plt.close(fig)

    rows = results["table"]
    names = [r["variant"] for r in rows]
    panels = (("params", "parameters"), ("macs", "MACs per sample"),
              ("train_s_per_epoch", "train time per epoch (s)"), ("latency_ms", "latency, batch 1 (ms)"))
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.4), layout="constrained")
    for ax, (key, title) in zip(axes, panels):
        values = [r.get(key) or 0.0 for r in rows]
        bars = ax.bar(names, values, color=[f"C{i}" for i in range(len(names))])
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=30)
        base = values[0] if values and values[0] else None
        for bar, value in zip(bars, values):
            text = f"{value / base:.2f}x" if base else f"{value:.3g}"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    fig.suptitle(f"cost per variant (ratios relative to {names[0]})" if names else "cost per variant")
    out["costs.png"] = _figure_png(fig)
    plt.close(fig)
    return out


# ------------------------------------------------------------------ report figures

#: Width and height of every report figure, inches; at :data:`FIGURE_DPI` a figure is 720 px wide, so
#: shown at phone width (about 360 px) its text is still about half its native size.
FIGURE_SIZE = (5.0, 3.4)
FIGURE_DPI = 144
#: A run whose best validation accuracy is below ``chance + NEAR_CHANCE_MARGIN * (1 - chance)`` is flagged
#: (``chance``: the share of the most frequent validation class).
NEAR_CHANCE_MARGIN = 0.1


def _accuracy(row: dict[str, Any]) -> Optional[float]:
    """The accuracy the Pareto plots use: final validation accuracy (no choice made on the validation set)."""
    value = row.get("final_val_acc")
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _short_number(value: float, _pos: Any = None) -> str:
    """``1234567`` -> ``1.23M``: tick and bar labels that stay short at phone width."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points ``(cost, accuracy)`` no other point beats: none is cheaper-or-equal and
    at least as accurate with one of the two strictly better. Sorted by cost."""
    front = []
    for i, (cost, acc) in enumerate(points):
        dominated = any(
            c <= cost and a >= acc and (c < cost or a > acc) for j, (c, a) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def report_figures(results: dict[str, Any]) -> list[tuple[str, str, bytes]]:
    """The report's figures, one per metric, as ``(title, alt text, PNG bytes)``.

    Validation (solid) and training (dashed) accuracy and loss per epoch with
    all variants in one axes; accuracy against MACs and against parameters
    (one point per variant, the Pareto front drawn); and one bar chart each
    for parameters, MACs, train time per epoch and latency, with the ratio to
    the first variant. Figures whose data no variant has are left out.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    short = FuncFormatter(_short_number)
    variants = [v for v, entry in results["variants"].items() if entry.get("history")]
    colors = {v: f"C{i}" for i, v in enumerate(results["variants"])}
    figures: list[tuple[str, str, bytes]] = []
    with plt.rc_context({"font.size": 12, "axes.titlesize": 13, "legend.fontsize": 10}):
        for metric, label in (("acc", "accuracy"), ("loss", "cross-entropy loss")):
            if not variants:
                break
            fig, ax = plt.subplots(figsize=FIGURE_SIZE, layout="constrained")
            for variant in variants:
                history = results["variants"][variant]["history"]
                epochs = [h["epoch"] for h in history]
                ax.plot(epochs, [h[f"val_{metric}"] for h in history], "-", marker="o", ms=3, color=colors[variant],
                        label=variant)
                ax.plot(epochs, [h[f"train_{metric}"] for h in history], "--", color=colors[variant], alpha=0.6)
            ax.plot([], [], "k-", label="validation")
            ax.plot([], [], "k--", alpha=0.6, label="train")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(label)
            ax.set_title(f"{label} per epoch")
            ax.grid(alpha=0.3)
            ax.legend(ncols=2)
            figures.append((f"{label.capitalize()} per epoch",
                            f"{label} per epoch, validation solid and training dashed, one colour per variant",
                            _figure_png(fig, FIGURE_DPI)))
            plt.close(fig)

        rows = [r for r in results.get("table", []) if _accuracy(r) is not None]
        for key, label in (("macs", "MACs per sample"), ("params", "parameters")):
            if not rows:
                break
            points = [(float(r[key]), _accuracy(r)) for r in rows]
            front = pareto_front(points)
            fig, ax = plt.subplots(figsize=FIGURE_SIZE, layout="constrained")
            ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "-", color="0.6", zorder=1)
            for row, (x, y) in zip(rows, points):
                ax.scatter([x], [y], s=40, color=colors.get(row["variant"], "k"), zorder=2)
                ax.annotate(row["variant"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=11)
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(short)
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(f"{label} (log scale)")
            ax.set_ylabel("final validation accuracy")
            ax.set_title(f"accuracy vs {label} (grey: Pareto front)")
            ax.margins(x=0.2, y=0.15)
            ax.grid(alpha=0.3, which="both")
            figures.append((f"Accuracy vs {label}",
                            f"final validation accuracy against {label}, one point per variant", _figure_png(fig, FIGURE_DPI)))
            plt.close(fig)

        table = results.get("table", [])
        for key, label in (("params", "parameters"), ("macs", "MACs per sample"),
                           ("train_s_per_epoch", "train time per epoch (s)"), ("latency_ms", "latency, batch 1 (ms)")):
            bars = [(r["variant"], float(r[key])) for r in table if r.get(key) is not None]
            if not bars:
                continue
            fig, ax = plt.subplots(figsize=(FIGURE_SIZE[0], 0.5 + 0.45 * len(bars) + 0.6), layout="constrained")
            names = [n for n, _ in bars][::-1]
            values = [v for _, v in bars][::-1]
            drawn = ax.barh(names, values, color=[colors.get(n, "k") for n in names])
            base = bars[0][1] or None
            for bar, value in zip(drawn, values):
                text = _short_number(value) + (f"  ({value / base:.2f}x)" if base else "")
                ax.annotate(text, (bar.get_width(), bar.get_y() + bar.get_height() / 2), xytext=(4, 0),
                            textcoords="offset points", va="center", fontsize=10)
            ax.set_xlim(0, max(values) * 1.5 if max(values) > 0 else 1)
            ax.xaxis.set_major_formatter(short)
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.set_title(f"{label}" + (f" (ratio to {bars[0][0]})" if base else ""))
            ax.grid(alpha=0.3, axis="x")
            figures.append((label[0].upper() + label[1:], f"bar chart of {label} per variant", _figure_png(fig, FIGURE_DPI)))
            plt.close(fig)
    return figures


# ------------------------------------------------------------------ report page

def report_warnings(results: dict[str, Any]) -> list[str]:
    """Plain-text warnings shown at the top of the report: a busy machine, a diverged or
    near-chance variant, a run that stopped before its last epoch."""
    warnings: list[str] = []
    measurement = results.get("measurement") or {}
    status = results.get("status", "complete")
    if measurement.get("machine_busy"):
        load = measurement.get("load_average_1min_max")
        cores = (results.get("environment") or {}).get("cpu_count")
        warnings.append(
            "The machine was busy while this run was measured"
            + (f" (1-minute load average up to {load:.2f}" + (f" on {cores} cores)" if cores else ")") if load is not None else "")
            + ": train times, latencies and throughputs may be inflated many-fold by contention. Rerun on a quiet "
              "machine, or with --threads 1 on a shared one, before quoting them."
        )
    if status in ("interrupted", "stopped", "running"):
        config = results.get("config") or {}
        done = {v: len(e.get("history", [])) for v, e in results.get("variants", {}).items()}
        planned = config.get("epochs")
        partial = ", ".join(f"{v} {n}" + (f"/{planned}" if planned else "") for v, n in done.items())
        warnings.append(
            f"The run did not finish (status: {status}); epochs completed per variant: {partial or 'none'}. "
            "Figures for unfinished variants are partial; continue with sepconv compare --out DIR --resume."
        )
    diverged = [v for v, e in results.get("variants", {}).items()
                if any(not math.isfinite(h.get("train_loss", 0.0)) or not math.isfinite(h.get("val_loss", 0.0))
                       for h in e.get("history", []))]
    if status == "diverged" or diverged:
        warnings.append(
            "Training diverged (a loss became NaN or infinite)"
            + (f" in: {', '.join(diverged)}" if diverged else "")
            + ". Its accuracy is not a result; lower --lr or check the data."
        )
    data = results.get("data") or {}
    counts = data.get("val_class_counts") or []
    num_classes = data.get("num_classes") or len(counts)
    chance = (max(counts) / sum(counts)) if counts and sum(counts) else (1.0 / num_classes if num_classes else None)
    if chance is not None:
        threshold = chance + NEAR_CHANCE_MARGIN * (1.0 - chance)
        near = [r["variant"] for r in results.get("table", [])
                if r.get("best_val_acc") is not None and r["best_val_acc"] < threshold]
        if near:
            warnings.append(
                f"Near chance: best validation accuracy below {threshold:.3f} (chance, the most frequent class, is "
                f"{chance:.3f}) for {', '.join(near)}. These variants learned little; more epochs or another "
                "learning rate may be needed before comparing them."
            )
    return warnings


def _format_value(value: Any) -> str:
    """A compact human-readable rendering of a setting (lists joined, dicts as key=value, no JSON)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, dict):
        return "; ".join(f"{k} = {_format_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(v) for v in value)
    return str(value)


#: Settings shown only for some data sets or variants: key -> predicate on the results.
_APPLIES = {
    "data_dir": lambda r: r["config"].get("dataset") != "digits" and r["config"].get("data_dir") is not None,
    "download": lambda r: r["config"].get("dataset") == "cifar10",
    "image_size": lambda r: r["config"].get("dataset") == "imagefolder",
    "val_fraction": lambda r: r["config"].get("dataset") in ("digits", "imagefolder"),
    "finetune_epochs": lambda r: "converted" in (r["config"].get("variants") or []),
    "finetune_lr": lambda r: "converted" in (r["config"].get("variants") or []),
    "convert_to": lambda r: "converted" in (r["config"].get("variants") or []),
}
_CONFIG_LABELS = {
    "width": "width multiplier", "lr": "learning rate", "threads": "torch threads", "amp": "mixed precision",
    "val_fraction": "validation fraction", "tune_training": "tune training engines", "data_dir": "data directory",
    "image_size": "image size (px)", "batch_size": "batch size",
}


def _configuration_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    config = results.get("config") or {}
    resolved = results.get("resolved") or {}
    rows = []
    for key, value in config.items():
        if key in _APPLIES and not _APPLIES[key](results):
            continue
        if key in ("device", "amp") and key in resolved:
            value = resolved[key]
        elif key == "threads" and value is None:
            value = "PyTorch default (one per core)"
        elif key == "finetune_lr" and value is None:
            value = (resolved.get("conversion") or {}).get("finetune_lr")
        rows.append((_CONFIG_LABELS.get(key, key.replace("_", " ")), _format_value(value)))
    if resolved.get("build_kwargs"):
        rows.append(("model options", _format_value(resolved["build_kwargs"])))
    for key in ("optimizer", "loss"):
        if resolved.get(key):
            rows.append((key, _format_value(resolved[key])))
    if (resolved.get("world_size") or 1) > 1:
        rows.append(("processes (torchrun)", _format_value(resolved["world_size"])))
    conversion = resolved.get("conversion")
    if conversion:
        rows.append(("conversion", _format_value(conversion)))
    return rows


def _data_rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    labels = {"name": "data set", "input_shape": "input (C, H, W)", "num_classes": "classes",
              "train_size": "training images", "val_size": "validation images", "image_size": "image size (px)"}
    for key in ("name", "source", "split", "input_shape", "num_classes", "train_size", "val_size", "image_size"):
        if data.get(key) is not None:
            value = data[key]
            rows.append((labels.get(key, key), " x ".join(map(str, value)) if key == "input_shape" else _format_value(value)))
    norm = data.get("normalization")
    if isinstance(norm, dict):
        parts = [f"scale {norm['scale']}"] if "scale" in norm else []
        for key in ("mean", "std"):
            if key in norm:
                parts.append(f"{key} " + ", ".join(f"{v:.4f}" for v in norm[key]))
        rows.append(("normalization", "; ".join(parts)))
    shown = set(labels) | {"source", "split", "normalization", "classes", "train_class_counts", "val_class_counts"}
    rows.extend((k.replace("_", " "), _format_value(v)) for k, v in data.items() if k not in shown)
    return rows


_MEASUREMENT_LABELS = {
    "train_s_per_epoch": "train s/epoch", "latency_ms": "latency ms", "throughput_img_s": "throughput img/s",
    "torch_threads": "torch threads", "device": "device", "load_average_1min_max": "1-min load average, max",
    "machine_busy": "machine busy",
}
_ENVIRONMENT_LABELS = {"cpu_count": "CPU cores (logical)", "torch_threads": "torch threads",
                       "freed_memory_kept": "freed memory kept (glibc)", "cpu_model": "CPU"}


def _kv_table(rows: list[tuple[str, str]]) -> str:
    esc = html.escape
    body = "".join(f"<tr><th scope=\"row\">{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return f'<div class="scroll"><table class="kv"><tbody>{body}</tbody></table></div>'


def _details(title: str, content: str) -> str:
    return f"<details><summary>{html.escape(title)}</summary>{content}</details>"


def _int8_section(results: dict[str, Any]) -> str:
    """The int8 schemes of ``compare --quantize`` as one table (empty when the run did not quantize)."""
    rows = [(variant, row) for variant, entry in (results.get("variants") or {}).items()
            for row in (entry.get("int8") or [])]
    if not rows:
        return ""
    esc = lambda v: html.escape(str(v))  # noqa: E731
    headers = ("variant", "scheme", "val acc", "agreement", "size (bytes)", "size vs float", "latency ms",
               "latency vs float")
    body = []
    for variant, r in rows:
        cells = (variant, r["scheme"], "-" if r.get("accuracy") is None else f"{r['accuracy']:.4f}",
                 f"{r['agreement']:.4f}", f"{r['model_bytes']:,}", f"{r['size_ratio']:.2f}",
                 f"{r['latency_ms']:.3f}", f"{r['latency_ratio']:.2f}")
        body.append("<tr>" + "".join(f'<td data-label="{esc(h)}">{esc(c)}</td>' for h, c in zip(headers, cells))
                    + "</tr>")
    head = "".join(f'<th scope="col">{esc(h)}</th>' for h in headers)
    return ('<h2>int8</h2><p>Each trained network quantized by <code>sepconv.quantize</code> (ONNX Runtime, '
            'calibrated on training images), scored on the validation split; latency at batch 1 in ONNX Runtime, '
            'float32 and int8 side by side.</p>'
            f'<div class="scroll"><table class="summary"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def render_html(results: dict[str, Any], figures: list[tuple[str, str, bytes]]) -> str:
    """A self-contained HTML page: warnings, the summary table, the figures (embedded PNGs) and
    configuration, data, measurement and environment as compact tables in collapsible sections.

    The summary table scrolls sideways inside its box on narrow screens and, below 600 px, turns
    into one labelled card per variant; figures scale to the page width.
    """
    esc = lambda v: html.escape(str(v))  # noqa: E731
    config = results.get("config") or {}
    title = f"sepconv compare: {config.get('model', '?')} on {config.get('dataset', '?')}"
    rows = results.get("table", [])
    columns = table_columns(rows)
    head = "".join(f'<th scope="col">{esc(h)}</th>' for _, h, _ in columns)
    body = []
    for row in rows:
        cells = []
        for key, header, fmt in columns:
            value = row.get(key)
            text = "-" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)
            tag = "th scope=\"row\"" if key == "variant" else "td"
            cells.append(f'<{tag} data-label="{esc(header)}" class="c-{esc(key)}">{esc(text)}</{tag.split()[0]}>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    summary = (f'<div class="scroll"><table class="summary"><thead><tr>{head}</tr></thead>'
               f'<tbody>{"".join(body)}</tbody></table></div>') if rows else "<p>No variant has finished an epoch.</p>"

    warnings = report_warnings(results)
    warning_box = ""
    if warnings:
        # options in code style, so "--threads 1" does not break after its dashes
        items = "".join("<li>" + re.sub(r"(--[a-z][a-z-]*(?: [A-Z0-9]+)?)", r"<code>\1</code>", esc(w)) + "</li>"
                        for w in warnings)
        warning_box = f'<section class="warnings" role="alert"><h2>Warnings</h2><ul>{items}</ul></section>'

    images = "".join(
        f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
        for caption, alt, png in figures
    )
    measurement = results.get("measurement") or {}
    measurement_rows = [(_MEASUREMENT_LABELS.get(k, k.replace("_", " ")), _format_value(v))
                        for k, v in measurement.items() if v is not None]
    loads = [(f"load average before timing {v}", _format_value(e["load_average_before_latency"]))
             for v, e in results.get("variants", {}).items() if e.get("load_average_before_latency")]
    environment = [(_ENVIRONMENT_LABELS.get(k, k.replace("_", " ")), _format_value(v))
                   for k, v in (results.get("environment") or {}).items() if v is not None]
    data = results.get("data") or {}
    classes = data.get("classes") or []
    class_table = ""
    if classes:
        train_counts = data.get("train_class_counts") or [None] * len(classes)
        val_counts = data.get("val_class_counts") or [None] * len(classes)
        class_rows = "".join(
            f"<tr><td>{i}</td><th scope=\"row\">{esc(c)}</th><td>{esc(_format_value(t))}</td><td>{esc(_format_value(v))}</td></tr>"
            for i, (c, t, v) in enumerate(zip(classes, train_counts, val_counts))
        )
        class_table = ('<div class="scroll"><table class="classes"><thead><tr><th scope="col">label</th>'
                       '<th scope="col">class</th><th scope="col">train</th><th scope="col">validation</th></tr></thead>'
                       f"<tbody>{class_rows}</tbody></table></div>")
    sections = "".join([
        _details("Configuration", _kv_table(_configuration_rows(results))),
        _details("Data", _kv_table(_data_rows(data)) + class_table),
        _details("Measurement", _kv_table(measurement_rows + loads)),
        _details("Environment", _kv_table(environment)),
    ])
    status = results.get("status", "complete")
    started = results.get("started")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>
*, *::before, *::after {{ box-sizing: border-box; }}
body {{ font-family: system-ui, sans-serif; line-height: 1.45; margin: 0 auto; padding: 1rem; max-width: 1200px; color: #222; }}
h1 {{ font-size: 1.5rem; overflow-wrap: anywhere; }} h2 {{ font-size: 1.2rem; }}
p, li, td, th, summary {{ overflow-wrap: anywhere; }}
.warnings {{ border: 2px solid #b8860b; background: #fff6d5; border-radius: 6px; padding: 0.5rem 1rem; margin: 1rem 0; }}
.warnings h2 {{ margin: 0.3rem 0; }}
.scroll {{ overflow-x: auto; max-width: 100%; -webkit-overflow-scrolling: touch; }}
table {{ border-collapse: collapse; margin: 0.5rem 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; font-variant-numeric: tabular-nums; }}
thead th {{ background: #f2f2f2; }}
.summary th, .summary td {{ white-space: nowrap; overflow-wrap: normal; }}
.summary th:first-child, .summary td:first-child {{ text-align: left; position: sticky; left: 0; background: #fff; }}
.summary thead th:first-child {{ background: #f2f2f2; }}
table.kv th, table.classes th {{ text-align: left; font-weight: 600; background: #fafafa; }}
table.kv td {{ text-align: left; }}
.figures {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 520px), 1fr)); gap: 1rem; }}
figure {{ margin: 0; min-width: 0; }}
img {{ display: block; max-width: 100%; height: auto; }}
figcaption {{ font-size: 0.9rem; color: #555; }}
code {{ white-space: nowrap; }}
details {{ border: 1px solid #ddd; border-radius: 6px; padding: 0.3rem 0.8rem; margin: 0.6rem 0; }}
summary {{ cursor: pointer; font-weight: 600; }}
@media (max-width: 600px) {{
  body {{ padding: 0.6rem; }}
  table.summary, .summary tbody, .summary tr, .summary th, .summary td {{ display: block; }}
  .summary thead {{ position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); }}
  .summary tr {{ border: 1px solid #ccc; border-radius: 6px; margin: 0 0 0.8rem; }}
  .summary th, .summary td {{ border: none; border-bottom: 1px solid #eee; display: flex; justify-content: space-between;
    gap: 1rem; text-align: right; position: static; }}
  .summary th::before, .summary td::before {{ content: attr(data-label); font-weight: 600; text-align: left; }}
}}
</style></head><body>
<h1>{esc(title)}</h1>
{warning_box}
<p>Status: <strong>{esc(status)}</strong>{f" (started {esc(started)})" if started else ""}. Parameters and MACs
(multiply-accumulates per sample; FLOPs = 2 x MACs) come from <code>sepconv.cost.profile</code>. Train time per epoch
is the median over epochs after the first; latency is the median forward time of one image in eval mode (see
Measurement). The train-val gap is final train accuracy (averaged over the last epoch, training mode) minus final
validation accuracy.</p>
<h2>Summary</h2>
{summary}
{_int8_section(results)}
<h2>Figures</h2>
<div class="figures">{images}</div>
<h2>Details</h2>
{sections}
</body></html>
"""


def write_report(out_dir: Path, results: dict[str, Any]) -> list[Path]:
    """Write results.json, metrics.csv, the PNG plots and report.html into ``out_dir``; return the paths."""
    out_dir = Path(out_dir)
    written = []
    write_json(out_dir / "results.json", results)
    written.append(out_dir / "results.json")
    write_metrics_csv(out_dir / "metrics.csv", {v: r["history"] for v, r in results["variants"].items()})
    written.append(out_dir / "metrics.csv")
    figures: list[tuple[str, str, bytes]] = []
    if results["variants"] and any(r["history"] for r in results["variants"].values()):
        for name, data in make_plots(results).items():
            atomic_write_bytes(out_dir / name, data)
            written.append(out_dir / name)
        figures = report_figures(results)
    atomic_write_bytes(out_dir / "report.html", render_html(results, figures).encode())
    written.append(out_dir / "report.html")
    return written
