"""torchrun worker: one whole GRPO + Conductor step under several Megatron layouts.

Per layout: policy (DDP, distributed Adam) and frozen reference loaded from the same
TP=1 checkpoint; old and reference logprobs; synthetic reward vectors (not the
policy's entropy: z-scoring its tiny within-group spread would magnify fp32 round-off
~100x and hide real layout bugs behind a loose tolerance); per-response Conductor
actions on h; scalar
reward with the k3 KL; group advantages; two `grpo_train_step`s; a Conductor REINFORCE update
with gradients averaged over DP; then logprobs after the step. Last-stage ranks write
their results (one file per TP and DP rank).
"""

from __future__ import annotations

from pathlib import Path

import torch
from layout_worker import MODEL, _load, _save
from layout_worker import main as layout_main

from maestro_megatron.conductor import Conductor, TwoTimescale, emphasis_templates
from maestro_megatron.config.schema import GRPOConfig, ParallelConfig, PrecisionConfig
from maestro_megatron.data.packing import SequenceBatch
from maestro_megatron.megatron.conductor_replica import (
    average_gradients,
    check_replicas,
    replica_drift,
)
from maestro_megatron.megatron.forward import forward_logprobs
from maestro_megatron.megatron.model import build_model
from maestro_megatron.megatron.parallel import init_distributed
from maestro_megatron.megatron.train_step import build_optimizer, grpo_train_step
from maestro_megatron.scalarizers import (
    ConductorScalarizer,
    ReplicaSync,
    scalarize_step,
    step_uniforms,
)

NUM_PROMPTS, GROUP, SEQ, K = 4, 4, 24, 5
GRPO = GRPOConfig(num_prompts_per_step=NUM_PROMPTS, group_size=GROUP, micro_batch_size=2,
                  lr=0.5, adam_eps=1.0, eps_low=0.2, eps_high=0.28, kl_coef=0.1,
                  clip_grad=1.0)
# adam_eps >> |grad| makes Adam's step ~ lr * grad: smooth in the gradient, so fp32
# round-off differences between layouts stay round-off (with eps 1e-8 Adam's step is
# ~ lr * sign(grad) and amplifies them on near-zero gradients).


def make_batch(seed: int = 0, shift: int = 0) -> SequenceBatch:
    """N*G right-padded rows; the G rows of a prompt share its prompt tokens.

    `shift` varies the response lengths (the checkpoint worker draws one batch per step).
    """
    gen = torch.Generator().manual_seed(seed)
    rows = NUM_PROMPTS * GROUP
    tokens = torch.randint(1, MODEL.vocab_size, (rows, SEQ), generator=gen)
    mask = torch.zeros(rows, SEQ)
    for row in range(rows):
        prompt = 3 + (row // GROUP) % 4
        tokens[row, :prompt] = tokens[(row // GROUP) * GROUP, :prompt]
        response = 4 + (5 * row + shift) % 15
        mask[row, prompt:prompt + response] = 1
        tokens[row, prompt + response:] = 0
    return SequenceBatch(tokens=tokens, response_mask=mask)


def make_conductor() -> Conductor:
    cond = Conductor(MODEL.hidden_size, emphasis_templates(K, 0.5), tau=1.0)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        cond.linear.weight.copy_(0.5 * torch.randn(cond.linear.weight.shape, generator=gen))
    return cond


def run_layout(spec: str, ckpt: Path, out: Path, save: bool) -> None:
    from megatron.core import parallel_state as ps

    tp, pp = (int(x) for x in spec.split(","))
    parallel = ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp)
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    groups = init_distributed(parallel, MODEL, seed=1234)
    policy = build_model(MODEL, parallel, PrecisionConfig(), pp_rank=groups.pp_rank,
                         pp_size=groups.pp_size, wrap_ddp=True)
    reference = build_model(MODEL, parallel, PrecisionConfig(), pp_rank=groups.pp_rank,
                            pp_size=groups.pp_size, freeze=True)
    if save:
        _save(policy, ckpt)
    _load(policy, ckpt)
    _load(reference, ckpt)
    optimizer, scheduler = build_optimizer(GRPO, parallel, PrecisionConfig(), policy, 10)

    full = make_batch()
    rows = full.batch_size // groups.dp_size
    offset = groups.dp_rank * rows
    batch = full.slice(offset, offset + rows)
    kw = dict(micro_batch_size=GRPO.micro_batch_size, vocab_size=MODEL.vocab_size)
    old = forward_logprobs(policy, batch, groups, **kw)
    ref = forward_logprobs(reference, batch, groups, **kw)

    conductor = make_conductor()
    scalarizer = ConductorScalarizer(conductor, lr=0.1, ent_coef=0.01,
                                     schedule=TwoTimescale(epochs=2))
    if groups.is_last_stage:  # the trainer's own chain: scalarize -> KL -> R -> A
        gen = torch.Generator().manual_seed(11)
        synthetic = torch.randn(full.batch_size, K, generator=gen)[offset:offset + rows]
        sc = scalarize_step(scalarizer, synthetic, logprobs=old.logprobs,
                            ref_logprobs=ref.logprobs, response_mask=batch.response_mask,
                            h=old.h, step=1, grpo=GRPO,
                            uniforms=step_uniforms(5, 1, full.batch_size, offset, rows))
        actions, advantages = sc.actions, sc.advantages
    else:
        advantages = torch.zeros(rows)
    extras = {"advantages": advantages,
              "old_logprobs": old.logprobs if old is not None else torch.zeros(rows, SEQ),
              "ref_logprobs": ref.logprobs if ref is not None else torch.zeros(rows, SEQ)}
    train_batch = SequenceBatch(batch.tokens, batch.response_mask, extras=extras)
    # Two updates on the same rollouts: the second sees ratios != 1 (clipping) and KL > 0.
    metrics = [grpo_train_step(policy, optimizer, scheduler, train_batch, GRPO, groups,
                               vocab_size=MODEL.vocab_size) for _ in range(2)]
    after = forward_logprobs(policy, batch, groups, **kw)

    if groups.is_last_stage:  # the scalarizer's outer-loop hooks, as the trainer calls them
        scalarizer.observe(sc.context, sc.used, sc.advantages)
        scalarizer.update(1, ReplicaSync(
            average_gradients=lambda m: average_gradients(m, groups.dp),
            check_replicas=lambda m: check_replicas(m, groups.tp)))
        drift = max(replica_drift(conductor, groups.tp), replica_drift(conductor, groups.dp))
        out.mkdir(parents=True, exist_ok=True)
        torch.save({
            "actions": actions, "advantages": advantages, "logprobs_after": after.logprobs,
            "h": old.h, "metrics": metrics, "drift": drift, "dp_size": groups.dp_size,
            "conductor": torch.cat([p.detach().flatten() for p in conductor.parameters()]),
        }, out / f"{spec.replace(',', '_')}_tp{groups.tp_rank}_dp{groups.dp_rank}.pt")


if __name__ == "__main__":
    layout_main(run_layout)
