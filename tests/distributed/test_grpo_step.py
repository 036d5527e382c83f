"""A whole GRPO + Conductor step gives the same numbers under every layout (CPU, gloo).

fp32 throughout; the baseline is one process at TP=1/PP=1. Tolerance 1e-5 (observed
differences are ~1e-6): rollout-side advantages, the loss / clip fraction / KL / grad
norm of two policy updates, the logprobs after them, and the updated Conductor.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from launch import run_torchrun

pytestmark = pytest.mark.distributed

HERE = Path(__file__).resolve().parent
ATOL = 1e-5


@pytest.fixture(scope="module")
def grpo_baseline(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo")
    run_torchrun(HERE / "grpo_worker.py", 1,
                 ["--ckpt", str(root / "ckpt"), "--out", str(root / "base"), "--save"])
    return root, torch.load(root / "base" / "1_1_tp0_dp0.pt")


def _load_layout(out: Path, spec: str) -> list[tuple[str, dict]]:
    files = sorted(out.glob(f"{spec.replace(',', '_')}_tp*_dp*.pt"))
    assert files, f"layout {spec} wrote nothing"
    return [(f.stem, torch.load(f)) for f in files]


def test_baseline_step_is_not_trivial(grpo_baseline):
    _, ref = grpo_baseline
    first, second = ref["metrics"]
    assert first["train/clip_frac"] == 0.0 and first["train/kl"] == 0.0  # ratio 1, pi = ref
    assert second["train/clip_frac"] > 0.1 and second["train/kl"] > 1e-3
    assert len(set(ref["actions"].tolist())) >= 3  # per-response sampling, several actions
    assert ref["conductor"].abs().max() > 0


@pytest.mark.parametrize(("nproc", "layouts"), [(2, ["2,1", "1,2", "1,1"]), (4, ["2,2", "2,1"])],
                         ids=["world2-tp2-pp2-dp2", "world4-tp2pp2-tp2dp2"])
def test_grpo_step_matches_single_process(grpo_baseline, nproc, layouts, tmp_path):
    root, ref = grpo_baseline
    run_torchrun(HERE / "grpo_worker.py", nproc,
                 ["--ckpt", str(root / "ckpt"), "--out", str(tmp_path), "--layouts", *layouts])
    for spec in layouts:
        ranks = _load_layout(tmp_path, spec)
        # Every TP peer drew the same actions and holds the same Conductor.
        by_dp: dict[str, list[dict]] = {}
        for name, data in ranks:
            by_dp.setdefault(name.split("_dp")[1], []).append(data)
            assert data["drift"] == 0.0, (spec, name)
            assert torch.allclose(data["conductor"], ref["conductor"], atol=ATOL), (spec, name)
            for step, (got, want) in enumerate(zip(data["metrics"], ref["metrics"])):
                for key, value in want.items():
                    assert got[key] == pytest.approx(value, abs=ATOL, rel=ATOL), (spec, step, key)
        for peers in by_dp.values():
            assert all(torch.equal(p["actions"], peers[0]["actions"]) for p in peers)
        shares = [by_dp[k][0] for k in sorted(by_dp, key=int)]
        actions = torch.cat([s["actions"] for s in shares])
        assert torch.equal(actions, ref["actions"]), spec
        for key in ("advantages", "logprobs_after", "h"):
            got = torch.cat([s[key] for s in shares])
            assert torch.allclose(got, ref[key], atol=ATOL, rtol=ATOL), (spec, key)


def test_batch_normalization_and_minibatches_do_not_depend_on_dp(tmp_path):
    """`rewards.normalization: batch` z-scores with the GLOBAL moments (the landed code
    used each DP rank's own rows), and a PPO mini-batch holds the same groups at DP=2
    as at DP=1."""
    out = tmp_path / "stats.pt"
    run_torchrun(HERE / "batch_stats_worker.py", 2, [str(out)])
    got = torch.load(out)
    split = torch.cat([p["global"] for p in got["parts"]])
    assert torch.allclose(split, got["whole"], atol=1e-6)
    local_only = torch.cat([p["local_only"] for p in got["parts"]])
    assert not torch.allclose(local_only, got["whole"], atol=1e-3)  # the landed behaviour
    for m, whole in enumerate(got["whole_minibatches"]):
        union = sorted({p for part in got["parts"] for p in part["minibatches"][m]})
        assert union == sorted(set(whole)), m  # mini-batch m: prompts p with p % 2 == m
