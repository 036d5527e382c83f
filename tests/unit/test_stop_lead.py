"""The stop lead time (plan/stop_lead.py) by hand, and `maestro plan --stop-lead`."""

from __future__ import annotations

import math

import pytest

from maestro_megatron.plan.memory import checkpoint_bytes
from maestro_megatron.plan.stop_lead import stop_lead


def test_checkpoint_bytes_per_parameter():
    assert checkpoint_bytes(10, 2) == 10 * (2 + 4 + 4 + 4)  # bf16 + fp32 main, m, v
    assert checkpoint_bytes(10, 4) == 10 * (4 + 4 + 4)      # fp32 params are the main copy


def test_lead_adds_the_step_the_write_the_hash_and_the_margin():
    # 8.19e9 parameters in bf16 -> 114.7 GB; 1 node at 1 GB/s: 114.7 s; 8 ranks hashing at
    # 0.5 GB/s: 28.7 s; a 600 s step and the 60 s margin.
    lead = stop_lead(8_190_000_000, 2, nodes=1, ranks=8, step_s=600)
    assert lead.checkpoint_bytes == 114_660_000_000
    assert lead.write_s == pytest.approx(114.66)
    assert lead.hash_s == pytest.approx(114.66 / 4)
    assert lead.seconds == math.ceil(600 + 114.66 + 28.665 + 60)
    four = stop_lead(8_190_000_000, 2, nodes=4, ranks=32, step_s=600)
    assert four.write_s == pytest.approx(lead.write_s / 4)
    with pytest.raises(ValueError):
        stop_lead(1, 2, nodes=0, ranks=1, step_s=1)


def test_plan_prints_the_lead_and_only_the_lead(capsys):
    from maestro_megatron.cli import main

    assert main(["plan", "recipes/qwen3_8b_maestro.yaml", "--step-seconds", "300"]) == 0
    text = capsys.readouterr().out
    line = [x for x in text.splitlines() if x.startswith("stop lead time:")]
    assert len(line) == 1 and "one step 300 s + checkpoint" in line[0], text[-500:]
    seconds = int(line[0].rsplit("@", 1)[1])
    assert main(["plan", "recipes/qwen3_8b_maestro.yaml", "--step-seconds", "300",
                 "--stop-lead"]) == 0
    assert capsys.readouterr().out.strip() == str(seconds)
    assert main(["plan", "recipes/qwen3_8b_maestro.yaml", "--step-seconds", "-1"]) == 2
