"""The inputs reward components read: one record of tensors and texts per batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


class PreferenceScorer(Protocol):
    """Anything that scores responses: a reward model, an embedding similarity, ..."""

    def score(self, prompts: list[str], responses: list[str],
              references: list[str | None]) -> torch.Tensor:
        """-> [B] float scores."""


@dataclass
class RewardBatch:
    """B responses. Texts are lists of length B; tensors are [B] or [B, T].

    entropy / response_mask: the policy's per-token entropy over response tokens.
    proxy_answer_logprobs / proxy_answer_mask: [B, Ta] log-probs of the reference-answer
    tokens given prompt + response reasoning, under the frozen proxy model (r_ppl).
    proxy_response_logprobs: [B, T] the response's own log-probs under the proxy, the
    fallback for samples whose `references` entry is None.
    """

    prompts: list[str]
    responses: list[str]
    references: list[str | None]
    response_lengths: torch.Tensor
    vocab_size: int = 0
    entropy: torch.Tensor | None = None
    response_mask: torch.Tensor | None = None
    proxy_answer_logprobs: torch.Tensor | None = None
    proxy_answer_mask: torch.Tensor | None = None
    proxy_response_logprobs: torch.Tensor | None = None
    proxy_answer_skipped: torch.Tensor | None = None
    """[B] bool: the reference could not be scored whole (r_ppl 0)."""
    reasoning_tokens: torch.Tensor | None = None
    """[B] tokens of each response's <think> span (NOVER's |t|)."""
    policy_logprobs: torch.Tensor | None = None
    """[B, T] the rollout policy's log-probs of the sampled response tokens."""
    group_size: int = 1
    """G: rows [i*G, (i+1)*G) are one prompt's responses."""
    pref_scorer: PreferenceScorer | Any = None

    def __len__(self) -> int:
        return len(self.responses)

    def require(self, *names: str) -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(f"reward inputs missing: {', '.join(missing)}")
