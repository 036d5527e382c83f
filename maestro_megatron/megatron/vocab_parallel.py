"""Log-probabilities and entropy over a tensor-parallel (vocab-sharded) output layer.

Each TP rank holds logits for a contiguous slice of the padded vocabulary,
``[vocab_start, vocab_start + V/TP)``. The softmax normaliser and the entropy need
sums over the whole vocabulary; they are built from three all-reduces over the TP
group of ``[B, T]``-sized tensors (max, sum exp, sum p * logit, plus the target logit),
so the full ``[B, T, V]`` logits are never gathered.

With ``z = logit - max``, ``S = sum_v exp(z_v)`` (all shards):

    logprob(y) = z_y - log S
    entropy    = log S - sum_v p_v z_v,        p_v = exp(z_v) / S

Gradient of ``logprob(y)`` w.r.t. this shard's logits: ``onehot(y) - p`` restricted
to the shard (no communication needed in backward). Entropy carries no gradient: it is
a metric and a reward input.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _all_reduce(tensor: torch.Tensor, op, group) -> torch.Tensor:
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(tensor, op=op, group=group)
    return tensor


class _VocabParallelLogprobEntropy(torch.autograd.Function):
    """Forward: (logprobs [B, T], entropy [B, T]) from a logits shard [B, T, V/TP]."""

    @staticmethod
    def forward(ctx, logits_shard, target_ids, tp_group, vocab_start, vocab_size):
        logits = logits_shard.float()
        shard_size = logits.size(-1)
        if vocab_start + shard_size > vocab_size:  # this shard holds padding rows
            vocab_ids = torch.arange(vocab_start, vocab_start + shard_size, device=logits.device)
            logits = logits.masked_fill(vocab_ids >= vocab_size, float("-inf"))

        # A shard made only of padding has max -inf; the MAX all-reduce fixes that.
        logits_max = _all_reduce(logits.amax(dim=-1), dist.ReduceOp.MAX, tp_group)
        shifted = logits - logits_max.unsqueeze(-1)  # [B, T, V/TP]
        exp = shifted.exp()
        sum_exp = _all_reduce(exp.sum(dim=-1), dist.ReduceOp.SUM, tp_group)  # [B, T]
        probs = exp.div_(sum_exp.unsqueeze(-1))  # in place: exp is not needed any more

        local = target_ids - vocab_start
        in_shard = (local >= 0) & (local < shard_size)  # [B, T]
        local = local.clamp(0, shard_size - 1)
        target_logit = shifted.gather(-1, local.unsqueeze(-1)).squeeze(-1)
        target_logit = _all_reduce(
            torch.where(in_shard, target_logit, torch.zeros_like(target_logit)),
            dist.ReduceOp.SUM, tp_group,
        )
        log_sum_exp = sum_exp.log()
        logprobs = target_logit - log_sum_exp

        # p * z is 0 * -inf = nan on padded entries; they contribute nothing.
        p_logit = torch.where(probs > 0, probs * shifted, torch.zeros_like(probs))
        sum_p_logit = _all_reduce(p_logit.sum(dim=-1), dist.ReduceOp.SUM, tp_group)
        entropy = log_sum_exp - sum_p_logit

        ctx.save_for_backward(probs, local, in_shard)
        ctx.input_dtype = logits_shard.dtype
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        probs, local, in_shard = ctx.saved_tensors
        # In place on the saved softmax (as megatron's cross entropy does): a second
        # backward through this node (retain_graph) is not supported.
        # d logprob / d logit_v = 1[v == y] - p_v (on this shard).
        grad = probs.neg_()
        grad.scatter_add_(-1, local.unsqueeze(-1), in_shard.unsqueeze(-1).to(grad.dtype))
        grad.mul_(grad_logprobs.unsqueeze(-1))
        return grad.to(ctx.input_dtype), None, None, None, None


def vocab_parallel_logprobs_and_entropy(
    logits_shard: torch.Tensor,
    target_ids: torch.Tensor,
    tp_group: dist.ProcessGroup | None,
    *,
    vocab_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(target) and entropy of the full-vocabulary softmax.

    Args:
        logits_shard: [B, T, V/TP] this rank's contiguous vocab slice (any float dtype;
            the math runs in fp32).
        target_ids: [B, T] long, global (unpadded) vocabulary ids.
        tp_group: tensor-parallel group the vocabulary is split over (None: no split).
        vocab_size: real vocabulary size; ids >= vocab_size are padding and get
            probability 0. None: no padding.

    Returns:
        logprobs: [B, T] fp32, differentiable w.r.t. ``logits_shard``.
        entropy: [B, T] fp32, no gradient.
    """
    tp_rank = dist.get_rank(group=tp_group) if tp_group is not None else 0
    shard_size = logits_shard.size(-1)
    vocab_start = tp_rank * shard_size
    total = vocab_size if vocab_size is not None else shard_size * (
        dist.get_world_size(tp_group) if tp_group is not None else 1
    )
    return _VocabParallelLogprobEntropy.apply(
        logits_shard, target_ids, tp_group, vocab_start, total
    )
