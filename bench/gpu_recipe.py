"""bench/gpu_check.py's recipe part: `maestro train recipes/gpu_check.yaml` on one GPU, the
whole step as a user runs it (Qwen3-shaped model, colocated vLLM engine asleep while the
trainer runs, refit by CUDA IPC, the refit verifier), summarised from its metrics.jsonl.

Dry run (CPU): the same recipe with tiny shapes, fp32 and no sleep mode (vLLM on CPU
has none), 2 steps.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "gpu_check.yaml"
DRY_OVERRIDES = ["precision.dtype=fp32", "rollout.enable_sleep_mode=false",
                 "model.num_layers=2", "model.hidden_size=128", "model.ffn_hidden_size=256",
                 "model.num_attention_heads=4", "model.num_query_groups=2",
                 "model.kv_channels=32", "warmup.num_steps=4", "run.num_steps=2"]
"""CPU: vLLM's CPU attention needs head sizes % 32 == 0; no sleep mode there."""
PRECISION_OVERRIDES = {"fp32": [], "bf16": ["precision.dtype=bf16"],
                       "fp8": ["precision.dtype=bf16", "precision.fp8=hybrid",
                               "precision.transformer_impl=transformer_engine"]}


def summarize(metrics: list[dict]) -> dict:
    """Per-step medians over the steps after the first (start-up and first kernels),
    the worst refit-verifier gap, and the refit's bytes and rate."""
    steady = metrics[1:] or metrics

    def median(key: str) -> float | None:
        values = [m[key] for m in steady if key in m]
        return statistics.median(values) if values else None

    out = {"steps": len(metrics), "step_s": median("timing/step"),
           "rollout_s": median("timing/rollout"), "forward_s": median("timing/forward"),
           "train_s": median("timing/train"), "refit_s": median("timing/refit"),
           "engine_sleep_s": median("timing/engine_sleep"),
           "engine_wake_s": median("timing/engine_wake"),
           "refit_bytes": median("refit/bytes"),
           "logprob_gap_max": max(m.get("rollout/logprob_gap_max", 0.0) for m in metrics),
           "reward_scalar_last": metrics[-1].get("reward/scalar")}
    if out["refit_s"] and out["refit_bytes"]:
        out["refit_gb_per_s"] = out["refit_bytes"] / out["refit_s"] / 1e9
    return out


def part_recipe(dry: bool, precision: str, out_dir: Path) -> dict:
    """Train the recipe into `out_dir` (a fresh run) and summarise its metrics."""
    import torch

    from maestro_megatron.cli import main as maestro

    args = ["train", str(RECIPE), f"run.output_dir={out_dir}",
            *PRECISION_OVERRIDES[precision], *(DRY_OVERRIDES if dry else [])]
    rc = maestro(args)
    if rc:
        return {"error": f"maestro train exited {rc}", "command": "maestro " + " ".join(args)}
    metrics = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    return {"precision": precision, "command": "maestro " + " ".join(args),
            "peak_trainer_gpu_bytes": peak, **summarize(metrics)}
