"""Sequence packing: prompt + completion token lists -> right-padded [B, S] batches.

Torch only. Rows are prompt, completion, padding (right padding: with causal attention
a real token never sees padding, so no attention mask is needed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from maestro_megatron.config.schema import ParallelConfig, PrecisionConfig


@dataclass(frozen=True)
class SequenceBatch:
    """A padded batch of prompt+response sequences (one data-parallel rank's share)."""

    tokens: torch.Tensor
    """[B, S] long token ids."""
    response_mask: torch.Tensor
    """[B, S] 1 on the tokens to score (response tokens), 0 on prompt and padding."""
    position_ids: torch.Tensor | None = None
    """[B, S] long; None: 0..S-1 on every row."""
    attention_mask: torch.Tensor | None = None
    """[B, 1, S, S] bool, True = masked; None: causal."""
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per-sequence tensors [B, ...] (advantages, old logprobs, ...) split with the batch."""

    @property
    def batch_size(self) -> int:
        return self.tokens.size(0)

    def to(self, device: torch.device | str) -> SequenceBatch:
        """Every tensor of the batch on `device` (the model's: where a step's batch moves,
        once, before its forwards)."""
        def move(t):
            return None if t is None else t.to(device)

        return replace(self, tokens=move(self.tokens), response_mask=move(self.response_mask),
                       position_ids=move(self.position_ids),
                       attention_mask=move(self.attention_mask),
                       extras={k: move(v) for k, v in self.extras.items()})

    def rows(self, index: torch.Tensor) -> SequenceBatch:
        """The rows `index` ([b] long) of every field, in that order."""
        def pick(t):
            return None if t is None else t[index.to(t.device)]

        return replace(self, tokens=pick(self.tokens), response_mask=pick(self.response_mask),
                       position_ids=pick(self.position_ids),
                       attention_mask=pick(self.attention_mask),
                       extras={k: pick(v) for k, v in self.extras.items()})

    def slice(self, start: int, stop: int) -> SequenceBatch:
        """Rows [start, stop) of every field."""
        def cut(t):
            return None if t is None else t[start:stop]

        return replace(
            self,
            tokens=self.tokens[start:stop],
            response_mask=self.response_mask[start:stop],
            position_ids=cut(self.position_ids),
            attention_mask=cut(self.attention_mask),
            extras={k: v[start:stop] for k, v in self.extras.items()},
        )


def sequence_pad_multiple(parallel: ParallelConfig, precision: PrecisionConfig) -> int:
    """The multiple a packed batch's width S must be for this layout.

    Sequence parallelism splits S over TP ranks: a multiple of TP. FP8 (Transformer
    Engine) needs every GEMM's token count divisible by 8 and pads to 64 by convention:
    lcm(64, 8 TP) under sequence parallelism (S / TP tokens per rank), 64 without (for
    TP <= 8 both are 64). Neither: 1.
    """
    tp = parallel.tensor_parallel if parallel.sequence_parallel else 1
    if precision.fp8 is None:
        return tp
    return math.lcm(64, 8 * tp)


def pack_sequences(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int,
                   seq_length: int, pad_multiple: int = 1) -> SequenceBatch:
    """Right-padded rows prompt + completion, cut at seq_length; mask on the completion.

    -> SequenceBatch(tokens [B, S], response_mask [B, S]), S = the longest row rounded up
    to a multiple of `pad_multiple` (`sequence_pad_multiple`); S may then exceed
    seq_length by padding only (pad_id tokens, mask 0).
    """
    if pad_multiple < 1:
        raise ValueError(f"pad_multiple must be >= 1, got {pad_multiple}")
    rows = [(p + c)[:seq_length] for p, c in zip(prompt_ids, completion_ids)]
    width = -(-max(len(r) for r in rows) // pad_multiple) * pad_multiple
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width)
    for i, (row, prompt) in enumerate(zip(rows, prompt_ids)):
        tokens[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, min(len(prompt), len(row)):len(row)] = 1.0
    return SequenceBatch(tokens=tokens, response_mask=mask)


def minibatch_rows(num_prompts: int, group_size: int, num_minibatches: int,
                   first_prompt: int = 0) -> list[torch.Tensor]:
    """Row indices ([num_prompts * G / M] long each) of the M PPO mini-batches of one
    data-parallel rank holding global prompts [first_prompt, first_prompt + num_prompts).

    Global prompt p (with its G responses) goes to mini-batch p % M, so a mini-batch is
    the same set of groups whatever the data-parallel split (needs num_prompts % M == 0
    and first_prompt % M == 0, i.e. M divides every rank's prompt count).
    """
    if num_prompts % num_minibatches or first_prompt % num_minibatches:
        raise ValueError(f"{num_minibatches} mini-batches do not divide a rank's "
                         f"{num_prompts} prompts")
    parts = []
    for m in range(num_minibatches):
        prompts = torch.arange(m, num_prompts, num_minibatches)
        parts.append((prompts[:, None] * group_size + torch.arange(group_size)).flatten())
    return parts
