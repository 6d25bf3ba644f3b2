"""runtime.decide_tf32 / tf32_flags (``train.tf32``): TF32 on for fp32 runs on GPUs that have it (compute
capability >= 8.0), forced either way by the setting, the flags put back after the run."""
import pytest
import torch

from cnnlab.config.schema import ConfigError
from cnnlab.config.load import load_config
from cnnlab.training.runtime import decide_tf32, tf32_flags


@pytest.mark.parametrize("setting, precision, device, capability, on", [
    ("auto", "fp32", "cuda", (8, 0), True),    # A100: the first with TF32
    ("auto", "fp32", "cuda", (9, 0), True),    # H100
    ("auto", "fp32", "cuda", (8, 6), True),    # RTX 30xx laptop cards
    ("auto", "fp32", "cuda", (7, 5), False),   # T4 / RTX 20xx: no TF32
    ("auto", "fp32", "cuda", (7, 0), False),   # V100
    ("auto", "bf16", "cuda", (8, 0), False),   # mixed precision: matmuls are already half precision
    ("auto", "fp32", "cpu", None, False),
    (False, "fp32", "cuda", (9, 0), False),    # strict fp32 asked for
    (True, "fp32", "cuda", (7, 5), True),      # forced (torch then runs fp32 where the GPU has no TF32)
    (True, "fp32", "cpu", None, False),        # a CPU has no TF32 flag to set
])
def test_tf32_is_decided_from_the_setting_precision_and_the_gpu(setting, precision, device, capability, on):
    assert decide_tf32(setting, precision, device, capability) is on


def test_the_flags_are_put_back_after_the_run():
    cfg = load_config(None, {"train.device": "cpu", "train.tf32": True})
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, False
        with tf32_flags(cfg.train) as decision:
            assert decision == {"setting": True, "on": False, "compute_capability": None}
            assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, False)
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, False)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_a_bad_tf32_value_names_the_field():
    with pytest.raises(ConfigError, match="train.tf32"):
        load_config(None, {"train.tf32": "sometimes"})
    with pytest.raises(ConfigError, match="train.drop_last"):
        load_config(None, {"train.drop_last": "maybe"})
