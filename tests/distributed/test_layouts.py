"""Same weights + same data => same numbers under every Megatron layout (CPU, gloo).

The baseline is a single-process TP=1/PP=1 run; its weights are saved with megatron
dist_checkpointing and loaded (resharded) by each layout. fp32 throughout, so the
layouts agree to float round-off: atol = rtol = 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from launch import run_torchrun

pytestmark = pytest.mark.distributed

HERE = Path(__file__).resolve().parent
TOL = dict(atol=1e-5, rtol=1e-5)
PER_TOKEN = ("logprobs", "entropy", "h", "train_logprobs", "logprobs_after")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    run_torchrun(HERE / "layout_worker.py", 1,
                 ["--ckpt", str(root / "ckpt"), "--out", str(root / "baseline"), "--save"])
    return root, torch.load(root / "baseline" / "1_1_dp0.pt")


def _merged(out: Path, spec: str) -> dict:
    """One layout's per-DP-rank files -> the full batch, rows in data-parallel order."""
    name = spec.replace(",", "_")
    first = torch.load(out / f"{name}_dp0.pt")
    parts = [torch.load(out / f"{name}_dp{i}.pt") for i in range(first["dp_size"])]
    merged = {key: torch.cat([p[key] for p in parts]) for key in PER_TOKEN}
    merged["loss"] = sum(p["loss"] for p in parts)
    merged["grad_norm"] = first["grad_norm"]
    return merged


@pytest.mark.parametrize(
    ("nproc", "layouts"),
    [
        # world 2: TP=2; PP=2; PP=2 x VPP=2; DP=2
        (2, ["2,1", "1,2", "1,2,2", "1,1"]),
        # world 4: TP=2 x PP=2; TP=2 x DP=2; PP=2 x VPP=2 x DP=2; DP=4
        (4, ["2,2", "2,1", "1,2,2", "1,1"]),
    ],
    ids=["world2", "world4"],
)
def test_layouts_match_single_process(baseline, nproc, layouts, tmp_path):
    root, ref = baseline
    run_torchrun(HERE / "layout_worker.py", nproc,
                 ["--ckpt", str(root / "ckpt"), "--out", str(tmp_path), "--layouts", *layouts])
    # The optimizer step must have moved the weights, or logprobs_after proves nothing.
    assert (ref["logprobs_after"] - ref["logprobs"]).abs().max() > 1e-2
    for spec in layouts:
        got = _merged(tmp_path, spec)
        for key in PER_TOKEN:
            torch.testing.assert_close(got[key], ref[key], **TOL, msg=lambda m, k=key, s=spec:
                                       f"layout tp,pp[,vpp]={s} world={nproc}: {k}: {m}")
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5), spec
        assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5), spec


def test_vocab_parallel_matches_full_vocabulary():
    output = run_torchrun(HERE / "vocab_worker.py", 2, [])
    assert "VOCAB_PARALLEL_OK" in output
