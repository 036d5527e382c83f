"""Start-up of a run: tokenizer, policy + frozen reference, supervised warm-up, the
HF directory the rollout engine starts from.

With `model.hf_path` the run starts from that checkpoint (weights, tokenizer,
architecture). Without it (the tiny CPU recipe) a tokenizer is trained on the prompt
data, the policy starts from a seeded random init and a short supervised warm-up
teaches it the answer format; the reference is the policy after warm-up. The random
init is written once as an HF directory and loaded like a real checkpoint, so every
TP/PP/DP layout starts from the same weights.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist

from maestro_megatron.config.schema import GRPOConfig, ModelConfig, Recipe
from maestro_megatron.data.packing import sequence_pad_multiple
from maestro_megatron.megatron.model import build_model, unwrap_model
from maestro_megatron.megatron.offload import offload
from maestro_megatron.megatron.parallel import ParallelGroups
from maestro_megatron.megatron.train_step import (
    build_optimizer,
    global_counts,
    optimizer_step,
    reduce_metrics,
    sft_loss_fn,
)
from maestro_megatron.trainer.rollouts import encode_prompt, pack_sequences
from maestro_megatron.weights.hf_model import export_hf, hf_model_config, load_hf_weights


@dataclass
class Models:
    """What a run trains with. `engine_dir`: HF directory the engine starts from."""

    cfg: ModelConfig
    policy: list[torch.nn.Module]
    reference: list[torch.nn.Module]
    tokenizer: object
    tokenizer_dir: Path
    engine_dir: Path


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def prepare_tokenizer(recipe: Recipe, run_dir: Path, groups: ParallelGroups) -> Path:
    """The HF checkpoint's tokenizer, or one trained (by rank 0) on the prompt data."""
    if recipe.model.hf_path:
        return Path(recipe.model.hf_path)
    from maestro_megatron.data.prompts import builtin_texts, load_data_config
    from maestro_megatron.data.tokenizer import train_chat_tokenizer

    out = run_dir / "tokenizer"
    if groups.rank == 0 and not (out / "tokenizer.json").is_file():
        texts = builtin_texts()
        if recipe.data.path is not None:
            texts += [t for r in load_data_config(recipe.data) for t in (r.prompt, r.reference)
                      if t]
        train_chat_tokenizer(texts, out, vocab_size=recipe.data.tokenizer_vocab_size)
    _barrier()
    return out


def random_hf_init(cfg: ModelConfig, out: Path, tokenizer_dir: Path, seed: int,
                   special: dict) -> Path:
    """A seeded random HF model of `cfg` (transformers' own init, std init_method_std).

    Starting every layout from the same HF directory makes the run layout-invariant
    (megatron's own init draws per TP/PP rank).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from maestro_megatron.weights.hf_io import copy_tokenizer_files
    from maestro_megatron.weights.registry import get_mapping

    hf = get_mapping(cfg.architecture).hf_config(cfg, base=special, dtype="float32")
    config = AutoConfig.for_model(hf.pop("model_type"), **hf)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(torch.float32)
    tmp = out.parent / f".{out.name}.partial"
    model.save_pretrained(tmp, safe_serialization=True)
    copy_tokenizer_files(tokenizer_dir, tmp)
    tmp.rename(out)
    return out


def _copy_weights(src: list[torch.nn.Module], dst: list[torch.nn.Module]) -> None:
    with torch.no_grad():
        for s, d in zip(src, dst):
            unwrap_model(d).load_state_dict(unwrap_model(s).state_dict())


def warmup(recipe: Recipe, cfg: ModelConfig, policy, tokenizer, groups: ParallelGroups
           ) -> dict[str, float]:
    """Supervised fine-tuning on (prompt, response) pairs; returns first/last loss."""
    w = recipe.warmup
    if w.num_steps == 0:
        return {}
    from maestro_megatron.data.prompts import load_builtin_rows, load_sft_rows

    rows = load_builtin_rows() if w.path is None else load_sft_rows(w.path)
    if w.batch_size % groups.dp_size:
        raise ValueError(f"warmup.batch_size={w.batch_size} must split over "
                         f"{groups.dp_size} data-parallel ranks")
    sft = GRPOConfig(lr=w.lr, clip_grad=1.0, micro_batch_size=recipe.grpo.micro_batch_size)
    optimizer, scheduler = build_optimizer(sft, recipe.parallel, recipe.precision, policy,
                                           w.num_steps)
    gen = torch.Generator().manual_seed(recipe.run.seed)
    per_rank = w.batch_size // groups.dp_size
    micro = min(recipe.grpo.micro_batch_size, per_rank)
    pad_multiple = sequence_pad_multiple(recipe.parallel, recipe.precision)
    losses = []
    for _ in range(w.num_steps):
        pick = torch.randint(0, len(rows), (w.batch_size,), generator=gen).tolist()
        mine = [rows[i] for i in pick][groups.dp_rank * per_rank:(groups.dp_rank + 1) * per_rank]
        prompts = [encode_prompt(tokenizer, r["prompt"], recipe.data)
                   for r in mine]
        targets = [tokenizer(r["response"], add_special_tokens=False)["input_ids"]
                   + [tokenizer.eos_token_id] for r in mine]
        batch = pack_sequences(prompts, targets, tokenizer.pad_token_id, cfg.seq_length,
                               pad_multiple)
        out, _ = optimizer_step(policy, optimizer, scheduler, batch, groups,
                                loss_fn=sft_loss_fn(global_counts(batch.response_mask, groups)),
                                micro_batch_size=micro, vocab_size=cfg.vocab_size,
                                logprob_chunk_tokens=recipe.memory.logprob_chunk_tokens)
        if out is not None:
            losses.append(reduce_metrics(out.metrics, groups, "warmup")["warmup/loss"])
    return {"warmup/first_loss": losses[0], "warmup/last_loss": losses[-1]} if losses else {}


def prepare_models(recipe: Recipe, run_dir: Path, groups: ParallelGroups) -> Models:
    """Tokenizer, policy (DDP), reference (frozen), warm-up, engine directory."""
    from transformers import AutoTokenizer

    tok_dir = prepare_tokenizer(recipe, run_dir, groups)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    if recipe.model.hf_path:
        cfg, _ = hf_model_config(recipe.model.hf_path, base=recipe.model)
    else:
        cfg = replace(recipe.model, vocab_size=len(tokenizer))
    stage = dict(pp_rank=groups.pp_rank, pp_size=groups.pp_size)
    policy = build_model(cfg, recipe.parallel, recipe.precision, wrap_ddp=True,
                         memory_cfg=recipe.memory, **stage)
    # Forward-only (eval mode): nothing to recompute, no grad buffers.
    reference = build_model(cfg, recipe.parallel, recipe.precision, freeze=True, **stage)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    init_dir = Path(cfg.hf_path) if cfg.hf_path else run_dir / "hf_random_init"
    if not cfg.hf_path and groups.rank == 0 and not init_dir.exists():
        random_hf_init(cfg, init_dir, tok_dir, recipe.run.seed, special)
    _barrier()
    load_hf_weights(policy, init_dir, cfg, groups)
    engine_dir = init_dir
    if recipe.warmup.num_steps:
        start = time.perf_counter()
        metrics = warmup(recipe, cfg, policy, tokenizer, groups)
        engine_dir = run_dir / "hf_warmup"
        if groups.rank == 0 and engine_dir.exists():
            shutil.rmtree(engine_dir)
        _barrier()
        export_hf(policy, cfg, groups, engine_dir, tokenizer_dir=tok_dir, base_config=special)
        if metrics and groups.rank == groups.world_size - 1:
            print(f"warm-up: {recipe.warmup.num_steps} steps, loss "
                  f"{metrics['warmup/first_loss']:.3f} -> {metrics['warmup/last_loss']:.3f} "
                  f"({time.perf_counter() - start:.1f} s)", flush=True)
    _copy_weights(policy, reference)
    if recipe.memory.offload_reference:  # host-resident; on the GPU only for its forwards
        offload(reference)
    return Models(cfg, policy, reference, tokenizer, Path(tok_dir), engine_dir)
