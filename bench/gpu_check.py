"""One-shot check of a machine with one GPU, under 8 minutes, one results file.

    bash bench/gpu_check.sh [--out bench/gpu_results.json] [--layers 4 --seq 4096]
    bash bench/gpu_check.sh --dry-run          # CPU, tiny shapes, fp32: a test runs this

Parts, each in its own process with its own time limit inside an overall deadline:
  1. matmul: the card's bf16 dense matmul peak as measured here (8192^3, 50 times);
  2. train: megatron-core train steps (the trainer's optimizer step, distributed Adam)
     of a model with Llama-3-8B layer shapes and a few layers, bf16, then FP8 (hybrid)
     where Transformer Engine is installed and the card supports it: tokens/s, model
     TFLOP/s and that as a fraction of part 1's peak;
  3. tests/gpu with pytest (dry run: collected only);
  4. vLLM sleep / wake and refit on the GPU when vLLM is installed (bench/gpu_vllm.py);
  5. `maestro train recipes/gpu_check.yaml`, bf16 then FP8: the whole step as a user
     runs it, colocated engine asleep during training, CUDA IPC refit (bench/gpu_recipe.py).
A part that fails or runs out of time is recorded with its error; the rest still run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_part(args: list[str], timeout: float) -> dict:
    """`python -m bench.gpu_parts ARGS` -> its JSON (or the error), with its seconds."""
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "bench.gpu_parts", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - start
    if proc.returncode:
        return {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-2000:],
                "wall_s": wall}
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "wall_s": wall}


def run_gpu_tests(dry: bool, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu"]
    if dry:
        cmd.append("--collect-only")
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                              timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    return {"returncode": proc.returncode, "summary": lines[-1] if lines else "",
            "collected_only": dry}


def device_info(dry: bool) -> dict:
    import torch

    from bench.common import machine

    info = machine()
    if not dry and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
    info["torch"] = torch.__version__
    return info


def _figure(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, fp32")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "gpu_results.json")
    p.add_argument("--budget-s", type=float, default=470.0, help="overall deadline")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seq", type=int, default=4096)
    args = p.parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device (use --dry-run on CPU)", file=sys.stderr)
        return 2
    deadline = time.perf_counter() + args.budget_s

    def left(reserve: float = 0.0) -> float:
        """Seconds to the deadline, keeping `reserve` for the parts still to come."""
        return deadline - time.perf_counter() - reserve

    dry = ["--dry-run"] if args.dry_run else []
    shape = ["--layers", str(args.layers), "--seq", str(args.seq)]
    from bench.gpu_parts import fp8_support

    results = {"dry_run": args.dry_run, "machine": device_info(args.dry_run)}
    results["matmul"] = run_part(["matmul", *dry], min(60, left(300)))
    precisions = ["fp32"] if args.dry_run else ["bf16"]
    fp8_ok, fp8_reason = fp8_support()
    if not args.dry_run and fp8_ok:
        precisions.append("fp8")
    results["fp8"] = {"supported": fp8_ok, "reason": fp8_reason}
    peak = results["matmul"].get("tflops")
    for prec in precisions:
        part = run_part(["train", *dry, "--precision", prec, *shape], min(150, left(200)))
        if peak and "tflops" in part:
            part["fraction_of_matmul_peak"] = part["tflops"] / peak
        results[f"train_{prec}"] = part
    runs = Path(tempfile.mkdtemp(prefix="maestro-gpu-check-"))
    for prec in precisions:
        results[f"recipe_{prec}"] = run_part(
            ["recipe", *dry, "--precision", prec, "--out-dir", str(runs / prec)],
            min(180, left(150)))
    results["gpu_tests"] = run_gpu_tests(args.dry_run, min(150, left(100)))
    results["vllm"] = run_part(["vllm", *dry], min(180, left(5)))
    results["recipe_runs"] = str(runs)
    results["total_s"] = args.budget_s - left()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    keys = ("matmul", *(f"train_{p}" for p in precisions),
            *(f"recipe_{p}" for p in precisions), "gpu_tests", "vllm")
    print("| part | figures |\n|---|---|")
    for key in keys:
        part = results[key]
        brief = {k: part[k] for k in ("tflops", "fraction_of_matmul_peak", "tokens_per_s",
                                      "step_s", "rollout_s", "engine_sleep_s",
                                      "engine_wake_s", "refit_s", "logprob_gap_max",
                                      "summary", "skipped", "error", "sleep_freed_bytes",
                                      "refit_gb_per_s") if part.get(k) is not None}
        print(f"| {key} | " + ", ".join(f"{k} {_figure(v)}" for k, v in brief.items()) + " |")
    print(f"results: {args.out} ({results['total_s']:.0f} s)")
    failed = [k for k in results if isinstance(results[k], dict) and "error" in results[k]]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
