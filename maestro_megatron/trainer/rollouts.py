"""Rollouts between the engine and the trainer: sample on the leader, share, pack.

A `RolloutBatch` holds N prompts and their N*G responses in group order (response row
r belongs to prompt r // G). The leader (global rank 0) drives the engine; every rank
gets the same batch by broadcast and takes its data-parallel rows, whole groups only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

from maestro_megatron.data.packing import SequenceBatch, pack_sequences


@dataclass
class RolloutBatch:
    """N prompts x G responses. Lists of length N (prompts) or N*G (responses)."""

    prompts: list[str]
    references: list[str | None]
    tasks: list[str]
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    response_texts: list[str]
    truncated: list[bool]
    group_size: int
    rollout_logprobs: list[list[float]]
    """[N*G][T_i] the engine's sampler logprobs of each response token."""

    @property
    def num_responses(self) -> int:
        return len(self.response_ids)

    def per_response(self, values: list) -> list:
        """Repeat a per-prompt list G times: [N] -> [N*G]."""
        return [v for v in values for _ in range(self.group_size)]

    def groups_slice(self, first: int, count: int) -> RolloutBatch:
        """Prompts [first, first + count) and their responses."""
        g = self.group_size
        rs = slice(first * g, (first + count) * g)
        ps = slice(first, first + count)
        return RolloutBatch(self.prompts[ps], self.references[ps], self.tasks[ps],
                            self.prompt_ids[ps], self.response_ids[rs],
                            self.response_texts[rs], self.truncated[rs], g,
                            self.rollout_logprobs[rs])


def encode_prompt(tokenizer, prompt: str, prompt_format: str) -> list[int]:
    """plain: tokens of `prompt + "\\n"`; chat: the tokenizer's chat template."""
    if prompt_format == "chat":
        return list(tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                  add_generation_prompt=True, tokenize=True))
    return list(tokenizer(prompt + "\n", add_special_tokens=True)["input_ids"])


def collect_rollouts(engine, records, tokenizer, sampling, group_size: int,
                     prompt_format: str) -> RolloutBatch:
    """Leader only: G samples per prompt from the engine (prompts passed as token ids)."""
    prompt_ids = [encode_prompt(tokenizer, r.prompt, prompt_format) for r in records]
    groups = engine.generate(prompt_ids, group_size, sampling)
    responses = [resp for g in groups for resp in g.responses]
    return RolloutBatch(
        prompts=[r.prompt for r in records], references=[r.reference for r in records],
        tasks=[r.task for r in records], prompt_ids=prompt_ids,
        response_ids=[list(r.token_ids) for r in responses],
        response_texts=[r.text for r in responses],
        truncated=[r.truncated for r in responses], group_size=group_size,
        rollout_logprobs=[r.rollout_logprobs.tolist() for r in responses])


def broadcast_rollouts(batch: RolloutBatch | None, src: int = 0) -> RolloutBatch:
    """Every rank gets the leader's batch (a pickled object broadcast over the world)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return batch
    box = [batch]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def response_sequences(batch: RolloutBatch, pad_id: int, seq_length: int) -> SequenceBatch:
    """The policy's view: prompt + sampled response, mask on the response tokens."""
    return pack_sequences(batch.per_response(batch.prompt_ids), batch.response_ids, pad_id,
                          seq_length)


def answer_sequences(batch: RolloutBatch, tokenizer, pad_id: int, seq_length: int,
                     answer_pattern: str) -> tuple[SequenceBatch, torch.Tensor]:
    """r_ppl's view: prompt + response reasoning + "<answer>" + REFERENCE + "</answer>",
    mask on the reference tokens (responses without a reference get an empty mask).

    Returns (SequenceBatch [B, S'], has_reference [B] bool).
    """
    completions, mask_from = [], []
    for text, ref in zip(batch.response_texts, batch.per_response(batch.references)):
        reasoning = re.sub(answer_pattern, "", text, flags=re.DOTALL).rstrip()
        head = tokenizer(reasoning + "<answer>", add_special_tokens=False)["input_ids"]
        answer = tokenizer(ref, add_special_tokens=False)["input_ids"] if ref else []
        tail = tokenizer("</answer>", add_special_tokens=False)["input_ids"] if ref else []
        completions.append(head + answer + tail)
        mask_from.append((len(head), len(head) + len(answer)))
    prompts = batch.per_response(batch.prompt_ids)
    seqs = pack_sequences(prompts, completions, pad_id, seq_length)
    mask = torch.zeros_like(seqs.response_mask)
    for i, (p, (a, b)) in enumerate(zip(prompts, mask_from)):
        mask[i, min(len(p) + a, seq_length):min(len(p) + b, seq_length)] = 1.0
    has_ref = torch.tensor([r is not None and r != "" for r in
                            batch.per_response(batch.references)])
    return SequenceBatch(tokens=seqs.tokens, response_mask=mask), has_ref


def engine_trainer_gap(batch: RolloutBatch, trainer_logprobs: torch.Tensor) -> torch.Tensor:
    """|engine sampler logprob - trainer logprob| of every scored response token, flat.

    trainer_logprobs: [B, S] aligned with `response_sequences(batch, ...)` (position t
    scores token t). With temperature 1 and top-p 1 the two are the same distribution,
    so after a correct refit the gap is float round-off.
    """
    gaps = []
    seq = trainer_logprobs.shape[1]
    for i, (prompt, lps) in enumerate(zip(batch.per_response(batch.prompt_ids),
                                          batch.rollout_logprobs)):
        count = max(0, min(len(lps), seq - len(prompt)))
        if count:
            engine = torch.tensor(lps[:count], dtype=torch.float32)
            gaps.append((trainer_logprobs[i, len(prompt):len(prompt) + count].float().cpu()
                         - engine).abs())
    return torch.cat(gaps) if gaps else torch.zeros(0)
