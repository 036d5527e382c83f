"""tools/megatron_step.py, the README's torchrun example, runs a recipe at TP=2 x DP=2."""

from __future__ import annotations

import json
import math

import pytest
from launch import REPO_ROOT, run_torchrun

pytestmark = pytest.mark.distributed


def test_megatron_step_tool_tp2_dp2():
    out = run_torchrun(REPO_ROOT / "tools" / "megatron_step.py", 4,
                       [str(REPO_ROOT / "recipes" / "tiny_cpu.yaml"),
                        "parallel.tensor_parallel=2", "run.num_steps=2",
                        "conductor.update_every=1", "model.seq_length=32",
                        "rollout.max_new_tokens=16",
                        "grpo.num_prompts_per_step=4", "grpo.group_size=4",
                        "grpo.micro_batch_size=4"])
    lines = [json.loads(line) for line in out.splitlines() if line.startswith('{"step"')]
    assert [line["step"] for line in lines] == [1, 2]
    for line in lines:
        for key in ("train/loss", "train/grad_norm", "train/entropy", "conductor/loss"):
            assert math.isfinite(line[key]), key
        assert line["train/grad_norm"] > 0
        assert line["conductor/num_triples"] == 8.0  # this DP rank's N*G / dp = 16 / 2
