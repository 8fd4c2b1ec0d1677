"""report.html: structure (warnings box, collapsible sections, settings that apply, no JSON) and layout
rendered by headless Chromium at desktop and phone widths."""

from __future__ import annotations

import base64
import html as html_lib
import json
import re
import shutil
import subprocess
from dataclasses import asdict

import pytest

pytest.importorskip("matplotlib", reason="the report's figures need matplotlib (sepconv[experiments])")

from sepconv.experiments.compare import CompareConfig  # noqa: E402
from sepconv.experiments.report import pareto_front, render_html, report_figures, report_warnings, write_report  # noqa: E402

VARIANTS = {"standard": (1_146_826, 38_000_000, 0.92), "separable": (136_275, 5_100_000, 0.90),
            "grouped": (310_218, 9_800_000, 0.91), "spatial": (724_557, 25_000_000, 0.885)}


def fake_results(dataset="digits", *, busy=False, status="complete", epochs=3, accuracies=None, nan_in=None):
    """A results dict shaped like the one ``run_compare`` passes to ``write_report``."""
    config = asdict(CompareConfig(dataset=dataset, epochs=epochs, data_dir=None if dataset == "digits" else "/data"))
    config["variants"] = list(VARIANTS)
    classes = [f"class {i}" for i in range(10)]
    results = {
        "status": status, "started": "2000-01-01T00:00:00+00:00", "config": config,
        "resolved": {"device": "cpu", "amp": False, "world_size": 1, "build_kwargs": {"image_size": 32, "width": 1.0},
                     "optimizer": "Adam, constant lr", "loss": "cross-entropy", "conversion": None},
        "data": {"name": dataset, "input_shape": [1, 8, 8], "num_classes": 10, "classes": classes,
                 "train_size": 1437, "val_size": 360, "train_class_counts": [144] * 9 + [141],
                 "val_class_counts": [36] * 10, "source": "sklearn.datasets.load_digits",
                 "split": "stratified, val_fraction=0.2, split_seed=0",
                 "normalization": {"scale": "1/16", "mean": [0.3], "std": [0.4]}},
        "environment": {"sepconv": "0.1", "python": "3.11", "torch": "2.x", "platform": "Linux-x86_64",
                        "cpu_count": 2, "torch_threads": 1, "cuda": None, "gpu": None},
        "measurement": {"train_s_per_epoch": "median ...", "latency_ms": "median ...", "torch_threads": 1,
                        "device": "cpu", "load_average_1min_max": 7.5 if busy else 0.4, "machine_busy": busy},
        "variants": {}, "table": [],
    }
    for i, (variant, (params, macs, acc)) in enumerate(VARIANTS.items()):
        final = (accuracies or {}).get(variant, acc)
        history = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": final - 0.1 / e + 0.02, "val_loss": 1.1 / e,
                    "val_acc": final - 0.1 / e + 0.1 / epochs, "train_time_s": 2.0, "val_time_s": 0.1}
                   for e in range(1, epochs + 1)]
        if nan_in == variant:
            history[-1]["train_loss"] = float("nan")
        table_row = {"variant": variant, "params": params, "macs": macs, "flops": 2 * macs, "epochs": epochs,
                     "train_s_per_epoch": 2.0 + i, "latency_ms": 1.5 + i, "latency_optimized_ms": 0.4 + i,
                     "best_val_acc": final, "best_epoch": epochs,
                     "final_val_acc": final, "final_train_acc": final + 0.02, "train_val_gap": 0.02,
                     "val_acc_converted": None}
        results["variants"][variant] = {"params": params, "macs": macs, "history": history, "summary": table_row,
                                        "load_average_before_latency": [0.4, 0.3, 0.2]}
        results["table"].append(table_row)
    return results


def visible_text(page):
    """The page's text as a reader sees it: no style block, no tags, entities decoded."""
    page = re.sub(r"<style>.*?</style>", "", page, flags=re.S)
    page = re.sub(r'src="data:image/png;base64,[^"]*"', "", page)
    return html_lib.unescape(re.sub(r"<[^>]+>", " ", page))


@pytest.fixture(scope="module")
def figures():
    return report_figures(fake_results())


def test_figures_one_per_metric_and_pareto(figures):
    titles = [t for t, _, _ in figures]
    assert titles == ["Accuracy per epoch", "Cross-entropy loss per epoch", "Accuracy vs MACs per sample",
                      "Accuracy vs parameters", "Parameters", "MACs per sample", "Train time per epoch (s)",
                      "Latency, batch 1 (ms)"]
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" for _, _, png in figures)


@pytest.mark.parametrize("points,front", [
    ([(1, 0.9), (2, 0.95), (3, 0.93)], [0, 1]),  # the 3rd costs more than the 2nd and is less accurate
    ([(1, 0.9), (1, 0.8)], [0]),                 # equal cost: the more accurate wins
    ([(5, 0.5)], [0]),
    ([(1, 0.5), (2, 0.6), (3, 0.7)], [0, 1, 2]),
])
def test_pareto_front(points, front):
    assert pareto_front(points) == front


def test_structure_without_warnings(figures):
    page = render_html(fake_results(), figures)
    assert 'class="warnings"' not in page
    assert page.count("<details>") == 4
    for title in ("Configuration", "Data", "Measurement", "Environment"):
        assert f"<summary>{title}</summary>" in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(figures) and all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert "http://" not in page and "https://" not in page  # no external assets
    assert '<meta name="viewport"' in page
    text = visible_text(page)
    # no raw JSON: no braces, no quoted keys, no JSON literals
    assert "{" not in text and "}" not in text and '":' not in text
    assert not re.search(r"\b(null|true|false)\b", text)
    # the accuracy columns are in the summary table, labelled for the stacked phone layout
    assert 'data-label="final val acc"' in page and "0.9200" in text
    # the latency a deployment gets sits beside the eager one
    assert page.index('data-label="latency ms (b=1)"') < page.index('data-label="optimized ms (b=1)"')
    # settings that apply to digits only: no image size, data directory or download; conversion settings absent
    config_section = page.split("<summary>Configuration</summary>")[1].split("</details>")[0]
    for absent in ("image size", "data directory", "download", "finetune", "convert to"):
        assert absent not in config_section
    assert "validation fraction" in config_section and "PyTorch default" in config_section


def test_settings_that_apply_to_imagefolder(figures):
    config_section = render_html(fake_results("imagefolder"), figures).split("<summary>Configuration</summary>")[1]
    config_section = config_section.split("</details>")[0]
    assert "image size" in config_section and "data directory" in config_section and "download" not in config_section


def test_busy_machine_warning_at_the_top(figures):
    page = render_html(fake_results(busy=True), figures)
    box = page.index('class="warnings"')
    assert box < page.index('<table class="summary"')
    assert "The machine was busy" in page and "7.50 on 2 cores" in page and "--threads 1" in page


@pytest.mark.parametrize("kwargs,needle", [
    ({"status": "interrupted"}, "did not finish (status: interrupted)"),
    ({"status": "diverged", "nan_in": "grouped"}, "Training diverged (a loss became NaN or infinite) in: grouped"),
    ({"accuracies": {"spatial": 0.12}}, "Near chance: best validation accuracy below 0.190"),
])
def test_other_warnings(kwargs, needle):
    warnings = report_warnings(fake_results(**kwargs))
    assert len(warnings) == 1 and needle in warnings[0]
    if "accuracies" in kwargs:
        assert warnings[0].endswith("learning rate may be needed before comparing them.") and "spatial" in warnings[0]


def test_write_report_writes_the_files(tmp_path):
    written = write_report(tmp_path, fake_results(epochs=2))
    assert {p.name for p in written} == {"results.json", "metrics.csv", "accuracy.png", "loss.png", "costs.png",
                                         "report.html"}
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "complete"


# ---------------------------------------------------------------- rendered in a browser

#: The harness: the report in an iframe exactly ``WIDTH`` CSS pixels wide (headless Chromium will not make a
#: window narrower than 500 px, an iframe sets the report's viewport to any width). When the report has loaded,
#: its <details> are opened and what its layout looks like goes into <body data-layout="...">, which
#: --dump-dom prints.
HARNESS = """<!DOCTYPE html><html><head><meta charset="utf-8"><style>body { margin: 0 }</style></head><body>
<iframe id="report" style="width: WIDTHpx; height: 6000px; border: 0; display: block" srcdoc="REPORT"></iframe>
<script>
document.getElementById("report").addEventListener("load", () => {
  const win = document.getElementById("report").contentWindow, doc = win.document;
  doc.querySelectorAll("details").forEach(d => { d.open = true; });
  const width = doc.documentElement.clientWidth;
  const rect = e => e.getBoundingClientRect();
  const scroller = doc.querySelector(".scroll");
  const cells = [...doc.querySelectorAll(".summary .c-final_val_acc, .summary .c-best_val_acc")];
  // a cell is reachable when it is inside the viewport, or inside a box the reader can scroll sideways
  const reachable = cells.every(c => rect(c).right <= width + 1 ||
      (win.getComputedStyle(scroller).overflowX === "auto" && scroller.scrollWidth > scroller.clientWidth));
  const box = doc.querySelector(".warnings");
  const layout = {
    viewport: width,
    pageScrollWidth: doc.documentElement.scrollWidth,
    accuracyCells: cells.length,
    accuracyReachable: reachable,
    accuracyInView: cells.every(c => rect(c).right <= width + 1 && rect(c).left >= 0),
    accuracyOneLine: cells.every(c => { const r = doc.createRange(); r.selectNodeContents(c);
                                        return r.getClientRects().length === 1; }),
    images: [...doc.images].map(i => ({right: rect(i).right, width: rect(i).width,
                                       natural: i.naturalWidth, complete: i.complete})),
    warnings: !!box,
    warningsRight: box ? rect(box).right : 0,
    detailsTablesFit: [...doc.querySelectorAll("details .scroll")].every(s => rect(s).right <= width + 1),
  };
  document.body.setAttribute("data-layout", JSON.stringify(layout));
});
</script></body></html>"""


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _layout(chromium, page, width, folder):
    page_path = folder / f"harness-{width}.html"
    page_path.write_text(HARNESS.replace("WIDTH", str(width)).replace("REPORT", html_lib.escape(page, quote=True)))
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={folder / f'profile-{width}'}", f"--window-size={max(width, 500) + 20},1600",
         "--hide-scrollbars",
         "--virtual-time-budget=5000", "--dump-dom", page_path.as_uri()],
        capture_output=True, text=True, timeout=60,
    )
    match = re.search(r'data-layout="([^"]*)"', proc.stdout)
    assert match, f"no layout recorded (chromium exit {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(html_lib.unescape(match.group(1)))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, figures):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no headless browser: install Debian's chromium package (apt-get install chromium)")
    folder = tmp_path_factory.mktemp("browser")
    page = render_html(fake_results(busy=True), figures)
    return {width: _layout(chromium, page, width, folder) for width in (1280, 400)}


@pytest.mark.parametrize("width", [1280, 400])
def test_report_fits_the_screen(rendered, width):
    layout = rendered[width]
    assert layout["viewport"] == width
    # nothing sticks out of the page sideways: no horizontal page scroll
    assert layout["pageScrollWidth"] <= layout["viewport"], layout
    # every accuracy cell of the summary table can be reached
    assert layout["accuracyCells"] == 2 * len(VARIANTS) and layout["accuracyReachable"], layout
    assert layout["accuracyOneLine"], layout  # numbers are not broken across lines to squeeze the table
    # every figure loaded, fits the width and stays legible (at least 45 % of its native size)
    assert len(layout["images"]) == 8
    for image in layout["images"]:
        assert image["complete"] and image["natural"] > 0
        assert image["right"] <= layout["viewport"] + 1
        assert image["width"] >= 0.45 * min(image["natural"], layout["viewport"]), image
    assert layout["warnings"] and layout["warningsRight"] <= layout["viewport"] + 1
    assert layout["detailsTablesFit"]


def test_phone_width_stacks_the_table(rendered):
    # at 400 px the table becomes one card per variant: the accuracy values are in view without scrolling
    assert rendered[400]["accuracyInView"], rendered[400]
    assert rendered[1280]["accuracyInView"], rendered[1280]
