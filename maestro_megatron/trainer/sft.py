"""The SFT baseline (the MAESTRO paper's SFT row, arXiv 2601.07208): supervised
fine-tuning of the policy on the train split's targets, no rollouts, rewards or
scalarizer. `train` calls `train_sft` when run.algorithm is sft.

Loss: -(sum of target-token log-probs) / (global number of target tokens), the
warm-up's `sft_loss_fn` (trainer/bootstrap.py), over batches of sft.batch_size rows
drawn without replacement, reshuffled every epoch from (run.seed, epoch).

Target of a row: its `sft.response_key` column when the data has one (the built-in
prompts do: the same responses the warm-up teaches), else the reference wrapped in the
answer format, `sft.answer_template` ("<think></think><answer>{reference}</answer>",
which rewards.fmt.pattern accepts); a row with neither is skipped and counted.

Writes what evaluation reads, as a GRPO run does: recipe.yaml, metrics.jsonl
(train/loss per step), tokenizer files in hf_final/, hf_final/, checkpoints/ (resumed
by the same command), FINISHED.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch

from maestro_megatron.config import Recipe, recipe_to_dict
from maestro_megatron.config.schema import GRPOConfig


def sft_rows(recipe: Recipe) -> tuple[list[dict[str, str]], int]:
    """([{"prompt", "response", "task"}], rows skipped) of the data's data.split rows."""
    from maestro_megatron.data.prompts import (
        BUILTIN_PROMPTS,
        load_data_config,
        load_prompts,
        select_split,
    )

    d, sft = recipe.data, recipe.sft
    records = load_data_config(d)
    # The same file and split read with the response column in the reference slot: the
    # rows line up one to one with `records` (a missing or empty response is None).
    responses = select_split(load_prompts(d.path, prompt_key=d.prompt_key,
                                          reference_key=sft.response_key, task_key=d.task_key,
                                          split_key=d.split_key),
                             d.split, str(d.path or BUILTIN_PROMPTS))
    rows, skipped = [], 0
    for record, response in zip(records, responses, strict=True):
        target = response.reference
        if target is None and record.reference is not None:
            target = sft.answer_template.format(reference=record.reference)
        if target is None:
            skipped += 1
            continue
        rows.append({"prompt": record.prompt, "response": target, "task": record.task})
    if not rows:
        raise ValueError(f"data: no row of split {d.split!r} has a {sft.response_key!r} "
                         "column or a reference to train on")
    return rows, skipped


def batch_indices(num_rows: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Row indices of optimizer step `step` (from 1): position p = (step - 1) B + i of an
    endless stream of epochs, each a permutation drawn from (seed, epoch)."""
    out = []
    for p in range((step - 1) * batch_size, step * batch_size):
        epoch = p // num_rows
        perm = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed + epoch))
        out.append(int(perm[p % num_rows]))
    return out


def build_policy(recipe: Recipe, run_dir: Path, groups):
    """(tokenizer, tokenizer dir, model config, DDP policy) loaded from model.hf_path or,
    without it, from the seeded random init the GRPO runs start from (bootstrap.py)."""
    from transformers import AutoTokenizer

    from maestro_megatron.megatron.model import build_model
    from maestro_megatron.trainer.bootstrap import _barrier, prepare_tokenizer, random_hf_init
    from maestro_megatron.weights.hf_model import hf_model_config, load_hf_weights

    tok_dir = prepare_tokenizer(recipe, run_dir, groups)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    if recipe.model.hf_path:
        cfg, _ = hf_model_config(recipe.model.hf_path, base=recipe.model)
    else:
        cfg = replace(recipe.model, vocab_size=len(tokenizer))
    policy = build_model(cfg, recipe.parallel, recipe.precision, wrap_ddp=True,
                         pp_rank=groups.pp_rank, pp_size=groups.pp_size,
                         memory_cfg=recipe.memory)
    init_dir = Path(cfg.hf_path) if cfg.hf_path else run_dir / "hf_random_init"
    if not cfg.hf_path and groups.rank == 0 and not init_dir.exists():
        random_hf_init(cfg, init_dir, tok_dir, recipe.run.seed, special_tokens(tokenizer))
    _barrier()
    load_hf_weights(policy, init_dir, cfg, groups)
    return tokenizer, Path(tok_dir), cfg, policy


def special_tokens(tokenizer) -> dict:
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}


def sft_step(recipe: Recipe, rows, step: int, tokenizer, cfg, policy, optimizer, scheduler,
             groups) -> dict[str, float]:
    """One optimizer step on this data-parallel rank's share of the step's batch."""
    from maestro_megatron.data.packing import sequence_pad_multiple
    from maestro_megatron.megatron.train_step import (
        global_counts,
        optimizer_step,
        reduce_metrics,
        sft_loss_fn,
    )
    from maestro_megatron.trainer.rollouts import encode_prompt, pack_sequences

    size, per_rank = recipe.sft.batch_size, recipe.sft.batch_size // groups.dp_size
    picked = batch_indices(len(rows), size, step, recipe.run.seed)
    mine = [rows[i] for i in picked][groups.dp_rank * per_rank:(groups.dp_rank + 1) * per_rank]
    prompts = [encode_prompt(tokenizer, r["prompt"], recipe.data) for r in mine]
    targets = [tokenizer(r["response"], add_special_tokens=False)["input_ids"]
               + [tokenizer.eos_token_id] for r in mine]
    batch = pack_sequences(prompts, targets, tokenizer.pad_token_id, cfg.seq_length,
                           sequence_pad_multiple(recipe.parallel, recipe.precision))
    out, info = optimizer_step(policy, optimizer, scheduler, batch, groups,
                               loss_fn=sft_loss_fn(global_counts(batch.response_mask, groups)),
                               micro_batch_size=min(recipe.grpo.micro_batch_size, per_rank),
                               vocab_size=cfg.vocab_size,
                               logprob_chunk_tokens=recipe.memory.logprob_chunk_tokens)
    metrics = {"train/grad_norm": info["grad_norm"], "train/lr": info["lr"],
               "train/epoch": (step * size - 1) // len(rows)}
    if out is not None:
        metrics.update(reduce_metrics(out.metrics, groups, "train"))
    return metrics


def train_sft(recipe: Recipe) -> Path:
    """Collective over all ranks: the SFT run of `recipe`; returns the run directory."""
    from maestro_megatron.data.prompts import describe_splits
    from maestro_megatron.megatron.parallel import destroy_distributed, init_distributed
    from maestro_megatron.megatron.train_step import build_optimizer
    from maestro_megatron.trainer.bootstrap import _barrier
    from maestro_megatron.trainer.checkpoint import (
        load_checkpoint,
        prune_checkpoints,
        resume_checkpoint,
        save_checkpoint,
    )
    from maestro_megatron.trainer.finish import FINISHED
    from maestro_megatron.trainer.outputs import RunWriter, atomic_write_text
    from maestro_megatron.weights.hf_model import export_hf

    run = recipe.run
    groups = init_distributed(recipe.parallel, recipe.model, seed=run.seed,
                              timeout_minutes=recipe.parallel.timeout_minutes)
    if recipe.sft.batch_size % groups.dp_size:
        raise ValueError(f"sft.batch_size={recipe.sft.batch_size} must split over "
                         f"{groups.dp_size} data-parallel ranks")
    run_dir, ckpt_root = Path(run.output_dir), Path(run.output_dir) / "checkpoints"
    rows, skipped = sft_rows(recipe)
    latest = resume_checkpoint(ckpt_root, fallback=run.resume_fallback)
    if latest is None:
        RunWriter.check_fresh_start(run_dir, overwrite=run.overwrite)
    if groups.rank == 0:
        print(f"{describe_splits(recipe.data)}; SFT on {len(rows)} rows ({skipped} without "
              "a target skipped)", flush=True)
    tokenizer, tok_dir, cfg, policy = build_policy(recipe, run_dir, groups)
    opt_cfg = GRPOConfig(lr=recipe.sft.lr, clip_grad=recipe.grpo.clip_grad,
                         micro_batch_size=recipe.grpo.micro_batch_size)
    optimizer, scheduler = build_optimizer(opt_cfg, recipe.parallel, recipe.precision, policy,
                                           run.num_steps)
    start = 0
    if latest is not None:
        start = load_checkpoint(latest, model_chunks=policy, optimizer=optimizer,
                                scheduler=scheduler, groups=groups, scalarizer=None,
                                verify=False)["step"]
    logger = groups.is_last_stage and groups.tp_rank == 0 and groups.dp_rank == 0
    writer = RunWriter(run_dir, recipe_to_dict(recipe), enabled=logger,
                       total_steps=run.num_steps, start_step=start, progress=run.progress,
                       overwrite=run.overwrite)
    try:
        for step in range(start + 1, run.num_steps + 1):
            begin = time.perf_counter()
            metrics = sft_step(recipe, rows, step, tokenizer, cfg, policy, optimizer,
                               scheduler, groups)
            metrics["timing/step"] = time.perf_counter() - begin
            writer.log(step, metrics)
            if (run.save_every and step % run.save_every == 0) or step == run.num_steps:
                save_checkpoint(ckpt_root, step, model_chunks=policy, optimizer=optimizer,
                                scheduler=scheduler, groups=groups, scalarizer=None, extra={})
                if groups.rank == 0:
                    prune_checkpoints(ckpt_root, run.keep_checkpoints)
    finally:
        writer.close()
    out = run_dir / "hf_final"
    if groups.rank == 0 and out.exists():
        shutil.rmtree(out)
    _barrier()
    export_hf(policy, cfg, groups, out, tokenizer_dir=tok_dir,
              base_config=special_tokens(tokenizer))
    if groups.rank == 0:
        atomic_write_text(run_dir / FINISHED, f"{run.num_steps}\n")
        print(f"done: SFT, {run.num_steps} steps; run directory {run_dir}; policy {out}",
              flush=True)
    destroy_distributed()
    return run_dir
