"""Result files are data, never code or a way out of the sweep folder (issue 13, classes 1, 7, 8).

A hostile ``results.jsonl`` (links to ``javascript:``/``data:``/absolute/``..`` run folders, HTML in run
ids, settings, statuses and class names), malformed rows (lists, strings, missing fields, garbage
lines, NaN) and class names that matplotlib would read as math text go through the real
``cnnlab report`` / ``cnnlab compare``; the page is opened in headless Chromium to check that no
script runs. How many hostile inputs were tried is printed at the end of the module.
"""
from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnlab import cli, outputs, runs
from cnnlab.reporting import compare
from cnnlab.reporting import plots
from cnnlab.reporting import html as report
from cnnlab.reporting import results

sys.path.insert(0, str(Path(__file__).parent))
from conftest import print_summary_line  # noqa: E402
from test_report import browse, chromium, crafted_run, table_cells  # noqa: E402,F401 - chromium is a fixture

COUNTS: dict[str, int] = {}


def counted(kind: str, n: int = 1) -> None:
    COUNTS[kind] = COUNTS.get(kind, 0) + n


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request):
    yield
    print_summary_line(request, f"hostile result files: {sum(COUNTS.values())} hostile inputs tried, all reported "
                                f"without a traceback ({', '.join(f'{k} {v}' for k, v in sorted(COUNTS.items()))})")


def good_row(rid: str, lr: float, seed: int, acc: float | None = 0.9, **extra) -> dict:
    return {"run_id": rid, "settings": {"optim.lr": lr}, "seed": seed, "status": "completed",
            "test": {"accuracy": acc, "loss": 0.3, "f1_macro": acc}, "best": {"val_accuracy": acc, "epoch": 2.0},
            "time_s": 3.0, "run_dir": f"runs/{rid}", "final_train_loss": 0.2, **extra}


def write_lines(path: Path, lines: list) -> None:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))


XSS = '<img src=x onerror="document.title=\'PWNED\'"><script>document.title="PWNED"</script>'
HOSTILE_RUN_DIRS = ["javascript:document.title='PWNED'", "data:text/html,<script>alert(1)</script>",
                    "/etc", "/tmp", "../outside", "runs/../../outside", "runs/../../../etc", "file:///etc/passwd",
                    "http://example.com/x", "//example.com/x", "\\\\server\\share", "runs\\..\\..\\x", "", ".",
                    "runs/escape-link", "C:\\Windows", "runs/\x00nul"]


# ----------------------------------------------------------------------------- class 1: no script, no way out

def hostile_sweep(root: Path, outside: Path) -> Path:
    rows = []
    for i, lr in enumerate((0.1, 0.01)):
        for seed in (0, 1):
            rid = f"ok{i}{seed}"
            crafted_run(root / "runs" / rid)
            rows.append(good_row(rid, lr, seed, 0.8 + 0.05 * i + 0.01 * seed))
    # a folder inside the sweep whose name reads as a scheme: refused (no scheme in a run_dir, ever) ...
    crafted_run(root / "javascript:document.title='x'")
    rows.append(good_row("scheme-name", 0.1, 2, 0.81, run_dir="javascript:document.title='x'"))
    # ... and one with URL syntax deeper down: linked, percent-encoded
    crafted_run(root / "runs" / "a:b#?x=1")
    rows.append(good_row("url-chars", 0.1, 3, 0.81, run_dir="runs/a:b#?x=1"))
    (root / "runs").mkdir(exist_ok=True)
    (root / "runs" / "escape-link").symlink_to(outside, target_is_directory=True)
    for i, rd in enumerate(HOSTILE_RUN_DIRS):
        rows.append(good_row(f"evil{i}", 0.1, 10 + i, 0.99, run_dir=rd))
    rows.append(good_row(XSS, 0.01, 40, 0.7, settings={"optim.lr": XSS}, status=XSS, error=XSS))
    rows.append({**good_row("evil-key", 0.01, 41), "settings": {XSS: 1, "optim.lr": 0.01}})
    write_lines(root / "results.jsonl", rows)
    return root


def test_hostile_results_never_link_out_write_out_or_run_script(tmp_path, chromium, capsys):
    outside = tmp_path / "outside"
    crafted_run(outside)  # a run folder outside the sweep: nothing may be written into it
    before = sorted(p.name for p in outside.iterdir())
    root = hostile_sweep(tmp_path / "sweep", outside)
    assert cli.main(["report", str(root)]) == 0
    counted("hostile run_dir", len(HOSTILE_RUN_DIRS))
    counted("HTML in run id, settings, status, error, setting key", 5)
    err = capsys.readouterr().err
    assert sorted(p.name for p in outside.iterdir()) == before, "report wrote outside the sweep folder"
    assert not (tmp_path / "report.html").exists() and not Path("/etc/report.html").exists()
    for i, rd in enumerate(HOSTILE_RUN_DIRS):
        assert f"run 'evil{i}'" in err, (rd, err)
    assert "run 'scheme-name'" in err
    counted("hostile run_dir", 2)

    text = (root / "report.html").read_text()
    links = re.findall(r'href="([^"]*)"', text)
    assert links and all(link.startswith("./") and "report.html" in link for link in links), links
    assert "./runs/a%3Ab%23%3Fx%3D1/report.html" in links  # encoded: no scheme, fragment or query
    from urllib.parse import unquote

    for link in links:
        assert (root / unquote(link)).resolve().is_relative_to(root.resolve()) and (root / unquote(link)).is_file()
    assert "<script" not in text.lower() and "<img src=x" not in text
    assert "Content-Security-Policy" in text and "script-src" not in text  # default-src 'none' covers script

    got = browse(chromium, root / "report.html", tmp_path / "b")
    assert got["probe"]["title"] != "PWNED"
    assert got["probe"]["errors"] == [] and got["probe"]["fetched"] == []
    rows = table_cells(got["dom"], "runs")
    assert any(XSS in " ".join(r) for r in rows)  # shown as text


def test_the_policy_blocks_script_even_if_one_got_in(tmp_path, chromium):
    """Defence in depth: a <script> smuggled into the body of a report does not run (the CSP meta)."""
    run = crafted_run(tmp_path / "run")
    page = report.build_report(run)
    text = page.read_text().replace("<main>", '<main><script>document.title="PWNED"</script>'
                                    '<img src="data:," onerror="document.title=\'PWNED\'">', 1)
    page.write_text(text)
    got = browse(chromium, page, tmp_path / "b", height=800)
    assert got["probe"]["title"] != "PWNED"
    counted("script smuggled past the escaping", 2)


def test_every_template_autoescapes():
    env = report._environment()
    assert env.autoescape is True  # for every template, whatever its file name
    for name in env.list_templates():
        assert env.get_template(name).environment.autoescape is True, name
    html = env.get_template("_findings.html.j2").render(findings=[{"severity": XSS, "code": XSS, "message": XSS}])
    assert "<script" not in html and "<img" not in html and "&lt;script&gt;" in html
    counted("HTML in a finding", 3)


# ----------------------------------------------------------------------------- class 7: malformed files

MALFORMED = [
    "{not json", "garbage line", "[1, 2, 3]", '"a string"', "42", "null", "true",
    {"run_id": "ok00", "settings": [1, 2], "seed": 0, "status": "completed"},  # would displace the good row
    {"run_id": "ok00", "settings": "optim.lr=1", "seed": 0, "status": "completed"},
    {"run_id": "ok00"},
    {"run_id": "ok01", "settings": {"optim.lr": 0.1}, "seed": "0", "status": "completed"},
    {"run_id": "ok01", "settings": {"optim.lr": 0.1}, "seed": 1, "status": None},
    {"run_id": ["x"], "settings": {}, "seed": 0, "status": "completed"},
    {"run_id": "", "settings": {}, "seed": 0, "status": "completed"},
    {"run_id": "ok10", "settings": {"optim.lr": 0.01}, "seed": 0, "status": "completed", "test": [0.99]},
    {"run_id": "ok10", "settings": {"optim.lr": 0.01}, "seed": 0, "status": "completed", "run_dir": 5},
    {"run_id": "ok10", "settings": {"optim.lr": 0.01}, "seed": True, "status": "completed"},
    {"settings": {"optim.lr": 0.01}, "seed": 0, "status": "completed"},
]


def malformed_sweep(root: Path) -> Path:
    lines = []
    for i, lr in enumerate((0.1, 0.01)):
        for seed in (0, 1):
            rid = f"ok{i}{seed}"
            crafted_run(root / "runs" / rid)
            lines.append(good_row(rid, lr, seed, 0.8 + 0.05 * i + 0.01 * seed))
    lines += MALFORMED
    # a NaN accuracy in a finished run, as json writes it (NaN) and as older folders did ("nan")
    lines.append('{"run_id": "nan1", "settings": {"optim.lr": 0.001}, "seed": 0, "status": "completed", '
                 '"test": {"accuracy": NaN}, "run_dir": null}')
    lines.append({"run_id": "nan2", "settings": {"optim.lr": 0.001}, "seed": 1, "status": "completed",
                  "test": {"accuracy": "nan"}, "run_dir": None})
    lines.append('{"run_id": "inf1", "settings": {"optim.lr": 0.001}, "seed": 2, "status": "completed", '
                 '"test": {"accuracy": Infinity}, "run_dir": null}')
    write_lines(root / "results.jsonl", lines)
    return root


def test_malformed_rows_are_warned_and_never_displace_a_good_row(tmp_path, capsys):
    root = malformed_sweep(tmp_path / "sweep")
    rows = results.load_results(root)
    err = capsys.readouterr().err
    counted("malformed results row or line", len(MALFORMED))
    assert [r["run_id"] for r in rows] == ["ok00", "ok01", "ok10", "ok11", "nan1", "nan2", "inf1"]
    assert rows[0]["settings"] == {"optim.lr": 0.1} and rows[1]["seed"] == 1
    warned = re.findall(r"results\.jsonl line (\d+): ", err)
    assert [int(n) for n in warned] == list(range(5, 5 + len(MALFORMED)))

    assert cli.main(["compare", str(root), "--by", "optim.lr"]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "results.jsonl line 5" in err
    assert "★" in out
    best_line = next(line for line in out.splitlines() if "★" in line)
    assert best_line.startswith("| 0.01 ")  # not the NaN/inf cell of lr 0.001
    cell = compare.compare(root, by=["optim.lr"], log=lambda m: None)
    nan_cell = cell.cells[(("0.001",), ())]
    assert not nan_cell.is_best and nan_cell.values == []
    counted("NaN/inf/'nan' metric", 3)

    assert cli.main(["report", str(root)]) == 0
    err = capsys.readouterr().err
    assert "results.jsonl line 5" in err and "Traceback" not in err
    text = (root / "report.html").read_text()
    assert "Left out of this report" in text and "line 5" in text


@pytest.mark.parametrize("content", ['{"status": "completed", "classes": ["a", "b"', "", "[]", '"x"', "\x00\xff",
                                     '{"classes": "abc", "test": {"per_class": {"support": [1, 2]}}, "best": 5,'
                                     ' "model": [], "time": {"epoch_s": 3}, "env": "x", "findings": "x"}'])
def test_a_damaged_summary_json_gives_warnings_not_a_traceback(tmp_path, capsys, content):
    run = crafted_run(tmp_path / "run")
    (run / "summary.json").write_text(content)
    assert cli.main(["report", str(run)]) == 0
    err = capsys.readouterr().err
    assert str(run / "summary.json") in err and "Traceback" not in err
    assert "Learning curves" in (run / "report.html").read_text()
    counted("damaged summary.json")


@pytest.mark.parametrize("plan", ['{"runs": [1, 2]', '[]', '{"runs": "x"}', '{"runs": [{"run_id": 1}]}',
                                  '{"factors": [[{"a": 1}]], "runs": []}', '{"keys": 5}'])
def test_a_damaged_plan_is_ignored_with_a_warning(tmp_path, capsys, plan):
    root = malformed_sweep(tmp_path / "sweep")
    (root / "plan.json").write_text(plan)
    assert cli.main(["compare", str(root), "--by", "optim.lr"]) == 0
    err = capsys.readouterr().err
    assert "plan.json" in err and "Traceback" not in err
    counted("damaged plan.json")


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                                     st.text(max_size=8)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                           max_leaves=8)
row_fields = st.sampled_from(["run_id", "settings", "seed", "status", "test", "best", "run_dir", "time_s", "error"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(mutations=st.lists(st.tuples(row_fields, st.one_of(json_values, st.just("<drop>"))), min_size=1, max_size=4),
       extra=st.lists(json_values, max_size=3))
def test_property_malformed_rows_never_break_compare_or_displace_good_rows(tmp_path_factory, mutations, extra):
    """Good rows for two settings × two seeds, then rows for the same run ids with random fields replaced
    or dropped, and random JSON lines: compare never raises, each good row survives unless a *usable*
    row for that run id replaces it, and the best cell always holds a finite mean."""
    root = tmp_path_factory.mktemp("prop")
    good = [good_row(f"r{i}{s}", lr, s, 0.8 + 0.05 * i + 0.01 * s) for i, lr in enumerate((0.1, 0.01))
            for s in (0, 1)]
    bad = []
    for k, (field, value) in enumerate(mutations):
        row = dict(good[k % len(good)])
        if value == "<drop>":
            row.pop(field, None)
        else:
            row[field] = value
        bad.append(row)
    lines = [*good, *bad, *extra]
    path = root / "results.jsonl"
    path.write_text("".join(json.dumps(x, allow_nan=True) + "\n" for x in lines))
    counted("random malformed row", len(bad) + len(extra))
    warnings: list[str] = []
    kept = {r["run_id"]: r for r in results.load_results(root, log=warnings.append)}
    for g in good:
        later = [b for b in bad if isinstance(b, dict) and b.get("run_id") == g["run_id"]
                 and results.row_problem(b) is None]
        assert kept[g["run_id"]] == (later[-1] if later else g)
    for b in bad:
        if results.row_problem(b) is not None:
            line = next(i for i, x in enumerate(lines) if x is b) + 1  # not .index: seed False == 0 matches a good row
            assert any(f"line {line}:" in w for w in warnings)
    try:
        result = compare.compare(root, by=["optim.lr"], log=lambda m: None)
    except results.runs.json.JSONDecodeError:  # pragma: no cover - must not happen
        raise
    except Exception as e:  # only a refusal of the request itself (no key left) may be raised
        from cnnlab.config.schema import ConfigError

        assert isinstance(e, ConfigError), e
        return
    if result.best is not None:
        mean = result.cells[result.best].summary.mean
        assert mean is not None and math.isfinite(mean)
    result.markdown()
    result.csv()


# ----------------------------------------------------------------------------- class 8: class names are text

NASTY_CLASSES = ["$\\undefinedmacro{$", "$x^{$", "a$b$c$", "\\frac{1}{0}", "<b>bold</b>&amp;", "x" * 3000,
                 "日本語", "emoji 🙂", "nul\x00tab\tline\n", "bad\udcffbytes", "}{$\\", "_^%#"]


def test_class_names_are_drawn_literally(tmp_path):
    import numpy as np

    n = len(NASTY_CLASSES)
    cm = np.eye(n, dtype=int) * 5
    cm[0, 1] = 2
    plots.png_bytes(plots.confusion_figure(cm, NASTY_CLASSES, "$\\bad{$"))
    plots.png_bytes(plots.misclassified_figure(np.zeros((n, 3, 8, 8), dtype=np.uint8), list(range(n)),
                                               list(reversed(range(n))), [0.5] * n, NASTY_CLASSES))
    plots.png_bytes(plots.bars_figure({c: [(c, 0.5, 0.1)] for c in NASTY_CLASSES[:6]}, "$\\k{$", "$m{$"))
    plots.png_bytes(plots.factor_figure({c: [(1.0, 0.5, None), (2.0, 0.6, 0.1)] for c in NASTY_CLASSES[:6]},
                                        "$\\k{$", "m", log_x=False))
    counted("nasty class name", n)
    assert outputs.shown("$\\undefinedmacro{$") == "$\\undefinedmacro{$"
    assert len(outputs.shown("x" * 3000)) == outputs.NAME_SHOWN and "\x00" not in outputs.shown("a\x00")


def test_a_run_with_nasty_class_names_gets_its_report(tmp_path, capsys):
    run = crafted_run(tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    summary["classes"] = [NASTY_CLASSES[0], NASTY_CLASSES[4], NASTY_CLASSES[9]]  # math, HTML, bad bytes
    runs.write_json(run / "summary.json", summary)
    logged: list[str] = []
    assert report.finish_run(run, log=logged.append) is not None
    assert not [m for m in logged if m.startswith("warning")], logged
    text = (run / "report.html").read_text()
    assert "$\\undefinedmacro{$" in text and "&lt;b&gt;bold&lt;/b&gt;&amp;amp;" in text and "<b>bold" not in text
    assert (run / "curves.png").stat().st_size > 1000


def test_a_reporting_failure_names_the_file_and_training_output_stays(tmp_path, monkeypatch):
    run = crafted_run(tmp_path / "run")

    def broken(*a, **k):
        raise ValueError()  # an exception without a message, as matplotlib's parser raised

    monkeypatch.setattr(plots, "curves_figure", broken)
    logged: list[str] = []
    report.finish_run(run, log=logged.append)
    assert any(str(run / "curves.png") in m and "ValueError" in m for m in logged), logged
    assert all(m.strip() and not m.strip().endswith(":") for m in logged)
    assert (run / "report.html").exists() and "summary.json" in {p.name for p in run.iterdir()}
    counted("failing plot")


def test_training_on_class_folders_with_nasty_names(tmp_path):
    """A real image folder whose class folders are named like math text and HTML trains and reports."""
    from PIL import Image

    from cnnlab.training import loop as train
    from cnnlab.config.load import load_config

    names = ["$\\undefinedmacro{$", "<b>x&amp;", "plain"]
    for split in ("train", "test"):
        for c, name in enumerate(names):
            d = tmp_path / "data" / split / name
            d.mkdir(parents=True)
            for k in range(6):
                Image.new("L", (12, 12), color=40 * c + k).save(d / f"{k}.png")
    cfg = load_config(None, {"data.name": "imagefolder", "data.root": str(tmp_path / "data"), "data.val_size": 3,
                             "model.name": "mlp", "train.epochs": 1, "train.batch_size": 8, "train.progress": False})
    logged: list[str] = []
    summary = train.run(cfg, tmp_path / "run", log=logged.append)
    summary = report.finish_run(tmp_path / "run", log=logged.append) or summary  # curves.png, report.html
    assert summary["classes"] == sorted(names) or set(summary["classes"]) == set(names)
    assert not [m for m in logged if m.startswith("warning: could not")], logged
    assert (tmp_path / "run" / "report.html").exists() and (tmp_path / "run" / "curves.png").exists()
    counted("nasty class folder", len(names))
