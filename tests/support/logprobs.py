"""The largest gap between a Hugging Face model's token log-probs and the trainer's."""

from __future__ import annotations

from pathlib import Path

import torch


def max_logprob_gap(hf_dir: Path, trainer: dict) -> float:
    """trainer: {"tokens" [B, S], "mask" [B, S], "logprobs" [B, S]} (position t scores
    token t, as megatron's forward_logprobs). Loads `hf_dir` in transformers (fp32) and
    returns max |log p_hf(token t) - trainer logprob| over the masked positions."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    tokens, mask = trainer["tokens"], trainer["mask"].bool()
    with torch.no_grad():
        logp = torch.log_softmax(model(tokens).logits.float(), dim=-1)
    hf = torch.zeros_like(trainer["logprobs"])
    hf[:, 1:] = logp[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)
    assert mask.sum() > 20, "too few scored tokens for a meaningful comparison"
    return (hf[mask] - trainer["logprobs"][mask]).abs().max().item()
