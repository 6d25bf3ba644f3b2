"""Study pages whose tables are generated: the figures and the words come from the committed results.

A page under ``docs/studies/`` marks each generated table with an opening comment that says what to
build, and a closing ``<!-- /cnnlab -->``; everything outside the markers is prose and stays as written::

    <!-- cnnlab:claims sweep=../../recipes/sweeps/x.yaml results=study_x/part -->
    (the verdict table of the sweep file's claims, judged on study_x/part/results.jsonl)
    <!-- /cnnlab -->
    <!-- cnnlab:compare results=study_x/part by=model.variant,optim.lr metric=test.accuracy -->
    (cnnlab compare's table of that results folder)
    <!-- /cnnlab -->

Paths are relative to the page. ``python -m cnnlab.reporting.study_pages [--check] PAGE...`` rewrites the pages
(``make studies-docs``); ``--check`` only reports the pages whose tables are stale and exits 1. Running it on
a clean checkout changes nothing, which a test checks, so a page's numbers and verdicts cannot drift from
its results files.
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

from cnnlab.config.schema import ConfigError

OPEN = re.compile(r"^<!-- cnnlab:(?P<kind>[a-z]+)(?P<args>[^>]*?)-->\n", re.M)
CLOSE = "<!-- /cnnlab -->\n"
KINDS = ("claims", "compare")
PAGES = "docs/studies/*.md"


def _args(text: str, page: Path, kind: str, allowed: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in shlex.split(text):
        key, eq, value = item.partition("=")
        if not eq or key not in allowed:
            raise ConfigError(f"{page}: the {kind} marker takes {', '.join(f'{k}=...' for k in allowed)}; got {item!r}")
        out[key] = value
    return out


def claims_table(page: Path, args: dict[str, str]) -> str:
    from cnnlab.reporting import claims
    from cnnlab.reporting import results
    from cnnlab.sweeps.plan import load_sweep

    folder, sweep_file = page.parent / args["results"], page.parent / args["sweep"]
    claim_set = claims.from_plan(load_sweep(sweep_file).to_dict(), str(sweep_file))
    rows = results.load_results(folder, log=None)
    if not rows:
        raise ConfigError(f"{page}: {folder} has no results.jsonl rows for the claims marker")
    return claims.markdown(claims.judge_sweep(folder, claim_set, rows), notes=False)  # the legend: README.md


def compare_table(page: Path, args: dict[str, str]) -> str:
    from cnnlab.reporting import compare

    folder = page.parent / args["results"]
    by = [k for k in args.get("by", "").split(",") if k] or None
    result = compare.compare(folder, by=by, metric=args.get("metric", "test.accuracy"), log=lambda m: None)
    lines = result.markdown().splitlines()
    return "\n".join(lines[2:]).rstrip("\n") + "\n"  # without its "## metric by ... — folder" heading


def regenerate(page: Path, text: str | None = None) -> str:
    """The page's text with every marked table built anew (prose outside the markers unchanged)."""
    page = Path(page)
    text = page.read_text() if text is None else text
    out, pos = [], 0
    for m in OPEN.finditer(text):
        if m.start() < pos:
            continue
        end = text.find(CLOSE, m.end())
        if end < 0:
            raise ConfigError(f"{page}: the marker {m.group(0).strip()} has no closing {CLOSE.strip()}")
        kind = m.group("kind")
        if kind == "claims":
            body = claims_table(page, _args(m.group("args"), page, kind, ("sweep", "results")))
        elif kind == "compare":
            body = compare_table(page, _args(m.group("args"), page, kind, ("results", "by", "metric")))
        else:
            raise ConfigError(f"{page}: unknown marker cnnlab:{kind}; the kinds are {', '.join(KINDS)}")
        out += [text[pos:m.end()], body, CLOSE]
        pos = end + len(CLOSE)
    out.append(text[pos:])
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cnnlab.reporting.study_pages",
                                description="Rebuild the generated tables of the study pages from their results.")
    p.add_argument("pages", nargs="*", help=f"Markdown pages (default {PAGES})")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 naming the pages whose tables are stale")
    args = p.parse_args(argv)
    pages = [Path(x) for x in args.pages] or sorted(Path().glob(PAGES))
    stale = []
    try:
        for page in pages:
            old = page.read_text()
            new = regenerate(page, old)
            if new != old:
                stale.append(page)
                if not args.check:
                    page.write_text(new)
    except (ConfigError, OSError) as e:
        print(f"study_pages: error: {e}", file=sys.stderr)
        return 2
    verb = "stale" if args.check else "rewritten"
    print(f"{len(pages)} pages, {len(stale)} {verb}" + (f": {', '.join(map(str, stale))}" if stale else ""))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
