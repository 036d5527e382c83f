"""Run GRPO + Conductor steps of a recipe's model on synthetic rollouts, any layout.

    torchrun --standalone --nproc-per-node 4 tools/megatron_step.py recipes/tiny_cpu.yaml \
        parallel.tensor_parallel=2 parallel.pipeline_parallel=2 run.num_steps=3

Random (seeded) weights and random prompt+response tokens stand in for vLLM rollouts,
and random reward vectors for the reward components; everything else is the real
Megatron path: policy (DDP + distributed optimizer) and frozen reference forward,
vocab-parallel logprobs/entropy, h at the last response token, the recipe's scalarizer
through the trainer's own `scalarize_step` (per-response Conductor actions, group
advantages), `grpo_train_step`, and the scalarizer's update hook (the DP-averaged
Conductor update).
The last rank prints one JSON line of metrics per step (with seconds per step).
"""

from __future__ import annotations

import json
import sys
import time

import torch


def main(argv: list[str]) -> None:
    from maestro_megatron.config import load_recipe
    from maestro_megatron.data.packing import SequenceBatch
    from maestro_megatron.megatron.conductor_replica import average_gradients, check_replicas
    from maestro_megatron.megatron.forward import forward_logprobs
    from maestro_megatron.megatron.model import build_model
    from maestro_megatron.megatron.parallel import destroy_distributed, init_distributed
    from maestro_megatron.megatron.train_step import build_optimizer, grpo_train_step
    from maestro_megatron.scalarizers import (
        ReplicaSync,
        build_scalarizer,
        scalarize_step,
        step_uniforms,
    )

    recipe = load_recipe(argv[0], argv[1:])
    m, g, run = recipe.model, recipe.grpo, recipe.run
    groups = init_distributed(recipe.parallel, m, seed=run.seed)
    if (g.num_prompts_per_step % groups.dp_size) != 0:
        raise ValueError(f"grpo.num_prompts_per_step={g.num_prompts_per_step} must split over "
                         f"{groups.dp_size} data-parallel ranks (a group never straddles ranks)")
    build = dict(pp_rank=groups.pp_rank, pp_size=groups.pp_size)
    policy = build_model(m, recipe.parallel, recipe.precision, wrap_ddp=True,
                         memory_cfg=recipe.memory, **build)
    reference = build_model(m, recipe.parallel, recipe.precision, freeze=True, **build)
    for pol, ref in zip(policy, reference):
        ref.load_state_dict(pol.module.state_dict())
    optimizer, scheduler = build_optimizer(g, recipe.parallel, recipe.precision, policy,
                                           run.num_steps)
    num_k = len(recipe.rewards.components)
    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    scalarizer = build_scalarizer(recipe, d_model=m.hidden_size, device=device)
    sync = ReplicaSync(average_gradients=lambda c: average_gradients(c, groups.dp),
                       check_replicas=lambda c: check_replicas(c, groups.tp))

    num_global = g.num_prompts_per_step * g.group_size
    rows, seq = num_global // groups.dp_size, m.seq_length
    offset = groups.dp_rank * rows
    kw = dict(micro_batch_size=g.micro_batch_size, vocab_size=m.vocab_size,
              logprob_chunk_tokens=recipe.memory.logprob_chunk_tokens)
    for step in range(1, run.num_steps + 1):
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(run.seed * 7919 + step)
        tokens = torch.randint(0, m.vocab_size, (num_global, seq), generator=gen)
        lengths = torch.randint(seq // 4, seq // 2, (num_global,), generator=gen)
        pos = torch.arange(seq)[None]
        mask = (pos >= seq // 4) & (pos < lengths[:, None] + seq // 4)  # prompt = seq // 4
        rewards = torch.randn(num_global, num_k, generator=gen)
        sl = slice(offset, offset + rows)
        batch = SequenceBatch(tokens[sl].to(device), mask[sl].float().to(device))
        old = forward_logprobs(policy, batch, groups, **kw)
        ref = forward_logprobs(reference, batch, groups, **kw)
        advantages, sc = torch.zeros(rows, device=device), None
        if groups.is_last_stage:  # the trainer's own scalarize -> KL -> R -> A chain
            sc = scalarize_step(
                scalarizer, rewards[sl], logprobs=old.logprobs, ref_logprobs=ref.logprobs,
                response_mask=batch.response_mask, h=old.h, step=step, grpo=g,
                normalization=recipe.rewards.normalization,
                uniforms=step_uniforms(recipe.scalarizer.seed, step, num_global, offset, rows))
            advantages = sc.advantages
        zeros = torch.zeros(rows, seq, device=device)
        extras = {"advantages": advantages.to(device),
                  "old_logprobs": old.logprobs if old is not None else zeros,
                  "ref_logprobs": ref.logprobs if ref is not None else zeros}
        metrics = grpo_train_step(policy, optimizer, scheduler,
                                  SequenceBatch(batch.tokens, batch.response_mask, extras=extras),
                                  g, groups, vocab_size=m.vocab_size,
                                  logprob_chunk_tokens=recipe.memory.logprob_chunk_tokens)
        if sc is not None:
            scalarizer.observe(sc.context, sc.used, sc.advantages)
            metrics.update(scalarizer.update(step, sync))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        metrics["timing/step_s"] = time.perf_counter() - start
        if groups.rank == groups.world_size - 1:
            print(json.dumps({"step": step, **metrics}), flush=True)
    destroy_distributed()


if __name__ == "__main__":
    main(sys.argv[1:])
