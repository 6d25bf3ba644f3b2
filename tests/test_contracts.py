"""docs/CONTRACTS.md's key lists are what a real run writes: a newcomer may rely on them."""
import json
import re
from pathlib import Path

from cnnlab import lifecycle, runs

CONTRACTS = Path(__file__).resolve().parents[1] / "docs" / "CONTRACTS.md"


def listed(what: str) -> set[str]:
    """The backticked names of CONTRACTS.md's line ``- <what> keys (a note): `a`, `b`, ...`` (the note optional)."""
    lines = [m.group(1) for ln in CONTRACTS.read_text().splitlines()
             if (m := re.match(rf"- {re.escape(what)} keys(?: \([^)]*\))?: (.*)$", ln))]
    assert len(lines) == 1, f"CONTRACTS.md should have one line '- {what} keys: ...', has {len(lines)}"
    return set(re.findall(r"`([^`]+)`", lines[0]))


def test_the_documented_keys_are_a_real_runs(tmp_path, tiny_config, data_root):
    out = tmp_path / "r"
    lifecycle.train_and_finish(tiny_config(**{"train.epochs": 0.5}), out, log=lambda *_: None, html=False)
    summary = json.loads((out / "summary.json").read_text())
    checkpoint = runs.load_checkpoint(out / "last.pt")
    assert set(checkpoint) == listed("checkpoint")
    assert set(summary) == listed("summary.json")
    assert set(checkpoint["preprocess"]) == set(summary["preprocess"]) == listed("preprocess")

    # one level down: what the prose of "Run folder (public contract)" promises inside them
    assert set(checkpoint["rng"]) == listed("checkpoint rng")
    for key in ("best", "time", "model", "env"):
        assert set(summary[key]) == listed(f"summary.json {key}"), key
    for split in ("train", "val", "test"):
        assert set(summary[split]) == listed("summary.json score"), split
        assert set(summary[split]["per_class"]) == listed("summary.json per_class"), split
    rows = runs.read_jsonl(out / "metrics.jsonl")
    assert rows and all(set(row) == listed("metrics.jsonl") for row in rows), rows
