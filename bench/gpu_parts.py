"""The measurements of bench/gpu_check.py, one function per part; each runs in its own
process (`python -m bench.gpu_parts PART [--dry-run]`, one JSON object on the last
line of stdout), so a failing or hanging part cannot take the others down and each
starts with an empty GPU.

Dry run (no CUDA needed): tiny shapes, fp32, on CPU; the same code path otherwise.
"""

from __future__ import annotations

import json
import sys
import time

LLAMA3_8B = dict(hidden_size=4096, ffn_hidden_size=14336, num_attention_heads=32,
                 num_query_groups=8, vocab_size=128256)
"""Llama-3-8B's layer shapes (head dim 128, GQA 32/8, SwiGLU 14336, vocabulary 128256)."""
TINY = dict(hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
            vocab_size=256)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def part_matmul(dry: bool) -> dict:
    """The card's dense matmul peak as this script sees it: n x n @ n x n in bf16."""
    import torch

    device, dtype, n, iters = ("cpu", torch.float32, 256, 5) if dry else \
        ("cuda", torch.bfloat16, 8192, 50)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    _sync(device)
    seconds = (time.perf_counter() - start) / iters
    return {"n": n, "dtype": str(dtype), "seconds": seconds, "tflops": 2 * n**3 / seconds / 1e12}


def train_flops_per_token(shape: dict, layers: int, seq: int) -> float:
    """Matmul FLOPs of one training token (forward + backward = 3 x forward, no
    recompute; attention scores counted full, as Megatron's own formula does)."""
    h, f, v = shape["hidden_size"], shape["ffn_hidden_size"], shape["vocab_size"]
    kv = shape["num_query_groups"] * h // shape["num_attention_heads"]
    per_layer = 2 * h * (h + 2 * kv) + 2 * h * h + 2 * h * 2 * f + 2 * f * h + 2 * 2 * seq * h
    return 3 * (layers * per_layer + 2 * h * v)


def part_train(dry: bool, precision: str, layers: int, seq: int, rows: int, micro: int,
               steps: int) -> dict:
    """megatron-core train steps (the trainer's `optimizer_step`, distributed Adam) of a
    model with Llama-3-8B layer shapes; tokens/s and model TFLOP/s."""
    import torch

    from maestro_megatron.config.schema import (
        GRPOConfig,
        ModelConfig,
        ParallelConfig,
        PrecisionConfig,
    )
    from maestro_megatron.data.packing import SequenceBatch
    from maestro_megatron.megatron.model import build_model, unwrap_model
    from maestro_megatron.megatron.optimizer import build_optimizer
    from maestro_megatron.megatron.parallel import destroy_distributed, init_distributed
    from maestro_megatron.megatron.train_step import global_counts, optimizer_step, sft_loss_fn

    shape = TINY if dry else LLAMA3_8B
    if dry:
        layers, seq, rows, micro, steps = 2, 32, 4, 2, 2
    model = ModelConfig(num_layers=layers, seq_length=seq, tie_embeddings=False, **shape)
    parallel = ParallelConfig(use_distributed_optimizer=True)
    prec = {"fp32": PrecisionConfig(dtype="fp32"), "bf16": PrecisionConfig(dtype="bf16"),
            "fp8": PrecisionConfig(dtype="bf16", fp8="hybrid",
                                   transformer_impl="transformer_engine")}[precision]
    groups = init_distributed(parallel, model, seed=1234)
    try:
        chunks = build_model(model, parallel, prec, pp_rank=0, pp_size=1, wrap_ddp=True)
        impl = unwrap_model(chunks[0]).config.transformer_impl
        optimizer, scheduler = build_optimizer(GRPOConfig(lr=1e-5), parallel, prec, chunks,
                                               steps + 2)
        device = "cuda" if torch.cuda.is_available() and not dry else "cpu"
        gen = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, shape["vocab_size"], (rows, seq), generator=gen)
        mask = torch.ones(rows, seq)
        mask[:, 0] = 0
        batch = SequenceBatch(tokens.to(device), mask.to(device))
        loss_fn = sft_loss_fn(global_counts(batch.response_mask, groups))
        times = []
        for i in range(steps + 2):  # two unmeasured: allocation, kernels' first calls
            _sync(device)
            start = time.perf_counter()
            optimizer_step(chunks, optimizer, scheduler, batch, groups, loss_fn=loss_fn,
                           micro_batch_size=micro, vocab_size=shape["vocab_size"])
            _sync(device)
            if i >= 2:
                times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated() if device == "cuda" else 0
    finally:
        destroy_distributed()
    step_s = sorted(times)[len(times) // 2]
    flops = train_flops_per_token(shape, layers, seq) * rows * seq
    return {"precision": precision, "transformer_impl": impl, "layers": layers, "seq": seq,
            "rows": rows, "micro_batch": micro, "step_s": step_s,
            "tokens_per_s": rows * seq / step_s, "tflops": flops / step_s / 1e12,
            "peak_gpu_bytes": peak, "shape": shape}


def fp8_support() -> tuple[bool, str]:
    try:
        import transformer_engine.pytorch as te
    except ImportError:
        return False, "transformer_engine not installed"
    if hasattr(te, "is_fp8_available"):
        ok, reason = te.is_fp8_available(return_reason=True)
    else:
        from transformer_engine.pytorch.fp8 import check_fp8_support

        ok, reason = check_fp8_support()
    return bool(ok), str(reason or "")


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("part", choices=["matmul", "train", "recipe", "vllm"])
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--out-dir", help="recipe: the run directory (a fresh one)")
    args = p.parse_args(argv)
    if args.part == "matmul":
        out = part_matmul(args.dry_run)
    elif args.part == "train":
        out = part_train(args.dry_run, args.precision, args.layers, args.seq, args.rows,
                         args.micro_batch, args.steps)
    elif args.part == "recipe":
        from pathlib import Path

        from bench.gpu_recipe import part_recipe

        out = part_recipe(args.dry_run, args.precision, Path(args.out_dir))
    else:
        from bench.gpu_vllm import part_vllm

        out = part_vllm(args.dry_run)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
