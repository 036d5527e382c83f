"""The GRPO policy update on megatron-core (the inner loop, DESIGN.md sections 2-3).

Plumbing around `maestro_megatron.algorithms.policy_loss`: global token/sequence counts
all-reduced over data-parallel ranks, megatron's (distributed) optimizer with gradient
clipping, its learning-rate scheduler, and metrics reduced across ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from maestro_megatron.algorithms import kl_estimate, policy_loss
from maestro_megatron.config.schema import GRPOConfig
from maestro_megatron.data.packing import SequenceBatch
from maestro_megatron.megatron.forward import run_forward_backward
from maestro_megatron.megatron.optimizer import build_optimizer
from maestro_megatron.megatron.parallel import ParallelGroups

__all__ = ["GlobalCounts", "build_optimizer", "global_counts", "grpo_loss_fn", "grpo_train_step",
           "optimizer_step", "reduce_metrics", "sft_loss_fn"]


@dataclass(frozen=True)
class GlobalCounts:
    """Response tokens and non-empty sequences summed over all data-parallel ranks."""

    num_tokens: float
    num_seqs: float
    max_len: int


def global_counts(response_mask: torch.Tensor, groups: ParallelGroups) -> GlobalCounts:
    """response_mask: [B, S] of this DP rank -> counts over the whole global batch.

    Counted where the mask lives (the model's device: NCCL reduces CUDA tensors); one
    host read of the two sums, since the loss needs them as numbers."""
    local = torch.stack([response_mask.sum(), (response_mask.sum(1) > 0).sum()]).double()
    if groups.dp_size > 1:
        dist.all_reduce(local, op=dist.ReduceOp.SUM, group=groups.dp)
    num_tokens, num_seqs = local.tolist()
    return GlobalCounts(num_tokens, num_seqs, int(response_mask.shape[1]))


def grpo_loss_fn(grpo: GRPOConfig, counts: GlobalCounts):
    """loss_fn for `run_forward_backward`: this micro-batch's share of the global loss.

    The micro-batch carries extras "advantages" [b], "old_logprobs" [b, S] (absent: the
    update is on-policy, old = this pass's own log-probs, detached: ratio 1) and, for
    kl_in_loss, "ref_logprobs" [b, S]. Metrics are token-weighted SUMS (reduced later).
    """

    def fn(logprobs, entropy, h, micro_batch: SequenceBatch):
        mask = micro_batch.response_mask.to(logprobs.dtype)
        extras = micro_batch.extras
        old = extras["old_logprobs"] if "old_logprobs" in extras else logprobs.detach()
        loss, pm = policy_loss(
            logprobs, old, extras["advantages"], mask,
            eps_low=grpo.eps_low, eps_high=grpo.eps_high, dual_clip=grpo.dual_clip,
            agg=grpo.loss_agg, num_global_tokens=counts.num_tokens,
            num_global_seqs=counts.num_seqs, max_len=counts.max_len)
        num_tokens = mask.sum()
        metrics = {"num_tokens": num_tokens.detach(), "loss": loss.detach(),
                   "clip_frac": pm["clip_frac"] * num_tokens,
                   "entropy": (entropy * mask).sum().detach()}
        if "ref_logprobs" in extras:
            kl = kl_estimate(logprobs, extras["ref_logprobs"], grpo.kl_kind) * mask
            metrics["kl"] = kl.sum().detach()
            if grpo.kl_in_loss:
                loss = loss + grpo.kl_coef * kl.sum() / max(counts.num_tokens, 1.0)
        return loss, metrics

    return fn


def reduce_metrics(per_micro: list[dict], groups: ParallelGroups, prefix: str
                   ) -> dict[str, float]:
    """Sum micro-batch metric sums over DP; "loss" stays a sum (each part is a share of
    the global loss), the others are divided by the global "num_tokens"."""
    keys = sorted(per_micro[0]) if per_micro else []
    if not keys:
        return {f"{prefix}/loss": 0.0}
    # Summed where the metrics live (the model's device), reduced there, read once.
    sums = torch.stack([sum(torch.as_tensor(m[k]).double() for m in per_micro)
                        for k in keys])
    if groups.dp_size > 1:
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=groups.dp)
    total = dict(zip(keys, sums.tolist()))
    num_tokens = max(total.pop("num_tokens", 0.0), 1.0)
    out = {f"{prefix}/loss": total.pop("loss", 0.0)}
    for key, value in total.items():
        out[f"{prefix}/{key}"] = value / num_tokens
    return out


def optimizer_step(model_chunks: list[torch.nn.Module], optimizer, scheduler,
                   batch: SequenceBatch, groups: ParallelGroups, *, loss_fn,
                   micro_batch_size: int, vocab_size: int, logprob_chunk_tokens: int = 2048):
    """zero grads -> forward/backward with `loss_fn` -> optimizer (clip) -> scheduler.

    logprob_chunk_tokens: see `run_forward_backward` (memory.logprob_chunk_tokens).
    Returns (ForwardOutput on the last stage else None, {"grad_norm", "lr"}).
    """
    for chunk in model_chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    out = run_forward_backward(model_chunks, batch, groups, micro_batch_size=micro_batch_size,
                               vocab_size=vocab_size, loss_fn=loss_fn,
                               logprob_chunk_tokens=logprob_chunk_tokens)
    update_ok, grad_norm, _ = optimizer.step()
    if not update_ok:
        raise FloatingPointError("optimizer step skipped: non-finite gradients")
    scheduler.step(increment=1)
    return out, {"grad_norm": float(grad_norm) if grad_norm is not None else 0.0,
                 "lr": float(optimizer.param_groups[0]["lr"])}


def sft_loss_fn(counts: GlobalCounts):
    """Supervised warm-up: -(sum of response-token logprobs) / global response tokens."""

    def fn(logprobs, entropy, h, micro_batch: SequenceBatch):
        mask = micro_batch.response_mask.to(logprobs.dtype)
        loss = -(logprobs * mask).sum() / max(counts.num_tokens, 1.0)
        return loss, {"num_tokens": mask.sum().detach(), "loss": loss.detach()}

    return fn


def grpo_train_step(model_chunks: list[torch.nn.Module], optimizer, scheduler,
                    batch: SequenceBatch, grpo: GRPOConfig, groups: ParallelGroups,
                    *, vocab_size: int, outputs: list | None = None,
                    logprob_chunk_tokens: int = 2048) -> dict[str, float]:
    """One policy update on this rank's share of the batch.

    batch.extras: "advantages" [B], "old_logprobs" [B, S] (absent: on-policy, see
    `grpo_loss_fn`), optional "ref_logprobs" [B, S].
    Returns metrics (train/loss, train/clip_frac, train/entropy, train/kl when the
    reference is given: token means over the global batch; train/grad_norm, train/lr)
    on last-stage ranks, and {"train/grad_norm", "train/lr"} elsewhere. outputs: when
    given, the pass's ForwardOutput (last stage; None elsewhere) is appended: the
    policy's log-probs, entropy and h BEFORE this update. logprob_chunk_tokens: see
    `run_forward_backward` (memory.logprob_chunk_tokens).
    """
    counts = global_counts(batch.response_mask, groups)
    out, step = optimizer_step(model_chunks, optimizer, scheduler, batch, groups,
                               loss_fn=grpo_loss_fn(grpo, counts),
                               micro_batch_size=grpo.micro_batch_size, vocab_size=vocab_size,
                               logprob_chunk_tokens=logprob_chunk_tokens)
    metrics = {f"train/{k}": v for k, v in step.items()}
    if outputs is not None:
        outputs.append(out)
    if out is not None:
        metrics.update(reduce_metrics(out.metrics, groups, "train"))
    return metrics
