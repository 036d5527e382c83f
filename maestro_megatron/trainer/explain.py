"""`maestro explain RUN_DIR`: the Conductor's deterministic reward weights
w(h) = sum_a pi(a | h) w(a) for given prompt+response pairs, from a finished run.

Uses the run's exported policy (`hf_final/`, the same HF directory vLLM can serve) to
compute h (final-layernorm output at the last response token) in one process, and the
saved Conductor (`conductor.pt`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from maestro_megatron.conductor import load_conductor
from maestro_megatron.errors import UserError


def explain(run_dir: Path, pairs: list[dict]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """-> (component names, weights [B, K], action probabilities [B, J])."""
    from transformers import AutoTokenizer

    from maestro_megatron.config import ParallelConfig, PrecisionConfig, load_recipe
    from maestro_megatron.data.packing import pack_sequences
    from maestro_megatron.megatron.forward import forward_logprobs
    from maestro_megatron.megatron.model import build_model
    from maestro_megatron.megatron.parallel import destroy_distributed, init_distributed
    from maestro_megatron.trainer.rollouts import encode_prompt
    from maestro_megatron.weights.hf_model import hf_model_config, load_hf_weights

    run_dir = Path(run_dir)
    for needed in ("recipe.yaml", "hf_final", "conductor.pt"):
        if not (run_dir / needed).exists():
            raise UserError(f"{run_dir / needed} not found: is {run_dir} a finished run "
                            "(with the conductor scalarizer)?")
    recipe = load_recipe(run_dir / "recipe.yaml")
    hf_dir = run_dir / "hf_final"
    cfg, _ = hf_model_config(hf_dir, base=recipe.model)
    parallel = ParallelConfig()
    groups = init_distributed(parallel, cfg, seed=0)
    try:
        chunks = build_model(cfg, parallel, PrecisionConfig(transformer_impl="local"),
                             pp_rank=0, pp_size=1, freeze=True)
        load_hf_weights(chunks, hf_dir, cfg, groups)
        tok = AutoTokenizer.from_pretrained(hf_dir)
        prompts = [encode_prompt(tok, p["prompt"], recipe.data) for p in pairs]
        # + EOS: a finished training response ends with it, so h (at the last response
        # token) sits on the same token as in training.
        responses = [tok(p["response"], add_special_tokens=False)["input_ids"]
                     + [tok.eos_token_id] for p in pairs]
        batch = pack_sequences(prompts, responses, tok.pad_token_id, cfg.seq_length)
        out = forward_logprobs(chunks, batch, groups, micro_batch_size=1,
                               vocab_size=cfg.vocab_size,
                               logprob_chunk_tokens=recipe.memory.logprob_chunk_tokens)
        conductor, components = load_conductor(run_dir / "conductor.pt")
        return components, conductor.weights(out.h), conductor.probs(out.h).detach()
    finally:
        destroy_distributed()


def format_weights(pairs: list[dict], components: list[str], weights: torch.Tensor) -> str:
    head = f"{'task':<10} {'prompt':<36} " + " ".join(f"{c:>6}" for c in components)
    lines = [head]
    for pair, w in zip(pairs, weights):
        prompt = pair["prompt"].replace("\n", " ")[:36]
        lines.append(f"{pair.get('task', '-'):<10} {prompt:<36} "
                     + " ".join(f"{x:6.3f}" for x in w.tolist()))
    return "\n".join(lines)
