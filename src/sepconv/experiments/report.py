"""What ``sepconv compare`` writes: results.json, metrics.csv, PNG plots and a self-contained report.html.

Every file is written atomically (temporary file in the same directory, then
``os.replace``). Plots use matplotlib's Agg backend (no display needed); the
HTML report embeds them as base64 PNGs so the single file opens anywhere.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Any

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
    ("best_val_acc", "best val acc", "{:.4f}"),
    ("final_val_acc", "final val acc", "{:.4f}"),
    ("train_val_gap", "train-val gap", "{:+.4f}"),
    ("val_acc_converted", "val acc converted", "{:.4f}"),
)
PLOTS = ("accuracy.png", "loss.png", "costs.png")


#: Columns shown only when some row has a value (they belong to an opt-in variant).
OPTIONAL_COLUMNS = ("val_acc_converted",)


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


def _figure_png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
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


def render_html(results: dict[str, Any], plots: dict[str, bytes]) -> str:
    """A self-contained HTML page: the table, the embedded plots, config, data and environment."""
    esc = lambda v: html.escape(str(v))  # noqa: E731
    columns = table_columns(results["table"])
    head = "".join(f"<th>{esc(h)}</th>" for _, h, _ in columns)
    body = []
    for row in results["table"]:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key)
            cells.append("-" if value is None else fmt.format(value))
        body.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    images = "".join(
        f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
        f"<figcaption>{esc(name)}</figcaption></figure>"
        for name, data in plots.items()
    )
    details = "".join(
        f"<h2>{esc(title)}</h2><pre>{esc(json.dumps(results.get(key), indent=2))}</pre>"
        for title, key in (("Configuration", "config"), ("Data", "data"), ("Measurement", "measurement"),
                           ("Environment", "environment"))
    )
    status = results.get("status", "complete")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>sepconv compare: {esc(results['config']['model'])} on {esc(results['config']['dataset'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; }}
table {{ border-collapse: collapse; }} th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }} img {{ max-width: 100%; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
</style></head><body>
<h1>sepconv compare: {esc(results['config']['model'])} on {esc(results['config']['dataset'])}</h1>
<p>Status: {esc(status)}. Parameters and MACs (multiply-accumulates per sample; FLOPs = 2 x MACs) come from
<code>sepconv.cost.profile</code>. Train time per epoch is the median over epochs after the first; latency is the
median forward time of one image in eval mode (see Measurement). The train-val gap is final train accuracy
(averaged over the last epoch, training mode) minus final validation accuracy.</p>
<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>
{images}
{details}
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
    if results["variants"] and any(r["history"] for r in results["variants"].values()):
        plots = make_plots(results)
        for name, data in plots.items():
            atomic_write_bytes(out_dir / name, data)
            written.append(out_dir / name)
    else:
        plots = {}
    atomic_write_bytes(out_dir / "report.html", render_html(results, plots).encode())
    written.append(out_dir / "report.html")
    return written
