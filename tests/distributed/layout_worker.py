"""torchrun worker: the same weights and data under several Megatron layouts.

``--save`` (one process): build the TP=1/PP=1 model from a seed, save it with megatron
dist_checkpointing (which reshards TP/PP on load), and record the baseline. Otherwise,
for each ``--layouts`` entry ``tp,pp[,vpp]`` in turn: re-initialise the parallel state,
build a DDP-wrapped model, load the checkpoint, and record (on last-stage TP-rank-0
ranks, one file per data-parallel rank):

- forward-only response logprobs [b, S], entropy [b, S], h [b, H] of this DP share,
- the global gradient norm of one forward+backward of a global token-mean loss,
- logprobs after one optimizer step (distributed Adam).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from maestro_megatron.config.schema import ModelConfig, ParallelConfig, PrecisionConfig
from maestro_megatron.megatron.forward import SequenceBatch, forward_logprobs, run_forward_backward
from maestro_megatron.megatron.model import build_model, unwrap_model
from maestro_megatron.megatron.parallel import init_distributed

MODEL = ModelConfig(num_layers=4, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                    num_query_groups=2, vocab_size=250, make_vocab_size_divisible_by=128,
                    seq_length=32, qk_layernorm=True, add_qkv_bias=True, tie_embeddings=True)
BATCH, SEQ, MICRO_BATCH = 8, 24, 2
LR = 0.5


def make_batch() -> SequenceBatch:
    """Right-padded prompt+response rows with varied prompt and response lengths."""
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, MODEL.vocab_size, (BATCH, SEQ), generator=gen)
    mask = torch.zeros(BATCH, SEQ)
    for row in range(BATCH):
        prompt = 3 + row % 5
        response = 4 + (3 * row) % 13
        mask[row, prompt:prompt + response] = 1
        tokens[row, prompt + response:] = 0  # padding id
    return SequenceBatch(tokens=tokens, response_mask=mask)


def loss_fn(num_global_tokens: float):
    """Global token-mean of -logprob (what policy_loss(num_global_tokens=...) computes)."""
    def fn(logprobs, entropy, h, micro_batch):
        loss = -(logprobs * micro_batch.response_mask).sum() / num_global_tokens
        return loss, {"loss": loss.detach()}
    return fn


def _load(chunks, ckpt: Path) -> None:
    from megatron.core import dist_checkpointing

    models = [unwrap_model(c) for c in chunks]
    sharded = {f"model{i}": m.sharded_state_dict() for i, m in enumerate(models)}
    state = dist_checkpointing.load(sharded, str(ckpt))
    for i, m in enumerate(models):
        m.load_state_dict(state[f"model{i}"])


def _save(chunks, ckpt: Path) -> None:
    from megatron.core import dist_checkpointing

    ckpt.mkdir(parents=True, exist_ok=True)
    sharded = {"model0": unwrap_model(chunks[0]).sharded_state_dict()}
    dist_checkpointing.save(sharded, str(ckpt))


def run_layout(spec: str, ckpt: Path, out: Path, save: bool) -> None:
    from megatron.core import parallel_state as ps
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    tp, pp, *rest = (int(x) for x in spec.split(","))
    vpp = rest[0] if rest else None
    parallel = ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp,
                              virtual_pipeline_parallel=vpp, use_distributed_optimizer=True)
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    groups = init_distributed(parallel, MODEL, seed=1234)
    chunks = build_model(MODEL, parallel, PrecisionConfig(), pp_rank=groups.pp_rank,
                         pp_size=groups.pp_size, wrap_ddp=True)
    if save:
        _save(chunks, ckpt)
    else:
        _load(chunks, ckpt)

    full = make_batch()
    rows = BATCH // groups.dp_size
    batch = full.slice(groups.dp_rank * rows, (groups.dp_rank + 1) * rows)
    kwargs = dict(micro_batch_size=MICRO_BATCH, vocab_size=MODEL.vocab_size)
    before = forward_logprobs(chunks, batch, groups, **kwargs)

    optimizer = get_megatron_optimizer(
        # The distributed optimizer is Adam-only; eps >> |grad| makes its first step
        # ~ lr * grad / eps, smooth in the gradient, so layouts stay comparable.
        OptimizerConfig(optimizer="adam", lr=LR, adam_eps=1.0, weight_decay=0.0,
                        clip_grad=1e9, use_distributed_optimizer=True), chunks)
    for chunk in chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    num_global_tokens = float(full.response_mask.sum())
    trained = run_forward_backward(chunks, batch, groups, loss_fn=loss_fn(num_global_tokens),
                                   **kwargs)
    _, grad_norm, _ = optimizer.step()
    after = forward_logprobs(chunks, batch, groups, **kwargs)

    if groups.is_last_stage and groups.tp_rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        torch.save({
            "logprobs": before.logprobs, "entropy": before.entropy, "h": before.h,
            "train_logprobs": trained.logprobs,
            "loss": sum(float(m["loss"]) for m in trained.metrics),
            "grad_norm": float(grad_norm), "logprobs_after": after.logprobs,
            "dp_size": groups.dp_size,
        }, out / f"{spec.replace(',', '_')}_dp{groups.dp_rank}.pt")


def main(run=None) -> None:
    """Parse --ckpt/--out/--save/--layouts and run `run(spec, ckpt, out, save)` per layout
    (default: this file's `run_layout`); grpo_worker.py reuses it with its own step."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--save", action="store_true")
    parser.add_argument("--layouts", nargs="+", default=["1,1"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    for spec in args.layouts:
        (run or run_layout)(spec, args.ckpt, args.out, args.save)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
