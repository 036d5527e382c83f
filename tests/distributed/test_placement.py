"""The reward model once per TP group (scores broadcast) and the reference swapped in
from host memory for its forwards: real gloo ranks, the real embedding scorer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from launch import run_torchrun

pytestmark = pytest.mark.distributed

HERE = Path(__file__).resolve().parent


def test_reward_model_on_the_tp_leader_and_the_reference_offloaded(tmp_path):
    run_torchrun(HERE / "placement_worker.py", 2, [str(tmp_path)])
    leader, peer = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert leader["built_scorer"] and not peer["built_scorer"]  # one copy per TP group
    assert peer["scores"] == leader["scores"]  # the peer gets the leader's scores
    assert leader["scores"][0] != leader["scores"][1]  # real scores, not a fill value
    for rank in (leader, peer):
        assert rank["offloaded"]
        assert rank["numel_between"] == 0 < rank["numel_inside"]  # nothing left between uses
        assert rank["same_logprobs"] and rank["same_entropy"]  # bit for bit
