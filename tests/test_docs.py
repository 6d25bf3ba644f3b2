"""The documents a newcomer reads first hold what they promise.

- BENCHMARKS.md starts with one headline table (measure | cnnlab | peer | ratio | CPU | command), every
  command it names is a script under benchmarks/ or a make target, and the history below it is ordered by
  date under dated headings.
- Every relative link in README.md and docs/ points to a file that exists.
"""
from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"
HEADLINE = ["measure", "cnnlab", "peer", "ratio", "CPU", "command"]
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def headline_table() -> tuple[list[str], list[list[str]]]:
    """The first table of BENCHMARKS.md: its header and its rows (the separator line left out)."""
    lines = BENCHMARKS.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    before = [ln for ln in lines[:start] if ln.startswith("## ")]
    assert len(before) == 1 and "headline" in before[0].lower(), f"a section comes before the headline table: {before}"
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    table = [cells(ln) for ln in lines[start:end]]
    assert set("".join(table[1])) <= set("-: "), f"no separator line under the header: {lines[start + 1]}"
    return table[0], table[2:]


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, flags=re.M))


def named_commands(cell: str) -> list[tuple[str, str]]:
    """(kind, name) for each benchmarks/*.py script and each `make X` a command cell names."""
    found = [("file", m) for m in re.findall(r"\b(benchmarks/[\w/.-]+\.py)\b", cell)]
    found += [("make", m) for m in re.findall(r"\bmake\s+([\w.-]+)", cell)]
    return found


def test_benchmarks_starts_with_the_headline_table():
    header, rows = headline_table()
    assert header == HEADLINE
    assert rows, "the headline table has no rows"
    for row in rows:
        assert len(row) == len(HEADLINE) and all(row), f"a row with an empty or missing cell: {row}"


def test_every_headline_command_is_a_benchmark_script_or_a_make_target():
    _, rows = headline_table()
    targets = make_targets()
    for row in rows:
        command = row[HEADLINE.index("command")]
        named = named_commands(command)
        assert named, f"{row[0]!r}: the command names no benchmarks/*.py script or make target: {command}"
        for kind, name in named:
            if kind == "file":
                assert (ROOT / name).is_file(), f"{row[0]!r}: {name} does not exist"
            else:
                assert name in targets, f"{row[0]!r}: `make {name}` is not a target of the Makefile"


def test_the_history_below_the_headline_is_ordered_by_date():
    headings = [ln for ln in BENCHMARKS.read_text().splitlines() if ln.startswith("## ")]
    history = headings[headings.index(next(h for h in headings if "history" in h.lower())) + 1:]
    assert history, "no history below the headline"
    dates = []
    for h in history:
        m = DATE.match(h[3:])
        assert m, f"a history heading that does not start with its date: {h}"
        dates.append(date.fromisoformat(m.group()))
    assert dates == sorted(dates), [str(d) for d in dates]


def test_the_checks_catch_what_they_should():
    assert named_commands("`.venv/bin/python benchmarks/bench_floor.py --threads 1`") == [("file", "benchmarks/bench_floor.py")]
    assert named_commands("`make studies-docs`") == [("make", "studies-docs")]
    assert named_commands("`python somewhere/else.py`") == []
    assert {"run", "test", "setup"} <= make_targets() and "PY" not in make_targets()
    assert links_of("[a](x.md) `[b](not-a-link.md)` [c](https://e.org) [d](#top) ![e](img/p.png \"t\")\n"
                    "```\n[f](inside-a-block.md)\n```\n") == ["x.md", "img/p.png"]


# ---- links


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def links_of(text: str) -> list[str]:
    """Relative link targets of a Markdown text, outside code blocks and code spans, anchors cut off."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    text = re.sub(r"`[^`\n]*`", "", text)
    out = []
    for target in re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor in the same page
        out.append(target.split("#")[0])
    return out


@pytest.mark.parametrize("doc", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file(doc):
    broken = [t for t in links_of(doc.read_text()) if not (doc.parent / t).exists()]
    assert not broken, f"{doc.relative_to(ROOT)} links to missing files: {broken}"


def test_the_readme_links_the_operator_pages():
    readme_links = {(ROOT / t).resolve() for t in links_of((ROOT / "README.md").read_text())}
    for page in ("CLUSTER.md", "TRACKING.md", "GPU.md", "ARCHITECTURE.md", "CONTRACTS.md"):
        assert (ROOT / "docs" / page).resolve() in readme_links, f"README.md does not link docs/{page}"
