"""cnnlab.training.runtime's choices of precision and memory format: the rules called with given machines'
facts, this machine's facts read back, and a tiny real run showing the choice at its start and in
summary.json."""
import json
import platform
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnlab.config import rules as checks
from cnnlab.inference import predict
from cnnlab.training import runtime
from cnnlab.training import loop as train
from cnnlab.config.schema import Config
from cnnlab.config.load import load_config
from cnnlab.registry import MODELS
from cnnlab.training.runtime import DeviceFacts, resolve_channels_last, resolve_precision

AVX2 = DeviceFacts("cpu", cpu_flags=frozenset({"sse4_2", "avx", "avx2", "fma"}), cpu_capability="AVX2")
AVX512 = DeviceFacts("cpu", cpu_flags=frozenset({"avx2", "avx512f", "avx512bw"}), cpu_capability="AVX512")
SAPPHIRE = DeviceFacts("cpu", cpu_flags=frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
                       cpu_capability="AVX512")
ZEN4 = DeviceFacts("cpu", cpu_flags=frozenset({"avx512f", "avx512_bf16"}), cpu_capability="AVX512")
GRAVITON3 = DeviceFacts("cpu", cpu_flags=frozenset({"fp", "asimd", "sve", "bf16"}), cpu_capability="SVE256")
A100 = DeviceFacts("cuda", cuda_capability=(8, 0), cuda_bf16=True)
T4 = DeviceFacts("cuda", cuda_capability=(7, 5), cuda_bf16=False)
V100 = DeviceFacts("cuda", cuda_capability=(7, 0), cuda_bf16=False)
P100 = DeviceFacts("cuda", cuda_capability=(6, 0), cuda_bf16=False)
# torch may report bf16 support on a pre-Ampere GPU (emulated); the rule wants compute capability 8.0 too
TURING_EMULATED = DeviceFacts("cuda", cuda_capability=(7, 5), cuda_bf16=True)


@pytest.mark.parametrize("facts,used", [
    (AVX2, "fp32"), (AVX512, "fp32"), (SAPPHIRE, "bf16"), (ZEN4, "bf16"), (GRAVITON3, "bf16"),
    (DeviceFacts("cpu", cpu_capability="AVX512_BF16"), "bf16"),  # no /proc/cpuinfo: torch's capability
    (A100, "bf16"), (T4, "fp16"), (V100, "fp16"), (P100, "fp32"), (TURING_EMULATED, "fp16"),
    (DeviceFacts("mps"), "fp32"),
], ids=["avx2", "avx512-no-bf16", "amx", "zen4", "arm-bf16", "capability-only", "a100", "t4", "v100", "p100",
        "turing-emulated-bf16", "mps"])
def test_auto_precision_follows_the_hardware(facts, used):
    got, why = resolve_precision("auto", facts)
    assert got == used
    assert why.startswith("auto:") and len(why) > 20


def test_the_reason_names_what_was_seen():
    assert "amx_bf16" in resolve_precision("auto", DeviceFacts("cpu", cpu_flags=frozenset({"amx_bf16"})))[1]
    assert "AVX2" in resolve_precision("auto", AVX2)[1]
    assert "7.5" in resolve_precision("auto", T4)[1] and "8.0" in resolve_precision("auto", A100)[1]


def test_auto_keeps_fp32_on_a_bf16_cpu_for_the_families_measured_slower_in_bf16():
    for family in runtime.CPU_BF16_SLOWER:
        used, why = resolve_precision("auto", SAPPHIRE, family)
        assert used == "fp32" and family in why and "bench_precision" in why
        assert resolve_precision("auto", A100, family)[0] == "bf16"  # the table is a CPU measurement
        assert resolve_precision("bf16", SAPPHIRE, family)[0] == "bf16"  # an explicit choice stays
    assert resolve_precision("auto", SAPPHIRE, "lenet")[0] == "bf16"
    assert resolve_precision("auto", SAPPHIRE, None)[0] == "bf16"  # a model from outside the registry


def test_plan_compute_reads_the_family_from_the_registry(monkeypatch):
    monkeypatch.setattr(runtime, "device_facts", lambda device: SAPPHIRE)
    cfg = Config()
    linear, lenet = MODELS.get("linear")(num_classes=10, in_channels=1), MODELS.get("lenet5")(num_classes=10)
    assert runtime.plan_compute(cfg.train, linear, torch.device("cpu")).precision == "fp32"
    assert runtime.plan_compute(cfg.train, lenet, torch.device("cpu")).precision == "bf16"


@pytest.mark.parametrize("asked", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("facts", [AVX2, SAPPHIRE, A100, P100], ids=["avx2", "amx", "a100", "p100"])
def test_an_explicit_precision_is_kept(asked, facts):
    assert resolve_precision(asked, facts) == (asked, "asked for in train.precision")


def test_channels_last_rule():
    assert resolve_channels_last(True, False, "fp32", "cuda")[0] is True  # explicit wins, even without convs
    assert resolve_channels_last(False, True, "bf16", "cpu")[0] is False
    assert resolve_channels_last(None, False, "bf16", "cpu") == (False, "auto: the model has no convolutions")
    assert resolve_channels_last(None, True, "fp32", "cpu")[0] is True  # measured: BENCHMARKS.md
    assert resolve_channels_last(None, True, "bf16", "cpu")[0] is True
    assert resolve_channels_last(None, True, "bf16", "cuda")[0] is True
    assert resolve_channels_last(None, True, "fp16", "cuda")[0] is True
    assert resolve_channels_last(None, True, "fp32", "cuda")[0] is False
    assert resolve_channels_last(None, True, "fp32", "mps")[0] is False


def cpuinfo_has_native_bf16() -> bool:
    """Read independently of runtime.cpu_flags: any flag word in /proc/cpuinfo naming native bf16."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", text)) or "BF16" in torch.backends.cpu.get_cpu_capability()


def test_this_machines_facts():
    facts = runtime.device_facts(torch.device("cpu"))
    assert facts.kind == "cpu" and facts.cpu_capability == torch.backends.cpu.get_cpu_capability()
    if Path("/proc/cpuinfo").exists() and platform.machine() == "x86_64":
        assert "sse2" in facts.cpu_flags  # every x86-64 CPU has it: the flags line was read
    expected = "bf16" if cpuinfo_has_native_bf16() else "fp32"
    assert resolve_precision("auto", facts)[0] == expected


def test_auto_is_the_default_and_plan_compute_uses_the_model():
    cfg = Config()
    assert cfg.train.precision == "auto"
    conv, mlp = nn.Sequential(nn.Conv2d(1, 4, 3)), nn.Sequential(nn.Linear(4, 2))
    plan = runtime.plan_compute(cfg.train, conv, torch.device("cpu"))
    assert plan.asked == "auto" and plan.precision in ("fp32", "bf16") and plan.channels_last is True
    assert runtime.plan_compute(cfg.train, mlp, torch.device("cpu")).channels_last is False
    assert plan.record()["precision"] == {"asked": "auto", "used": plan.precision, "reason": plan.reason}


def test_emulated_bf16_on_this_cpu_is_warned_about_and_auto_is_not():
    warned = checks.config_warnings(load_config(None, {"train.precision": "bf16"}), "logits", torch.device("cpu"))
    assert any("emulated and slower than fp32" in w for w in warned) == (not cpuinfo_has_native_bf16())
    assert checks.config_warnings(load_config(None, {}), "logits", torch.device("cpu")) == []


def test_a_tiny_run_shows_the_choice_at_start_and_in_its_summary(tmp_path, tiny_config, data_root):
    lines = []
    summary = train.run(tiny_config(**{"train.epochs": 0.3, "train.precision": "auto"}), tmp_path / "r",
                        log=lines.append)
    expected = "bf16" if cpuinfo_has_native_bf16() else "fp32"
    saved = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert saved["precision"]["asked"] == "auto" and saved["precision"]["used"] == expected
    assert saved["precision"]["reason"].startswith("auto:")
    assert saved["channels_last"] == {"used": True, "reason": summary["channels_last"]["reason"]}  # lenet5 on CPU
    start = "\n".join(lines[:5])
    assert f"compute: {expected} (auto:" in start and "channels_last on" in start
    assert saved["config"]["train"]["precision"] == "auto"  # the config keeps what was asked: resolved per machine
    again = predict.evaluate_run(tmp_path / "r", ["test"])  # cnnlab eval resolves auto the same way
    assert again["test"]["accuracy"] == pytest.approx(saved["test"]["accuracy"], abs=2e-3)


def test_an_explicit_precision_is_recorded_as_asked(tmp_path, tiny_config, data_root):
    summary = train.run(tiny_config(**{"train.epochs": 0.2, "train.precision": "fp32",
                                       "train.channels_last": False}), tmp_path / "e", log=lambda *_: None)
    assert summary["precision"] == {"asked": "fp32", "used": "fp32", "reason": "asked for in train.precision"}
    assert summary["channels_last"] == {"used": False, "reason": "asked for in train.channels_last"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_on_this_gpu(tmp_path, tiny_config, data_root):
    facts = runtime.device_facts(torch.device("cuda"))
    major = torch.cuda.get_device_capability()[0]
    expected = "bf16" if major >= 8 and torch.cuda.is_bf16_supported() else "fp16" if major >= 7 else "fp32"
    summary = train.run(tiny_config(**{"train.epochs": 0.2, "train.device": "cuda"}), tmp_path / "g",
                        log=lambda *_: None)
    assert resolve_precision("auto", facts)[0] == summary["precision"]["used"] == expected
    assert summary["status"] == "completed"


def test_cpu_model_names_this_machine_s_cpu_as_cpuinfo_does():
    from pathlib import Path

    from cnnlab.training.runtime import cpu_model

    name = cpu_model()
    info = Path("/proc/cpuinfo")
    if info.exists() and "model name" in info.read_text():
        assert name and name in info.read_text()
    else:
        assert name  # elsewhere: platform's answer, or "unknown CPU"
