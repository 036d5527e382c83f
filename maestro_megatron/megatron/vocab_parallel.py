"""Log-probabilities and entropy over a tensor-parallel (vocab-sharded) output layer.

Each TP rank holds logits for a contiguous slice of the padded vocabulary,
``[vocab_start, vocab_start + V/TP)``; the last ``R <= V/TP`` real columns end where
padding begins (a shard may be all padding: ``R = 0``). The full ``[B, T, V]`` logits
are never gathered, and no fp32 ``[B, T, V/TP]`` copy is kept: the fp32 work runs over
blocks of at most ``chunk_tokens`` tokens, and only per-token ``[B, T]`` results live
beyond one block.

Forward, per token, with ``x`` this shard's real logits (fp32), ``m`` their max on this
shard, ``s = sum_v exp(x_v - m)``, ``a = sum_v exp(x_v - m) (x_v - m)`` (one pass over
the logits), then over the TP group (two all-reduces of ``[B, T]``-sized tensors):

    M = max_ranks m                                    (all-reduce MAX)
    S = sum_ranks exp(m - M) s                         (all-reduce SUM, stacked with
    A = sum_ranks exp(m - M) (a + (m - M) s)            A and the target logit x_y)
    logprob(y) = (x_y - M) - log S
    entropy    = log S - A / S        (= -sum_v p_v log p_v,  p_v = exp(x_v - M) / S)

Backward recomputes each block's softmax from the saved input logits, ``M`` and ``S``:
d logprob(y) / d x_v = 1[v == y] - p_v on this shard (no communication), 0 on padding
columns. Entropy carries no gradient: it is a metric and a reward input.

Saved for backward: the input logits (their own dtype, no copy), ``M``, ``S`` [B, T]
fp32 and the target's local column [B, T].
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist


def _all_reduce(tensor: torch.Tensor, op, group) -> torch.Tensor:
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(tensor, op=op, group=group)
    return tensor


def token_blocks(batch: int, length: int, chunk_tokens: int) -> Iterator[tuple[slice, slice]]:
    """(rows, positions) slices covering a [batch, length] grid, at most ``chunk_tokens``
    tokens each (0: one block). Whole rows are grouped while a row fits in a block;
    longer rows are cut along positions. Slicing a [B, T, V] tensor with them gives
    views (no copy), also of a non-contiguous one such as ``logits[:, :-1]``."""
    if chunk_tokens <= 0 or batch * length <= chunk_tokens:
        yield slice(None), slice(None)
    elif length <= chunk_tokens:
        rows = chunk_tokens // length
        for b in range(0, batch, rows):
            yield slice(b, b + rows), slice(None)
    else:
        for b in range(batch):
            for t in range(0, length, chunk_tokens):
                yield slice(b, b + 1), slice(t, t + chunk_tokens)


def _local_stats(logits: torch.Tensor, num_real: int, chunk_tokens: int):
    """logits [B, T, V/TP] -> this shard's (m, s, a), each [B, T] fp32 (see module)."""
    batch, length = logits.shape[:2]
    m = torch.full((batch, length), float("-inf"), device=logits.device)
    s, a = torch.zeros_like(m), torch.zeros_like(m)
    if num_real == 0:  # all padding: no mass here; the MAX over ranks sets M
        return m, s, a
    for rows, cols in token_blocks(batch, length, chunk_tokens):
        m[rows, cols], s[rows, cols], a[rows, cols] = _block_stats(
            logits[rows, cols, :num_real])
    return m, s, a


def _block_stats(logits: torch.Tensor):
    """One block [b, t, R] -> (max, sum exp(x - max), sum exp(x - max) (x - max)), [b, t];
    its fp32 temporaries die on return, before the next block's."""
    x = logits.float()
    block_max = x.amax(dim=-1)
    z = x - block_max.unsqueeze(-1)
    e = z.exp()
    return block_max, e.sum(dim=-1), e.mul_(z).sum(dim=-1)


class _VocabParallelLogprobEntropy(torch.autograd.Function):
    """Forward: (logprobs [B, T], entropy [B, T]) from a logits shard [B, T, V/TP]."""

    @staticmethod
    def forward(ctx, logits_shard, target_ids, tp_group, vocab_start, vocab_size,
                chunk_tokens):
        shard_size = logits_shard.size(-1)
        num_real = max(0, min(shard_size, vocab_size - vocab_start))
        m, s, a = _local_stats(logits_shard, num_real, chunk_tokens)

        local = target_ids - vocab_start
        in_shard = (local >= 0) & (local < num_real)  # [B, T]
        local = torch.where(in_shard, local, torch.zeros_like(local))
        target_logit = logits_shard.gather(-1, local.unsqueeze(-1)).squeeze(-1).float()

        logits_max = _all_reduce(m.clone(), dist.ReduceOp.MAX, tp_group)  # M [B, T]
        # exp(m - M) is 0 on an all-padding shard (m = -inf), where s = a = 0 as well.
        scale = (m - logits_max).exp()
        shift = torch.where(s > 0, (m - logits_max) * s, torch.zeros_like(s))
        sums = torch.stack([scale * s, scale * (a + shift),
                            torch.where(in_shard, target_logit, torch.zeros_like(s))])
        sum_exp, sum_exp_z, target_logit = _all_reduce(sums, dist.ReduceOp.SUM, tp_group)

        log_sum_exp = sum_exp.log()
        logprobs = (target_logit - logits_max) - log_sum_exp
        entropy = log_sum_exp - sum_exp_z / sum_exp

        ctx.save_for_backward(logits_shard, logits_max, sum_exp, local, in_shard)
        ctx.num_real, ctx.chunk_tokens = num_real, chunk_tokens
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        logits, logits_max, sum_exp, local, in_shard = ctx.saved_tensors
        num_real = ctx.num_real
        grad = torch.empty_like(logits)  # [B, T, V/TP], the input's dtype
        grad[..., num_real:] = 0  # padding columns: probability 0, no gradient
        if num_real > 0:
            onehot = in_shard.to(torch.float32).unsqueeze(-1)
            for rows, cols in token_blocks(*logits.shape[:2], ctx.chunk_tokens):
                # d logprob / d logit_v = 1[v == y] - p_v, p recomputed for this block.
                z = logits[rows, cols, :num_real].float() - logits_max[rows, cols, None]
                block = z.exp_().div_(sum_exp[rows, cols, None]).neg_()
                block.scatter_add_(-1, local[rows, cols, None], onehot[rows, cols])
                block.mul_(grad_logprobs[rows, cols, None])
                grad[rows, cols, :num_real] = block
        return grad, None, None, None, None, None


def vocab_parallel_logprobs_and_entropy(
    logits_shard: torch.Tensor,
    target_ids: torch.Tensor,
    tp_group: dist.ProcessGroup | None,
    *,
    vocab_size: int | None = None,
    chunk_tokens: int = 2048,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(target) and entropy of the full-vocabulary softmax.

    Args:
        logits_shard: [B, T, V/TP] this rank's contiguous vocab slice (any float dtype,
            any strides; the math runs in fp32, one block of tokens at a time).
        target_ids: [B, T] long, global (unpadded) vocabulary ids (< vocab_size).
        tp_group: tensor-parallel group the vocabulary is split over (None: no split).
        vocab_size: real vocabulary size; ids >= vocab_size are padding and get
            probability 0. None: no padding.
        chunk_tokens: tokens per fp32 block (``memory.logprob_chunk_tokens``; 0: all
            B * T at once). Only the peak memory depends on it, not the results.

    Returns:
        logprobs: [B, T] fp32, differentiable w.r.t. ``logits_shard`` (whose gradient
            has the input's dtype).
        entropy: [B, T] fp32, no gradient.
    """
    tp_rank = dist.get_rank(group=tp_group) if tp_group is not None else 0
    shard_size = logits_shard.size(-1)
    vocab_start = tp_rank * shard_size
    total = vocab_size if vocab_size is not None else shard_size * (
        dist.get_world_size(tp_group) if tp_group is not None else 1
    )
    return _VocabParallelLogprobEntropy.apply(
        logits_shard, target_ids, tp_group, vocab_start, total, chunk_tokens
    )
