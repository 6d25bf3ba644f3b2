"""Claims as code: the verdict rule's every word, the claims: block's validation, `cnnlab claims`, and
the study pages whose tables regenerate byte-identically from the committed results."""
import json
from pathlib import Path

import pytest
import yaml
from scipy import stats as scipy_stats

from cnnlab.reporting import claims
from cnnlab.reporting import stats
from cnnlab.reporting.claims import Claim, Layout, judge
from cnnlab.cli import main
from cnnlab.config.schema import ConfigError
from cnnlab.reporting.study_pages import regenerate
from cnnlab.sweeps.plan import plan_sweep

REPO = Path(__file__).resolve().parents[1]
LAYOUT = Layout(["optim.lr"])
A, B = {"optim.lr": 0.01}, {"optim.lr": 0.001}


def rows(a_values, b_values=(), status=None):
    """Results rows of a two-cell sweep (cell A: lr 0.01, cell B: lr 0.001), one per seed."""
    out = []
    for cell, values in ((A, a_values), (B, b_values)):
        for seed, v in enumerate(values):
            out.append({"run_id": f"{cell['optim.lr']}-{seed}", "settings": dict(cell), "seed": seed,
                        "status": (status or {}).get((cell["optim.lr"], seed), "completed"),
                        "test": {"accuracy": v}})
    return out


def pair(relation=">", margin=None, **kw):
    return Claim("a vs b", A, relation, "x", "y", b=B, margin=margin, **kw)


def level(value, tolerance=0.005, relation="≈", **kw):
    return Claim("a level", A, relation, "x", "y", level=value, tolerance=tolerance if relation == "≈" else None, **kw)


# ----------------------------------------------------------------------------- each word


def test_holds_when_welch_finds_the_claimed_direction():
    v = judge(pair(">"), rows([0.95, 0.951, 0.949], [0.90, 0.905, 0.895]), LAYOUT)
    assert v.word == "holds"
    # the interval is scipy's Welch interval of the difference
    ref = scipy_stats.ttest_ind([0.95, 0.951, 0.949], [0.90, 0.905, 0.895], equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert v.test.diff == pytest.approx(0.05) and (v.test.ci_low, v.test.ci_high) == pytest.approx((ci.low, ci.high))
    assert v.test.p == pytest.approx(ref.pvalue)


def test_reversed_when_welch_finds_the_other_direction():
    v = judge(pair("<"), rows([0.95, 0.951, 0.949], [0.90, 0.905, 0.895]), LAYOUT)
    assert v.word == "reversed"


def test_within_noise_says_how_many_seeds_would_resolve_the_difference():
    a, b = [0.90, 0.92, 0.94], [0.89, 0.91, 0.93]
    v = judge(pair(">"), rows(a, b), LAYOUT)
    assert v.word == "within noise" and v.test.p > 0.05
    n = v.seeds_needed
    assert n and n > 3
    # at n seeds per cell a test of the observed difference has power >= 0.8, at n - 1 less
    sd = 0.02

    def power(k):
        se = (2 * sd ** 2 / k) ** 0.5
        crit = scipy_stats.t.ppf(0.975, 2 * k - 2)
        return scipy_stats.nct.sf(crit, 2 * k - 2, 0.01 / se) + scipy_stats.nct.cdf(-crit, 2 * k - 2, 0.01 / se)
    assert power(n) >= 0.8 > power(n - 1)


def test_equivalence_holds_only_from_the_two_one_sided_tests():
    close = judge(pair("≈", margin=0.005), rows([0.958, 0.959, 0.957], [0.9575, 0.9585, 0.958]), LAYOUT)
    assert close.word == "holds" and close.equivalence_p < 0.05


def test_a_large_p_alone_never_makes_an_equality_claim_hold():
    # wide seeds, identical means: Welch's p is 1.0, yet nothing shows the cells within half a point
    v = judge(pair("≈", margin=0.005), rows([0.80, 0.90, 0.99], [0.99, 0.90, 0.80]), LAYOUT)
    assert v.test.p == pytest.approx(1.0)
    assert v.word == "within noise" and v.equivalence_p > 0.05
    lv = judge(level(0.9, tolerance=0.005), rows([0.80, 0.90, 1.0]), LAYOUT)
    assert lv.test.p == pytest.approx(1.0) and lv.word == "within noise"


def test_an_equality_claim_whose_cells_clearly_differ_differs():
    v = judge(pair("≈", margin=0.005), rows([0.95, 0.951, 0.949], [0.90, 0.905, 0.895]), LAYOUT)
    assert v.word == "differs"


def test_level_differs_when_the_studys_figure_is_outside_the_interval():
    # Study E's FC net: 88.93 ± 0.10 % (3) [88.68, 89.18] against the study's 89.4 %
    values = [0.8904, 0.8884, 0.8891]
    described = stats.describe(values)
    assert not described.ci_low <= 0.894 <= described.ci_high
    v = judge(level(0.894, tolerance=0.003), rows(values), LAYOUT)
    assert v.word == "level differs"
    assert judge(level(0.8893, tolerance=0.003), rows(values), LAYOUT).word == "holds"


def test_unstable_when_some_seeds_collapsed_and_the_count_is_shown():
    # Study B, Adam lr 0.01: 11.35 / 91.26 / 92.05 % (seed 0 at chance)
    v = judge(level(0.96, tolerance=0.01, needs_full_schedule=False), rows([0.1135, 0.9126, 0.9205]), LAYOUT)
    assert v.word == "unstable" and v.label == "unstable 1/3" and v.a.at_chance == [0]
    assert "at chance 1/3" in claims.cell_text(v.a, True)
    # a diverged seed collapses too (it has no accuracy at all)
    d = judge(pair(">"), rows([0.95, 0.96, 0.0], [0.90, 0.91, 0.92], status={(0.01, 2): "diverged"}), LAYOUT)
    assert d.label == "unstable 1/3" and d.a.diverged == [2]


def test_a_cell_at_chance_on_every_seed_is_not_unstable():
    v = judge(level(0.1135, tolerance=0.02, needs_full_schedule=False), rows([0.1135] * 3), LAYOUT)
    assert v.word == "holds" and v.a.at_chance == [0, 1, 2]


def test_not_tested_below_three_seeds_and_for_a_level_on_a_cut_schedule():
    assert judge(pair(">"), rows([0.95, 0.96], [0.90, 0.91]), LAYOUT).word == "not tested"
    cut = judge(level(0.95), rows([0.95, 0.951, 0.949]), LAYOUT, cut="1 epoch instead of 20")
    assert cut.word == "not tested" and "1 epoch instead of 20" in cut.why
    assert judge(level(0.95), rows([0.95, 0.951, 0.949]), LAYOUT).word == "holds"
    # a pair claim the cut cannot reach (an optimum of the full schedule)
    optimum = judge(pair(">", needs_full_schedule=True), rows([0.95, 0.951, 0.949], [0.90, 0.905, 0.895]),
                    LAYOUT, cut="1 epoch")
    assert optimum.word == "not tested"
    assert judge(pair(">"), rows([0.95, 0.951, 0.949], [0.90, 0.905, 0.895]), LAYOUT, cut="1 epoch").word == "holds"


def test_every_word_is_one_of_the_documented_words():
    assert set(claims.WORDS) == {"holds", "within noise", "reversed", "differs", "level differs", "not tested",
                                 "unstable"}


# ----------------------------------------------------------------------------- cells


def test_one_factor_at_a_time_cells_hold_only_runs_at_the_base_elsewhere():
    layout = Layout(["optim.lr", "model.pooling"], [["optim.lr"], ["model.pooling"]], True,
                    {"optim.lr": 0.001, "model.pooling": "avg"})
    rs = [{"run_id": f"{i}", "seed": i % 3, "status": "completed", "test": {"accuracy": acc}, "settings": s}
          for i, (s, acc) in enumerate([({"optim.lr": 0.001, "model.pooling": "avg"}, 0.80)] * 3
                                       + [({"optim.lr": 0.01, "model.pooling": "avg"}, 0.85)] * 3
                                       + [({"optim.lr": 0.001, "model.pooling": "max"}, 0.83)] * 3)]
    for i, r in enumerate(rs):
        r["seed"] = i % 3
        r["test"]["accuracy"] += 0.001 * (i % 3)
    cell = claims.cell_stats({"model.pooling": "avg"}, rs, "test.accuracy", layout, 10)
    assert len(cell.values) == 3 and cell.summary.mean == pytest.approx(0.801)


def test_a_cell_that_pools_two_runs_of_one_seed_is_an_error():
    rs = rows([0.95, 0.96, 0.97]) + [{"run_id": "old", "settings": dict(A), "seed": 0, "status": "completed",
                                      "test": {"accuracy": 0.5}}]
    with pytest.raises(ConfigError, match="2 runs of seed 0"):
        judge(pair(">"), rs + rows([], [0.90, 0.91, 0.92]), LAYOUT)


# ----------------------------------------------------------------------------- the claims: block


TINY = {"data": {"name": "mnist", "train_limit": 1000, "val_size": 500}, "model": {"name": "lenet5"},
        "optim": {"name": "adam", "lr": 0.003}, "train": {"epochs": 1, "batch_size": 100, "progress": False}}
GOOD = {"claim": "lr 0.01 beats 0.001", "a": {"optim.lr": 0.01}, "relation": ">", "b": {"optim.lr": 0.001},
        "study": "97 % against 95 %", "where": "table 2"}


def spec(*claim_list, **extra):
    return {"base": TINY, "axes": {"optim.lr": [0.01, 0.001]}, "claims": list(claim_list), **extra}


def test_claims_load_with_the_sweep_and_go_into_its_plan():
    sweep = plan_sweep(spec(GOOD, {**GOOD, "relation": "≈", "b": None, "level": 0.97, "tolerance": 0.01}),
                       source="s.yaml")
    assert sweep.to_dict()["claims"][0]["claim"] == "lr 0.01 beats 0.001"
    assert [c.is_level for c in claims.from_plan(sweep.to_dict(), "s").claims] == [False, True]


@pytest.mark.parametrize("bad, field", [
    ({"relation": ">>"}, "relation"),
    ({"b": None}, "b / level"),
    ({"level": 0.9}, "b / level"),
    ({"relation": "≈"}, "margin"),
    ({"margin": 0.01}, "margin"),
    ({"where": ""}, "where"),
    ({"a": {"optim.momentum": 0.9}}, "optim.momentum is not a key this sweep varies"),
    ({"a": {"optim.lr": 0.1}}, "no planned run has optim.lr=0.1"),
    ({"colour": "red"}, "colour is not a claim field"),
])
def test_a_bad_claim_is_one_paragraph_naming_the_field(bad, field):
    with pytest.raises(ConfigError) as e:
        plan_sweep(spec({**GOOD, **bad}), source="s.yaml")
    msg = str(e.value)
    assert field in msg and "claim 1" in msg and "\n" not in msg


def test_cut_must_be_words():
    with pytest.raises(ConfigError, match="cut must say in words"):
        plan_sweep(spec(GOOD, cut=3), source="s.yaml")


def test_cnnlab_claims_prints_the_table_and_json_and_exits_2_on_bad_input(tmp_path, capsys):
    folder = tmp_path / "sw"
    folder.mkdir()
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in
                                                  rows([0.97, 0.971, 0.969], [0.95, 0.951, 0.949])))
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump(spec(GOOD)))
    assert main(["claims", str(folder), "--sweep", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "| lr 0.01 beats 0.001 (a > b) |" in out and "**holds**" in out
    assert main(["claims", str(folder), "--sweep", str(sweep), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["verdict"] == "holds" and data[0]["a"]["n"] == 3
    assert main(["claims", str(folder)]) == 2  # no plan.json and no --sweep
    assert "no plan.json" in capsys.readouterr().err
    sweep.write_text(yaml.safe_dump(spec({**GOOD, "relation": "?"})))
    assert main(["claims", str(folder), "--sweep", str(sweep)]) == 2
    assert "relation" in capsys.readouterr().err


# ----------------------------------------------------------------------------- study pages


PAGES = sorted((REPO / "docs" / "studies").glob("*.md"))


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_study_pages_regenerate_byte_identically(page):
    # make studies-docs on a clean checkout changes nothing: numbers and words come from the results files
    assert regenerate(page) == page.read_text(), f"run make studies-docs: {page.name}'s tables are stale"


def test_every_study_page_with_claims_has_its_tables_generated():
    for name in ("study_a.md", "study_b.md", "study_c.md", "study_e.md"):
        assert "<!-- cnnlab:claims " in (REPO / "docs" / "studies" / name).read_text()


def test_a_page_table_is_rebuilt_and_the_prose_around_it_kept(tmp_path):
    results = tmp_path / "res"
    results.mkdir()
    (results / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in
                                                   rows([0.97, 0.971, 0.969], [0.95, 0.951, 0.949])))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec(GOOD)))
    page = tmp_path / "p.md"
    page.write_text("intro\n<!-- cnnlab:claims sweep=s.yaml results=res -->\nstale table\n<!-- /cnnlab -->\noutro\n")
    new = regenerate(page)
    assert new.startswith("intro\n<!-- cnnlab:claims") and new.endswith("<!-- /cnnlab -->\noutro\n")
    assert "stale table" not in new and "**holds**" in new
    assert regenerate(page, new) == new


def test_the_sweep_report_shows_the_claims_verdicts(tmp_path):
    from cnnlab.reporting import html as report

    folder = tmp_path / "sw"
    folder.mkdir()
    (folder / "results.jsonl").write_text("".join(json.dumps({**r, "run_dir": f"runs/{r['run_id']}"}) + "\n" for r in
                                                  rows([0.97, 0.971, 0.969], [0.95, 0.951, 0.949])))
    plan = plan_sweep(spec(GOOD, {**GOOD, "claim": "lr 0.01 at 99 %", "b": None, "relation": "≈", "level": 0.99,
                                  "tolerance": 0.002}, cut="1 epoch instead of 20"), source="s.yaml").to_dict()
    (folder / "plan.json").write_text(json.dumps(plan))
    context = report.sweep_context(folder, build_run_reports=False, log=lambda m: None)
    assert [c["word"] for c in context["claims"]["rows"]] == ["holds", "not tested"]
    html = report.write_sweep_report(folder, log=lambda m: None).read_text()
    assert "The study&#39;s claims" in html or "The study's claims" in html
    assert "lr 0.01 at 99 %" in html and "1 epoch instead of 20" in html
