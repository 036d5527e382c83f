"""Policy/reference forward (and backward) over prompt+response sequences.

One code path for every layout: megatron's ``get_forward_backward_func()`` picks the
no-pipelining, 1F1B or interleaved (VPP) schedule. On the last pipeline stage each
micro-batch yields, aligned with ``tokens`` ([B, S], position t scores token t):

- ``logprobs[b, t] = log p(tokens[b, t] | tokens[b, :t])`` (vocab-parallel, fp32),
- ``entropy[b, t]`` of that next-token distribution (no grad),
- ``h[b] = final_layernorm(x)[t_last(b), b, :]`` with ``t_last`` the last position where
  ``response_mask`` is 1 (the Conductor's input, DESIGN.md section 2; detached),

all zero where ``response_mask`` is 0 (and always at t = 0, which has no prediction).

Sequences are right-padded (row = prompt, response, padding): causal attention then
never lets a real token see padding, so no attention mask is needed (pass one,
``[B, 1, S, S]`` bool with True = masked, for other layouts).

Gradient scaling in training: ``loss_fn`` returns this micro-batch's share of the
*global* loss (e.g. ``policy_loss(..., num_global_tokens=...)``: sum over the
micro-batch divided by a global count). Megatron divides each micro-batch loss by
``num_microbatches`` and DDP averages gradients over data-parallel ranks; both are
undone here, so the synchronised gradient is exactly d(global loss)/d(theta).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.distributed as dist

from maestro_megatron.data.packing import SequenceBatch
from maestro_megatron.megatron.model import unwrap_model
from maestro_megatron.megatron.parallel import ParallelGroups
from maestro_megatron.megatron.vocab_parallel import vocab_parallel_logprobs_and_entropy


@dataclass
class ForwardOutput:
    """Last-stage results, concatenated over micro-batches."""

    logprobs: torch.Tensor
    """[B, S] fp32 (detached), 0 off the response mask."""
    entropy: torch.Tensor
    """[B, S] fp32, 0 off the response mask."""
    h: torch.Tensor
    """[B, d_model] final-layernorm output at each row's last response token (detached)."""
    metrics: list[dict] = field(default_factory=list)
    """Training: the ``loss_fn`` metrics of each micro-batch, in order."""


LossFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, SequenceBatch], tuple[torch.Tensor, dict]
]
"""loss_fn(logprobs [b, S] (grad), entropy [b, S], h [b, H], micro_batch) -> (loss, metrics)."""


def last_token_index(response_mask: torch.Tensor) -> torch.Tensor:
    """[B, S] mask -> [B] index of the last 1 (0 for an empty row)."""
    positions = torch.arange(response_mask.size(1), device=response_mask.device)
    return (positions * (response_mask > 0)).amax(dim=1)


def sequence_outputs(
    logits_shard: torch.Tensor,
    final_hidden: torch.Tensor,
    micro_batch: SequenceBatch,
    tp_group: dist.ProcessGroup | None,
    vocab_size: int,
    chunk_tokens: int = 2048,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits [b, S, V/TP] and final-layernorm output [S, b, H] -> logprobs, entropy, h.

    ``chunk_tokens``: the vocabulary math's fp32 block (`vocab_parallel`; 0: whole).
    Returns logprobs [b, S] (differentiable), entropy [b, S], h [b, H] (detached).
    """
    tokens, mask = micro_batch.tokens, micro_batch.response_mask
    logprobs, entropy = vocab_parallel_logprobs_and_entropy(
        logits_shard[:, :-1], tokens[:, 1:], tp_group, vocab_size=vocab_size,
        chunk_tokens=chunk_tokens,
    )
    # Shift right by one so position t holds the score of tokens[:, t].
    logprobs = torch.nn.functional.pad(logprobs, (1, 0))
    entropy = torch.nn.functional.pad(entropy, (1, 0))
    mask_f = mask.to(logprobs.dtype)
    rows = torch.arange(tokens.size(0), device=tokens.device)
    h = final_hidden.detach()[last_token_index(mask), rows].float()
    return logprobs * mask_f, entropy * mask_f, h


class _FinalNormCapture:
    """Forward hook on ``decoder.final_layernorm`` keeping its latest output [S, b, H]."""

    def __init__(self, module: torch.nn.Module, sequence_parallel: bool, tp_group) -> None:
        self.output: torch.Tensor | None = None
        self._sp, self._tp_group = sequence_parallel, tp_group
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        out = output[0] if isinstance(output, tuple) else output
        out = out.detach()
        if self._sp and dist.get_world_size(self._tp_group) > 1:
            # Sequence parallel: each TP rank holds S/TP rows; h needs the whole sequence.
            full = out.new_empty((out.size(0) * dist.get_world_size(self._tp_group),
                                  *out.shape[1:]))
            dist.all_gather_into_tensor(full, out.contiguous(), group=self._tp_group)
            out = full
        self.output = out

    def remove(self) -> None:
        self._handle.remove()


def _final_norm(model_chunks: list[torch.nn.Module]) -> torch.nn.Module | None:
    for chunk in model_chunks:
        model = unwrap_model(chunk)
        if getattr(model, "post_process", False):
            return model.decoder.final_layernorm
    return None


def _forward_step(data_iterator, model, *, capture, groups, vocab_size, loss_fn, loss_scale,
                  chunk_tokens):
    micro_batch: SequenceBatch = next(data_iterator)
    position_ids = micro_batch.position_ids
    if position_ids is None:
        seq = micro_batch.tokens.size(1)
        position_ids = torch.arange(seq, device=micro_batch.tokens.device).expand_as(
            micro_batch.tokens
        )
    output = model(micro_batch.tokens, position_ids, micro_batch.attention_mask)
    final_hidden = capture.output if capture is not None else None
    return output, partial(
        _last_stage_loss, micro_batch=micro_batch, final_hidden=final_hidden, groups=groups,
        vocab_size=vocab_size, loss_fn=loss_fn, loss_scale=loss_scale, chunk_tokens=chunk_tokens,
    )


def _last_stage_loss(logits, *, micro_batch, final_hidden, groups, vocab_size, loss_fn,
                     loss_scale, chunk_tokens):
    logprobs, entropy, h = sequence_outputs(logits, final_hidden, micro_batch, groups.tp,
                                            vocab_size, chunk_tokens)
    if loss_fn is None:
        loss, metrics = logprobs.new_zeros(()), {}
    else:
        loss, metrics = loss_fn(logprobs, entropy, h, micro_batch)
        loss = loss * loss_scale
    return loss, {"logprobs": logprobs.detach(), "entropy": entropy, "h": h,
                  "metrics": metrics}


def run_forward_backward(
    model_chunks: list[torch.nn.Module],
    batch: SequenceBatch,
    groups: ParallelGroups,
    *,
    micro_batch_size: int,
    vocab_size: int,
    loss_fn: LossFn | None = None,
    logprob_chunk_tokens: int = 2048,
) -> ForwardOutput | None:
    """Forward (``loss_fn=None``: no grad) or forward+backward over ``batch``.

    Args:
        model_chunks: this stage's chunks from ``build_model`` (DDP-wrapped to train).
        batch: B sequences of length S; B must be a multiple of ``micro_batch_size``.
        groups: this rank's process groups.
        vocab_size: real vocabulary size (padding rows are excluded from the softmax).
        loss_fn: training loss of one micro-batch (see module docstring for scaling).
        logprob_chunk_tokens: tokens per fp32 block of the log-prob/entropy math
            (``memory.logprob_chunk_tokens``; 0: the whole micro-batch at once).

    Returns:
        ForwardOutput on the last pipeline stage, None elsewhere. Training leaves the
        gradients in the DDP grad buffers, already synchronised when the model config's
        ``finalize_model_grads_func`` is set (``build_model(wrap_ddp=True)`` sets it).
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    if batch.batch_size % micro_batch_size:
        raise ValueError(f"batch size {batch.batch_size} is not a multiple of "
                         f"micro_batch_size={micro_batch_size}")
    model_device = next(unwrap_model(model_chunks[0]).parameters()).device
    if batch.tokens.device != model_device:
        raise ValueError(f"batch on {batch.tokens.device}, model on {model_device}: a step "
                         "moves its batch once to the model's device (SequenceBatch.to)")
    num_microbatches = batch.batch_size // micro_batch_size
    micro_batches = [batch.slice(i * micro_batch_size, (i + 1) * micro_batch_size)
                     for i in range(num_microbatches)]
    config = unwrap_model(model_chunks[0]).config
    norm = _final_norm(model_chunks)
    capture = None if norm is None else _FinalNormCapture(norm, config.sequence_parallel,
                                                          groups.tp)
    forward_only = loss_fn is None
    step = partial(_forward_step, capture=capture, groups=groups, vocab_size=vocab_size,
                   loss_fn=loss_fn, loss_scale=num_microbatches * groups.dp_size,
                   chunk_tokens=logprob_chunk_tokens)
    # Interleaved schedules read one iterator per chunk; each chunk sees every micro-batch.
    iterators = [iter(micro_batches) for _ in model_chunks]
    try:
        with torch.no_grad() if forward_only else torch.enable_grad():
            results = get_forward_backward_func()(
                forward_step_func=step,
                data_iterator=iterators if len(iterators) > 1 else iterators[0],
                model=model_chunks if len(model_chunks) > 1 else model_chunks[0],
                num_microbatches=num_microbatches,
                seq_length=batch.tokens.size(1),
                micro_batch_size=micro_batch_size,
                forward_only=forward_only,
            )
    finally:
        if capture is not None:
            capture.remove()
    if not groups.is_last_stage:
        return None
    return ForwardOutput(
        logprobs=torch.cat([r["logprobs"] for r in results]),
        entropy=torch.cat([r["entropy"] for r in results]),
        h=torch.cat([r["h"] for r in results]),
        metrics=[r["metrics"] for r in results],
    )


def forward_logprobs(
    model_chunks: list[torch.nn.Module],
    batch: SequenceBatch,
    groups: ParallelGroups,
    *,
    micro_batch_size: int,
    vocab_size: int,
    logprob_chunk_tokens: int = 2048,
) -> ForwardOutput | None:
    """Forward only (reference model, old logprobs, scoring): see :func:`run_forward_backward`."""
    return run_forward_backward(model_chunks, batch, groups, micro_batch_size=micro_batch_size,
                                vocab_size=vocab_size, logprob_chunk_tokens=logprob_chunk_tokens)
