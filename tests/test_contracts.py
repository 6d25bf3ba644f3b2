"""docs/CONTRACTS.md's key lists are what a real run writes: a newcomer may rely on them."""
import json
import re
from pathlib import Path

from cnnlab import lifecycle, runs

CONTRACTS = Path(__file__).resolve().parents[1] / "docs" / "CONTRACTS.md"


def listed(what: str) -> set[str]:
    """The backticked names of CONTRACTS.md's line ``- <what> keys: `a`, `b`, ...``."""
    (line,) = [ln for ln in CONTRACTS.read_text().splitlines() if ln.startswith(f"- {what} keys:")]
    return set(re.findall(r"`([^`]+)`", line))


def test_the_documented_keys_are_a_real_runs(tmp_path, tiny_config, data_root):
    out = tmp_path / "r"
    lifecycle.train_and_finish(tiny_config(**{"train.epochs": 0.5}), out, log=lambda *_: None, html=False)
    summary = json.loads((out / "summary.json").read_text())
    checkpoint = runs.load_checkpoint(out / "last.pt")
    assert set(checkpoint) == listed("checkpoint")
    assert set(summary) == listed("summary.json")
    assert set(checkpoint["preprocess"]) == set(summary["preprocess"]) == listed("preprocess")
