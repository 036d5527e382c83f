"""Rollouts from several engines to the ranks they serve, over the placement's unit
groups: real gloo ranks (4), labelled batches instead of a vLLM engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from launch import run_torchrun

pytestmark = pytest.mark.distributed

HERE = Path(__file__).resolve().parent


def _responses(prompts):
    return [f"p{i}/{j}" for i in prompts for j in range(2)]


def test_engines_shares_reach_their_replicas_ranks_in_prompt_order(tmp_path):
    run_torchrun(HERE / "engine_share_worker.py", 4, [str(tmp_path)])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(4)]
    # TP 2 x PP 2, DP 1: engines on ranks 0 (prompts 0, 1) and 1 (2, 3); all get 0-3
    for r, got in enumerate(ranks):
        one = got["tp2_pp2_two_engines"]
        assert one["host"] == (r in (0, 1))
        assert one["prompts"] == ["p0", "p1", "p2", "p3"]
        assert one["responses"] == _responses(range(4))
    # PP 2 x DP 2: replica 0 = ranks 0, 2 (engines on both: prompts 0-1, 2-3), replica 1 =
    # ranks 1, 3 (prompts 4-5, 6-7); each receives its replica's four prompts only
    for r, got in enumerate(ranks):
        two = got["pp2_dp2_two_engines_each"]
        want = range(4 * (r % 2), 4 * (r % 2) + 4)
        assert two["host"] and two["prompts"] == [f"p{i}" for i in want]
        assert two["responses"] == _responses(want)
        assert two["response_ids"] == [[i, j] for i in want for j in range(2)]
    # leader: rank 0's engine, the whole batch; each TP 2 replica keeps its two prompts
    for r, got in enumerate(ranks):
        lead = got["tp2_dp2_leader"]
        want = range(2 * (r // 2), 2 * (r // 2) + 2)
        assert lead["host"] == (r == 0) and lead["prompts"] == [f"p{i}" for i in want]
