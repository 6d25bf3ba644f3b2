"""Reports: built from real tiny MNIST runs and a real sweep, then opened in a real headless Chromium.

The browser checks load a copy of the report that carries a small probe script in its
head: it records script errors and failed loads, and after the load event writes into
the DOM each image's natural size, its size on the page, and every resource the page
fetched (a self-contained report fetches none). ``--dump-dom`` hands that back. A
separate screenshot of the unmodified report is checked for painted plot colours.
A few crafted run folders (from the run-folder contract) cover what a real tiny run
does not produce: a run without misclassified.pt, a diverged run, a failed run.
"""
import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from cnnlab import runs
from cnnlab.reporting import html as report

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_overrides  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
INSTALL_HINT = ("Chromium is required for the report tests (they open report.html in a real headless browser). "
                "Install it with:  apt-get update && apt-get install -y chromium")
MATPLOTLIB_BLUE = (31, 119, 180)  # the train curve and the confusion matrix use it
MATPLOTLIB_ORANGE = (255, 127, 14)  # the validation curve

PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  window.__errors.push(t && t !== window ? 'failed to load ' + (t.src || t.href || t.tagName) : String(e.message));
}, true);
window.addEventListener('load', function () {
  var imgs = Array.prototype.map.call(document.images, function (i) {
    var r = i.getBoundingClientRect();
    return {id: i.id, cls: i.className, complete: i.complete, naturalWidth: i.naturalWidth,
            naturalHeight: i.naturalHeight, shownWidth: Math.round(r.width), shownHeight: Math.round(r.height)};
  });
  var fetched = performance.getEntriesByType('resource').map(function (e) { return e.name; });
  var pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify({images: imgs, errors: window.__errors, fetched: fetched,
                                    title: document.title});
  document.body.appendChild(pre);
});
</script>"""


# ----------------------------------------------------------------------------- the browser


@pytest.fixture(scope="session")
def chromium() -> str:
    path = shutil.which("chromium")
    if not path:
        pytest.fail(INSTALL_HINT)
    return path


def _chromium(binary: str, args: list[str], profile: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    # A fresh profile per call: nothing cached from another page or run can make a check pass.
    cmd = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    return done


def browse(binary: str, page: Path, work: Path, height: int = 4000) -> dict:
    """Open ``page`` in headless Chromium: the probe's findings, the dumped DOM and a screenshot."""
    work.mkdir(parents=True, exist_ok=True)
    text = page.read_text()
    # The probe copy sits beside the report so relative links resolve the same way.
    probe_page = page.with_name(f".probe-{page.name}")
    probe_page.write_text(text.replace("<head>", "<head>\n" + PROBE, 1))
    try:
        dom = _chromium(binary, ["--virtual-time-budget=10000", "--dump-dom", probe_page.as_uri()],
                        work / "profile-dom").stdout
    finally:
        probe_page.unlink()
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, "the page's load event never ran (no probe output in the dumped DOM)"
    shot = work / "screenshot.png"
    _chromium(binary, [f"--screenshot={shot}", f"--window-size=1280,{height}", page.as_uri()],
              work / "profile-shot")
    return {"probe": json.loads(html.unescape(found.group(1))), "dom": dom, "screenshot": Image.open(shot).convert("RGB")}


def embedded_pngs(page_text: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(m)))
            for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page_text)]


def colour_pixels(img: Image.Image, rgb: tuple, tol: int = 12) -> int:
    return sum(n for n, px in img.getcolors(maxcolors=1 << 24) if all(abs(a - b) <= tol for a, b in zip(px, rgb)))


def assert_loaded_cleanly(probe: dict, expected_images: set[str]) -> None:
    assert probe["errors"] == [], probe["errors"]
    assert probe["fetched"] == [], f"the report fetched resources, it is not self-contained: {probe['fetched']}"
    ids = {i["id"] for i in probe["images"] if i["id"]}
    assert expected_images <= ids, f"missing images: {expected_images - ids}"
    for img in probe["images"]:
        assert img["complete"] and img["naturalWidth"] > 100 and img["naturalHeight"] > 100, img
        assert img["shownWidth"] > 100 and img["shownHeight"] > 50, img


def table_cells(dom: str, table_id: str) -> list[list[str]]:
    """The text of each row's cells in the table with this id (from the dumped DOM)."""
    m = re.search(rf'<table[^>]*id="{table_id}"[^>]*>(.*?)</table>', dom, re.S)
    assert m, f"no table {table_id}"
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", m.group(1), re.S)
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r, re.S)]
            for r in rows]


# ----------------------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, data_root):
    """A tiny real MNIST run (1,000 images, 1 epoch, evaluations every 3 iterations); the trainer writes the report."""
    from cnnlab.training import loop as train
    from cnnlab.config.load import load_config

    out = tmp_path_factory.mktemp("report") / "run"
    cfg = load_config(None, tiny_overrides(**{"train.epochs": 1, "train.eval_every": 3}))
    train.run(cfg, out, log=lambda *_: None)
    from cnnlab.reporting.html import finish_run

    return out, finish_run(out, log=lambda *_: None)


def test_trainer_writes_curves_and_report(real_run):
    out, summary = real_run
    assert summary["status"] == "completed"
    curves = Image.open(out / "curves.png")
    assert curves.size == (1500, 440)
    assert colour_pixels(curves.convert("RGB"), MATPLOTLIB_BLUE) > 500  # the train curve is drawn
    assert colour_pixels(curves.convert("RGB"), MATPLOTLIB_ORANGE) > 500  # and the validation curve
    page = (out / "report.html").read_text()
    assert "<script" not in page and "<link" not in page and "http://" not in page and "https://" not in page
    assert isinstance(summary["findings"], list)


def test_run_report_in_chromium(real_run, chromium, tmp_path):
    out, summary = real_run
    t0 = time.perf_counter()
    page = report.build_report(out)
    build_s = time.perf_counter() - t0
    print(f"\nrun report built in {build_s:.2f} s")
    assert page == out / "report.html"
    assert build_s < 30  # two CPU cores shared with others; normally 1-3 s

    got = browse(chromium, page, tmp_path)
    assert_loaded_cleanly(got["probe"], {"img-curves", "img-confusion", "img-reliability", "img-misclassified"})
    sizes = {i["id"]: (i["naturalWidth"], i["naturalHeight"]) for i in got["probe"]["images"]}
    assert sizes["img-curves"] == (1500, 440)
    assert got["probe"]["title"].endswith("cnnlab run report")

    # Every embedded plot has content, not a blank canvas.
    for png in embedded_pngs(page.read_text()):
        lo, hi = png.convert("L").getextrema()
        assert hi - lo > 100 and len(png.convert("RGB").getcolors(maxcolors=1 << 20)) > 20

    # The screenshot shows the plots painted (their line colours on screen).
    shot = got["screenshot"]
    assert shot.size == (1280, 4000)
    assert colour_pixels(shot, MATPLOTLIB_BLUE, tol=20) > 400
    assert colour_pixels(shot, MATPLOTLIB_ORANGE, tol=20) > 200

    # The tables hold this run's numbers.
    dom = got["dom"]
    metrics = {r[0]: r[1:] for r in table_cells(dom, "metrics")[1:]}
    for split in ("train", "val", "test"):
        s = summary[split]
        assert metrics[split] == [f"{s[k]:.4f}" for k in ("accuracy", "loss", "precision_macro", "recall_macro",
                                                          "f1_macro", "ece")]
    per_class = table_cells(dom, "per-class-test")[1:]
    assert [r[0] for r in per_class] == summary["classes"]
    assert [int(r[4].replace(",", "")) for r in per_class] == summary["test"]["per_class"]["support"]
    assert [r[3] for r in per_class] == [f"{v:.4f}" for v in summary["test"]["per_class"]["f1"]]
    model = dict(table_cells(dom, "model"))
    assert model["parameters"] == f"{summary['model']['params_total']:,}"
    assert model["FLOPs per image"] == f"{summary['model']['flops_per_image']:,}"
    timing = dict(table_cells(dom, "timing"))
    assert timing["training throughput"] == f"{summary['time']['train_images_per_s']:.0f} images/s"
    assert {"learning-curve evaluations", "final evaluation", "set-up"} <= set(timing)  # where the time went
    env = dict(table_cells(dom, "env"))
    assert env["torch"] == summary["env"]["torch"]
    if summary["model"].get("layers"):
        assert len(table_cells(dom, "layers")) == len(summary["model"]["layers"]) + 1
    codes = re.findall(r"<code>([a-z_]+)</code>", dom)
    assert [f["code"] for f in summary["findings"]] == codes[:len(summary["findings"])]
    assert "lr: 0.003" in dom  # the resolved config


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory, data_root):
    """A real sweep: learning rate (numeric, log axis) × optimizer (categorical), two seeds, 8 tiny runs."""
    import yaml

    from cnnlab.sweeps.run import run_sweep

    root = tmp_path_factory.mktemp("sweep")
    base = {k: v for k, v in tiny_overrides(**{"data.train_limit": 500, "data.val_size": 300,
                                              "train.epochs": 1, "train.eval_every": 2}).items()}
    nested: dict = {}
    for key, value in base.items():
        node = nested
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    spec = {"base": nested, "axes": {"optim.lr": [0.001, 0.01], "optim.name": ["adam", "sgd"]}, "seeds": 2}
    (root / "tiny.yaml").write_text(yaml.safe_dump(spec))
    out = root / "out"
    rows = run_sweep(root / "tiny.yaml", out_dir=out)
    return out, rows


@pytest.mark.slow
def test_sweep_report_in_chromium(real_sweep, chromium, tmp_path):
    out, rows = real_sweep
    assert len(rows) == 8
    for r in rows:  # the report must build the run reports that are missing
        (out / r["run_dir"] / "report.html").unlink(missing_ok=True)
    t0 = time.perf_counter()
    page = report.build_report(out)
    build_s = time.perf_counter() - t0
    print(f"\nsweep report (8 runs, 8 run reports rebuilt) built in {build_s:.2f} s")
    assert page == out / "report.html"

    got = browse(chromium, page, tmp_path)
    probe = got["probe"]
    assert_loaded_cleanly(probe, {"img-sweep-curves"})
    factors = [i for i in probe["images"] if i["cls"] == "factor"]
    assert len(factors) == 2  # one plot per swept factor
    dom = got["dom"]
    assert "optim.lr <span class=\"sub\">(log x axis)</span>" in dom
    assert "optim.name <span class=\"sub\">(categorical)</span>" in dom

    # Each run has a row with its test accuracy and a working relative link to its own report.
    run_rows = table_cells(dom, "runs")[1:]
    assert len(run_rows) == 8
    by_id = {r["run_id"]: r for r in rows}
    for cells in run_rows:
        row = by_id[cells[0]]
        assert cells[4] == f"{row['test']['accuracy']:.4f}"
        assert (out / row["run_dir"] / "report.html").exists()
    links = re.findall(r'<a href="([^"]+)"', dom)
    assert len(links) == 8 and all(not link.startswith(("/", "file:", "http")) for link in links)
    assert all((out / link).is_file() for link in links)

    # The settings table ranks the four settings by mean test accuracy over the two seeds.
    settings = table_cells(dom, "settings")[1:]
    assert len(settings) == 4 and all(s[1] == "2/2" for s in settings)
    means = [float(s[2]) for s in settings]
    assert means == sorted(means, reverse=True)
    # The comparison table from cnnlab.reporting.compare (in %): the best cell is starred.
    assert "★" in dom and "optim.lr × optim.name" in dom

    # A run report reached through a link opens cleanly too.
    linked = browse(chromium, out / links[0], tmp_path / "linked")
    assert_loaded_cleanly(linked["probe"], {"img-curves", "img-confusion"})




# ----------------------------------------------------------------------------- crafted run folders


def crafted_run(d: Path, *, status="completed", history=None, summary_extra=None, with_summary=True) -> Path:
    """A run folder written from the contract (docs/CONTRACTS.md), without training."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text("model:\n  name: tiny\noptim:\n  lr: 0.01\n")
    history = history if history is not None else [
        {"step": 10 * e, "epoch": float(e), "lr": 0.01, "train_loss": 1.0 / e, "train_accuracy": 0.6 + 0.1 * e,
         "val_loss": 1.1 / e, "val_accuracy": 0.55 + 0.1 * e, "elapsed_s": 2.0 * e} for e in (1, 2, 3)]
    for r in history:
        runs.append_jsonl(d / "metrics.jsonl", r)
    if with_summary:
        classes = ["cat", "dog", "bird"]
        split = {"accuracy": 0.8125, "loss": 0.5, "precision_macro": 0.81, "recall_macro": 0.8, "f1_macro": 0.805,
                 "per_class": {"precision": [0.9, 0.8, 0.73], "recall": [0.85, 0.8, 0.75], "f1": [0.87, 0.8, 0.74],
                               "support": [40, 30, 10]},
                 "confusion": [[34, 4, 2], [3, 24, 3], [1, 1, 8]]}
        summary = {"status": status, "seed": 3, "config": {"model": {"name": "tiny"}, "loss": {"name": "cross_entropy"}},
                   "classes": classes, "best": {"epoch": 3.0, "step": 30, "val_accuracy": 0.85, "val_loss": 0.37},
                   "train": split, "val": split, "test": split,
                   "model": {"name": "tiny", "params_total": 1234, "params_trainable": 1234, "flops_per_image": 5678},
                   "time": {"train_s": 6.0, "eval_s": 1.0, "total_s": 7.5, "train_images_per_s": 1500.0,
                            "epoch_s": [2.0, 2.0, 2.0]},
                   "env": {"torch": "x"}, **(summary_extra or {})}
        runs.write_json(d / "summary.json", summary)
    return d


def test_crafted_run_without_misclassified_file(tmp_path, chromium):
    run = crafted_run(tmp_path / "run")
    page = report.build_report(run)
    text = page.read_text()
    assert "holds no misclassified.pt" in text
    assert 'id="img-misclassified"' not in text
    # No findings stored: the report runs the doctor itself and says so.
    assert "computed now from the run folder" in text
    got = browse(chromium, page, tmp_path / "b", height=1600)
    assert_loaded_cleanly(got["probe"], {"img-curves", "img-confusion"})
    assert [r[0] for r in table_cells(got["dom"], "per-class-test")[1:]] == ["cat", "dog", "bird"]


def test_crafted_run_with_misclassified_images(tmp_path):
    import torch

    run = crafted_run(tmp_path / "run")
    torch.save({"images": torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8),
                "true": torch.tensor([0, 1, 2, 0, 1]), "pred": torch.tensor([1, 2, 0, 2, 0]),
                "confidence": torch.tensor([0.99, 0.9, 0.8, 0.7, 0.6])}, run / "misclassified.pt")
    text = report.write_run_report(run).read_text()
    assert "The 5 misclassified test images" in text
    assert 'id="img-misclassified"' in text


def test_diverged_run_with_nan_losses(tmp_path):
    history = [{"step": 10, "epoch": 1.0, "lr": 1.0, "train_loss": 2.0, "train_accuracy": 0.3, "val_loss": 2.1,
                "val_accuracy": 0.3, "elapsed_s": 1.0},
               {"step": 20, "epoch": 2.0, "lr": 1.0, "train_loss": "nan", "train_accuracy": 0.1, "val_loss": "nan",
                "val_accuracy": 0.1, "elapsed_s": 2.0}]
    run = crafted_run(tmp_path / "run", status="diverged", history=history,
                      summary_extra={"error": "non-finite loss at step 17"})
    text = report.build_report(run).read_text()
    assert "non-finite loss at step 17" in text
    assert "<code>diverged</code>" in text
    assert 'id="img-curves"' in text  # the curve up to the blow-up is still drawn


def test_failed_run_without_summary(tmp_path):
    run = crafted_run(tmp_path / "run", with_summary=False, history=[])
    text = report.build_report(run).read_text()
    assert "No final metrics" in text and "holds no evaluation yet" in text


def test_plot_curves_writes_a_png(tmp_path):
    rows = runs.read_jsonl(crafted_run(tmp_path / "run") / "metrics.jsonl")
    data = report.plot_curves(rows, tmp_path / "curves.png")
    img = Image.open(tmp_path / "curves.png")
    assert img.size == (1500, 440) and (tmp_path / "curves.png").read_bytes() == data
    assert not list(tmp_path.glob(".curves.png.*")), "no temporary file left behind"


def test_build_report_refuses_other_folders(tmp_path):
    from cnnlab.config.schema import ConfigError

    with pytest.raises(ConfigError, match="neither a run folder"):
        report.build_report(tmp_path)
    with pytest.raises(ConfigError, match="not a folder"):
        report.build_report(tmp_path / "missing")


# ----------------------------------------------------------------------------- crafted sweep folder

LRS, ACTIVATIONS = (0.001, 0.01), ("relu", None)  # None: the builder's default, shown as "default"


def crafted_sweep(root: Path) -> tuple[Path, list[dict]]:
    """results.jsonl + runs/<id>/ for lr × activation × 2 seeds, one diverged and one failed run.

    Six of the eight existing run folders already have a report.html (a marker text), two do not.
    """
    rows = []
    for i, (lr, act, seed) in enumerate((lr, a, s) for lr in LRS for a in ACTIVATIONS for s in (0, 1)):
        rid = f"run{i}"
        acc = 0.80 + 0.05 * (lr == 0.01) + 0.02 * (act == "relu") + 0.01 * seed
        status = "completed"
        if (lr, act, seed) == (0.01, None, 1):
            status, acc = "diverged", None
        row = {"run_id": rid, "settings": {"optim.lr": lr, "model.activation": act}, "seed": seed,
               "status": status, "test": {"accuracy": acc, "loss": 0.4, "f1_macro": acc},
               "best": {"val_accuracy": acc, "epoch": 3.0}, "time_s": 7.5, "run_dir": f"runs/{rid}",
               "final_train_loss": 0.3}
        crafted_run(root / "runs" / rid, status=status)
        if i >= 2:
            (root / "runs" / rid / "report.html").write_text("<html>marker</html>")
        rows.append(row)
    rows.append({"run_id": "lost", "settings": {"optim.lr": 0.001, "model.activation": "relu"}, "seed": 2,
                 "status": "failed", "test": {"accuracy": None, "loss": None, "f1_macro": None},
                 "best": {"val_accuracy": None, "epoch": None}, "time_s": None, "run_dir": "runs/lost",
                 "final_train_loss": None, "error": "killed"})
    for r in rows:
        runs.append_jsonl(root / "results.jsonl", r)
    return root, rows


def test_crafted_sweep_report_in_chromium(tmp_path, chromium):
    root, rows = crafted_sweep(tmp_path / "sweep")
    t0 = time.perf_counter()
    page = report.build_report(root)
    print(f"\ncrafted sweep report (9 rows, 2 run reports built) in {time.perf_counter() - t0:.2f} s")
    # Missing run reports were built; existing ones were left alone.
    assert "Run doctor" in (root / "runs/run0/report.html").read_text()
    assert "Run doctor" in (root / "runs/run1/report.html").read_text()
    assert (root / "runs/run5/report.html").read_text() == "<html>marker</html>"

    got = browse(chromium, page, tmp_path / "b")
    assert_loaded_cleanly(got["probe"], {"img-sweep-curves"})
    assert len([i for i in got["probe"]["images"] if i["cls"] == "factor"]) == 2
    dom = got["dom"]
    assert "optim.lr <span class=\"sub\">(log x axis)</span>" in dom
    assert "model.activation <span class=\"sub\">(categorical)</span>" in dom

    # Settings ranked by mean test accuracy of the finished runs; the diverged run counts in "runs" only.
    settings = table_cells(dom, "settings")[1:]
    assert [s[0] for s in settings] == ["lr=0.01, activation=relu", "lr=0.01, activation=default",
                                        "lr=0.001, activation=relu", "lr=0.001, activation=default"]
    assert settings[0][1:4] == ["2/2", "0.8750", "0.0071"]
    assert settings[1][1:4] == ["1/2", "0.8500", "–"]  # one finished run: no spread
    assert settings[2][1] == "2/3"  # the failed run has a row but no result

    # The comparison tables come from cnnlab.reporting.compare: main table plus one per factor, best cell starred.
    compare_tables = re.findall(r'<table class="compare">', dom)
    assert len(compare_tables) == 3
    assert dom.count('class="bestcell"') == 3 and "87.50 ± 0.71 (2)" in dom

    run_rows = table_cells(dom, "runs")[1:]
    assert len(run_rows) == 9
    links = re.findall(r'<a href="([^"]+)"', dom)
    assert links == [f"./runs/run{i}/report.html" for i in range(8)]  # the failed run has no folder, no link
    assert [r[3] for r in run_rows].count("diverged") == 1


def test_cli_report_command(tmp_path, capsys):
    from cnnlab import cli

    run = crafted_run(tmp_path / "run")
    assert cli.main(["report", str(run)]) == 0
    assert "report.html" in capsys.readouterr().out
    assert (run / "report.html").stat().st_size > 10_000
    assert cli.main(["report", str(tmp_path / "nothing-here")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_ofat_factor_plots_show_a_zip_group_once_with_all_its_values():
    # Study E: loss.name and model.softmax_output change together (MSE on the softmax output); the partner
    # got a plot of its own holding only the base case, and the loss plot lost the MSE runs.
    from cnnlab.reporting.html import _factor_plots

    base = {"optim.lr": 0.001, "loss.name": "cross_entropy", "model.softmax_output": None}
    def row(seed, acc, **change):
        return {"run_id": f"r{seed}{sorted(change.items())}", "seed": seed, "status": "completed",
                "settings": {**base, **change}, "test": {"accuracy": acc}}
    rows = [row(s, 0.75) for s in range(2)] + [row(s, 0.8, **{"optim.lr": 0.004}) for s in range(2)]
    rows += [row(s, 0.7, **{"loss.name": "mse", "model.softmax_output": True}) for s in range(2)]
    plan = {"ofat": True, "base_settings": base, "factors": [["optim.lr"], ["loss.name", "model.softmax_output"]]}
    figures = _factor_plots(rows, list(base), "test.accuracy", plan)
    assert [f["key"] for f in figures] == ["optim.lr", "loss.name"]


def _age(path: Path, seconds: float) -> None:
    """Make ``path`` look ``seconds`` older (its modification time moved back)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def test_sweep_report_rebuilds_only_missing_or_stale_run_reports(tmp_path, capsys):
    from cnnlab import cli

    root, _ = crafted_sweep(tmp_path / "sweep")  # run0, run1 have no report; run2..7 a current marker
    assert cli.main(["report", str(root)]) == 0
    assert "(run reports: 2 built, 6 up to date)" in capsys.readouterr().out
    assert (root / "runs/run5/report.html").read_text() == "<html>marker</html>"
    # run5 resumed after its report was written: its summary.json is newer, so its report is rebuilt
    _age(root / "runs/run5/report.html", 60)
    assert cli.main(["report", str(root)]) == 0
    assert "(run reports: 1 built, 7 up to date)" in capsys.readouterr().out
    assert "Run doctor" in (root / "runs/run5/report.html").read_text()
    assert (root / "runs/run2/report.html").read_text() == "<html>marker</html>"
    assert cli.main(["report", str(root), "--force"]) == 0
    assert "(run reports: 8 built, 0 up to date)" in capsys.readouterr().out
    assert "Run doctor" in (root / "runs/run2/report.html").read_text()


def test_run_report_embeds_a_current_curves_png_instead_of_drawing_it(tmp_path):
    run = crafted_run(tmp_path / "run")
    buf = io.BytesIO()
    Image.new("RGB", (3, 2), (1, 2, 3)).save(buf, format="PNG")  # not what the curves would look like
    (run / "curves.png").write_bytes(buf.getvalue())
    mark = base64.b64encode(buf.getvalue()).decode("ascii")
    assert mark in report.write_run_report(run).read_text()
    assert mark not in report.write_run_report(run, reuse=False).read_text()  # --force draws them again
    for name in ("metrics.jsonl", "summary.json"):  # older than the files it is drawn from: drawn again
        _age(run / "curves.png", 60)
        assert mark not in report.write_run_report(run).read_text()
        os.utime(run / "curves.png")
    (run / "curves.png").write_bytes(b"not a png")
    text = report.write_run_report(run).read_text()
    assert 'id="img-curves"' in text and base64.b64encode(b"not a png").decode() not in text


# ----------------------------------------------------------------------------- a sweep's plots as PNG files


def test_sweep_report_writes_its_plots_as_png_files(tmp_path, data_root, capsys):
    import yaml

    from cnnlab import cli
    from cnnlab.sweeps.run import run_sweep

    base = {"data": {"name": "mnist", "train_limit": 300, "val_size": 100}, "model": {"name": "linear"},
            "optim": {"name": "adam"}, "train": {"epochs": 1, "batch_size": 100, "progress": False, "threads": 1}}
    (tmp_path / "lr.yaml").write_text(yaml.safe_dump({"base": base, "axes": {"optim.lr": [0.001, 0.01]}}))
    out = tmp_path / "out"
    assert [r["status"] for r in run_sweep(tmp_path / "lr.yaml", out_dir=out)] == ["completed"] * 2
    capsys.readouterr()
    assert cli.main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    files = [out / "plots" / "curves.png", out / "plots" / "optim.lr.png"]  # the mean curves, the factor plot
    assert sorted((out / "plots").iterdir()) == files  # nothing else (no temporary file left)
    assert f"plots: {files[0]}, {files[1]}" in printed
    page = (out / "report.html").read_text()
    embedded = {base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)}
    for f in files:
        data = f.read_bytes()
        assert data.startswith(report.PNG_SIGNATURE) and data in embedded  # the same bytes as the page shows
        with Image.open(f) as img:
            assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100
    assert "plots/" not in page  # the page still carries its images itself


def test_plot_file_names_stay_in_the_plots_folder(tmp_path):
    pngs = {"factor ../../etc/x": b"a", "factor .hidden": b"b", "factor a/b": b"c", "factor a_b": b"d"}
    written = report.write_plot_files(tmp_path / "plots", pngs)
    assert [p.name for p in written] == ["_.._etc_x.png", "hidden.png", "a_b.png", "a_b_.png"]
    assert all(p.parent == tmp_path / "plots" and p.read_bytes() == v for p, v in zip(written, pngs.values()))
