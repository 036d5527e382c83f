"""torchrun worker (TP=2): Megatron policy from an HF dir, vLLM engine on rank 0, refit.

1. Load the tiny HF Llama into TP-sharded megatron chunks; rank 0 starts vLLM on the
   same directory and samples G responses per prompt.
2. Logprobs of fixed sequences: trainer (megatron, vocab-parallel) vs engine.
3. One real optimizer step of the trainer (supervised loss, Adam) changes the weights.
4. Refit: `iter_hf_weights` (TP all-gather, the converter's mapping) -> size-bounded
   safetensors buckets -> the running engine, no disk; logprobs compared again.
Rank 0 writes the figures as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    from transformers import AutoTokenizer

    from maestro_megatron.config.schema import GRPOConfig, ParallelConfig, PrecisionConfig
    from maestro_megatron.megatron.forward import forward_logprobs
    from maestro_megatron.megatron.model import build_model
    from maestro_megatron.megatron.parallel import destroy_distributed, init_distributed
    from maestro_megatron.megatron.train_step import (
        build_optimizer,
        global_counts,
        optimizer_step,
        sft_loss_fn,
    )
    from maestro_megatron.rollout import SamplingConfig, VLLMEngine, refit_engine
    from maestro_megatron.weights.gather import is_refit_leader, iter_hf_weights
    from maestro_megatron.weights.hf_model import hf_model_config, load_hf_weights
    from maestro_megatron.weights.registry import get_mapping
    from tests.support.fixed_sequences import fixed_sequences

    parser = argparse.ArgumentParser()
    parser.add_argument("--hf", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)

    cfg, _ = hf_model_config(args.hf)
    parallel = ParallelConfig(tensor_parallel=2)
    groups = init_distributed(parallel, cfg, seed=0)
    chunks = build_model(cfg, parallel, PrecisionConfig(), pp_rank=groups.pp_rank,
                         pp_size=groups.pp_size, wrap_ddp=True)
    load_hf_weights(chunks, args.hf, cfg, groups)
    leader = is_refit_leader(groups)
    engine = VLLMEngine(args.hf, seed=0) if leader else None
    result: dict = {}
    if leader:
        rollouts = engine.generate(["the quick brown", "question: what is"], 4,
                                   SamplingConfig(max_new_tokens=8, seed=1))
        result["group_sizes"] = [g.group_size for g in rollouts]
        result["response_lengths"] = [r.num_tokens for g in rollouts for r in g.responses]

    tok = AutoTokenizer.from_pretrained(args.hf)
    ids, prompt_lens, batch = fixed_sequences(tok)
    kw = dict(micro_batch_size=1, vocab_size=cfg.vocab_size)

    def trainer_logprobs() -> list[torch.Tensor]:
        out = forward_logprobs(chunks, batch, groups, **kw)
        return [out.logprobs[i, prompt_lens[i]:len(x)] for i, x in enumerate(ids)]

    def engine_logprobs() -> list[torch.Tensor]:
        return engine.score_sequences(ids, prompt_lens)

    def max_diff(a, b) -> float:
        return max(float((x - y).abs().max()) for x, y in zip(a, b))

    trainer_before = trainer_logprobs()
    if leader:
        engine_before = engine_logprobs()
        result["diff_before_refit"] = max_diff(trainer_before, engine_before)

    optimizer, scheduler = build_optimizer(GRPOConfig(lr=0.05, clip_grad=0.0), parallel,
                                           PrecisionConfig(), chunks, 1)
    optimizer_step(chunks, optimizer, scheduler, batch, groups,
                   loss_fn=sft_loss_fn(global_counts(batch.response_mask, groups)), **kw)
    trainer_after = trainer_logprobs()

    weights = iter_hf_weights(chunks, get_mapping(cfg.architecture), cfg, groups)
    if leader:
        stats = refit_engine(engine, weights, bucket_bytes=64 * 1024)
        result.update(num_tensors=stats.num_tensors, num_buckets=stats.num_buckets)
        engine_after = engine_logprobs()
        result["trainer_change"] = max_diff(trainer_after, trainer_before)
        result["diff_after_refit"] = max_diff(trainer_after, engine_after)
        result["engine_change"] = max_diff(engine_after, engine_before)
        args.out.write_text(json.dumps(result, indent=2))
        engine.close()
    else:
        for _ in weights:  # the collectives of the gather run on every rank
            pass
    destroy_distributed()


if __name__ == "__main__":
    main()
