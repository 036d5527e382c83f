"""Rollouts between the engine and the trainer: sample on an engine's host, share, pack.

A `RolloutBatch` holds N prompts and their N*G responses in group order (response row
r belongs to prompt r // G). With `rollout.placement: leader` global rank 0 drives the
one engine and every rank gets the whole batch and takes its data-parallel groups;
with `replica` each data-parallel replica's first rank drives its own engine on its
own groups and shares them only within the replica (TP x PP).
"""

from __future__ import annotations

import bisect
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


def encode_prompt(tokenizer, prompt: str, data) -> list[int]:
    """Token ids of a prompt as the policy sees it; data: DataConfig.

    plain: `prompt + "\\n"` with the tokenizer's special tokens; chat: the chat template
    (optional system turn, the prompt as the user turn, the generation prompt, and
    data.chat_template_kwargs), rendered to text and then encoded without adding
    special tokens again (the template writes its own). Rendering first avoids
    `apply_chat_template(tokenize=True)`, whose return type changed in transformers 5
    (a BatchEncoding, not a list of ids).
    """
    if data.prompt_format == "chat":
        messages = [{"role": "user", "content": prompt}]
        if data.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": data.system_prompt})
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                             tokenize=False, **data.chat_template_kwargs)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt + "\n", add_special_tokens=True)["input_ids"])


def collect_rollouts(engine, records, tokenizer, sampling, group_size: int,
                     data, first_index: int = 0) -> RolloutBatch:
    """On an engine's host: G samples per prompt (prompts passed as token ids); data:
    DataConfig (prompt format); first_index: the global index of records[0] in the
    step's batch (per-request seeds)."""
    prompt_ids = [encode_prompt(tokenizer, r.prompt, data) for r in records]
    groups = engine.generate(prompt_ids, group_size, sampling, first_index=first_index)
    responses = [resp for g in groups for resp in g.responses]
    return RolloutBatch(
        prompts=[r.prompt for r in records], references=[r.reference for r in records],
        tasks=[r.task for r in records], prompt_ids=prompt_ids,
        response_ids=[list(r.token_ids) for r in responses],
        response_texts=[r.text for r in responses],
        truncated=[r.truncated for r in responses], group_size=group_size,
        rollout_logprobs=[r.rollout_logprobs.tolist() for r in responses])


def broadcast_rollouts(batch: RolloutBatch | None, src: int = 0,
                       group: dist.ProcessGroup | None = None) -> RolloutBatch:
    """Every rank of `group` (default: the world) gets the batch of global rank `src`
    (a pickled object broadcast)."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return batch
    box = [batch]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def response_sequences(batch: RolloutBatch, pad_id: int, seq_length: int,
                       pad_multiple: int = 1) -> SequenceBatch:
    """The policy's view: prompt + sampled response, mask on the response tokens; width
    rounded up to `pad_multiple` (`data.packing.sequence_pad_multiple`)."""
    return pack_sequences(batch.per_response(batch.prompt_ids), batch.response_ids, pad_id,
                          seq_length, pad_multiple)


THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def split_tokenize(tokenizer, parts: list[str], scored: int) -> list[list[int]]:
    """Token ids of `"".join(parts)` encoded as ONE text (as the policy wrote and read
    it), split into the ids of each part.

    Encoding the parts one by one is wrong for most tokenizers: SentencePiece's
    Metaspace marks a text's first word ("The" alone -> "▁The", after "<answer>" ->
    "The") and byte-level BPE merges punctuation into the next word (">The"); the
    model never saw those standalone ids there and scores them at ~-17 nats. A token
    belongs to the part it starts in, except that one overlapping `parts[scored]` at
    all belongs to that part (it carries its text). Uses the fast tokenizer's offsets;
    without them, each prefix's encoding must be a prefix of the next, else ValueError.
    """
    text = "".join(parts)
    bounds = [0]
    for part in parts:
        bounds.append(bounds[-1] + len(part))
    lo, hi = bounds[scored], bounds[scored + 1]
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
    except (NotImplementedError, TypeError, KeyError, ValueError):
        offsets = None
    out: list[list[int]] = [[] for _ in parts]
    if offsets is not None:
        for tok, (start, end) in zip(enc["input_ids"], offsets):
            if (start < hi and end > lo) if end > start else lo <= start < hi:
                out[scored].append(tok)
            else:
                out[min(bisect.bisect_right(bounds, start), len(parts)) - 1].append(tok)
        return out
    prev: list[int] = []
    for i in range(len(parts)):
        ids = list(tokenizer(text[:bounds[i + 1]], add_special_tokens=False)["input_ids"])
        if ids[:len(prev)] != prev:
            raise ValueError(f"tokenizer merges tokens across a part boundary of {text!r} "
                             "and gives no offsets: use a fast tokenizer")
        out[i], prev = ids[len(prev):], ids
    return out


@dataclass
class AnswerView:
    """r_ppl's view of B responses: prompt + reasoning + "<answer>" + REFERENCE +
    "</answer>", the reference tokens masked (DESIGN.md section 3)."""

    sequences: SequenceBatch
    """tokens [B, S'], response_mask [B, S'] = 1 on the reference tokens."""
    has_reference: torch.Tensor
    """[B] bool: the prompt has a (non-blank) reference."""
    trimmed: torch.Tensor
    """[B] bool: the reasoning was cut from its start so the whole reference fits."""
    skipped: torch.Tensor
    """[B] bool: prompt + "<answer>" + reference + "</answer>" alone exceed the sequence
    length; r_ppl cannot score the whole reference (it scores 0, never 1)."""
    reasoning_tokens: torch.Tensor
    """[B] tokens of the stripped text inside the first <think>...</think> (0: none)."""

    def to(self, device) -> AnswerView:
        """The view with every tensor on `device` (the model's)."""
        return AnswerView(self.sequences.to(device), self.has_reference.to(device),
                          self.trimmed.to(device), self.skipped.to(device),
                          self.reasoning_tokens.to(device))


def answer_sequences(batch: RolloutBatch, tokenizer, pad_id: int, seq_length: int,
                     answer_pattern: str, pad_multiple: int = 1) -> AnswerView:
    """Build r_ppl's view. reasoning + "<answer>" + reference + "</answer>" is encoded
    as one text (`split_tokenize`), so the reference's ids are the ones the policy
    would write there. The reference always appears whole: when the row would exceed
    `seq_length`, the reasoning loses tokens from its START (the part next to
    "<answer>" stays); when even no reasoning leaves room, the row is `skipped` and
    its mask is empty. Rows without a reference get an empty mask. The width is rounded
    up to `pad_multiple` (padding only)."""
    from maestro_megatron.rewards import has_reference

    completions, spans, trimmed, skipped, thinking = [], [], [], [], []
    prompts = batch.per_response(batch.prompt_ids)
    references = batch.per_response(batch.references)
    for text, ref, prompt in zip(batch.response_texts, references, prompts):
        reasoning = re.sub(answer_pattern, "", text, flags=re.DOTALL).rstrip()
        think = THINK.search(text)
        thinking.append(len(tokenizer(think.group(1).strip(), add_special_tokens=False)
                            ["input_ids"]) if think and think.group(1).strip() else 0)
        if not has_reference(ref):
            completions.append([t for part in split_tokenize(
                tokenizer, [reasoning, "<answer>"], 1) for t in part])
            spans.append((0, 0))
            trimmed.append(False)
            skipped.append(False)
            continue
        kept, opener, answer, closer = split_tokenize(
            tokenizer, [reasoning, "<answer>", ref, "</answer>"], 2)
        overflow = len(prompt) + len(kept) + len(opener) + len(answer) + len(closer) \
            - seq_length
        cut = max(overflow, 0)
        skip = cut > len(kept)
        head = kept[min(cut, len(kept)):] + opener
        completions.append(head + answer + closer)
        spans.append((0, 0) if skip else (len(head), len(head) + len(answer)))
        trimmed.append(0 < cut and not skip)
        skipped.append(skip)
    seqs = pack_sequences(prompts, completions, pad_id, seq_length, pad_multiple)
    mask = torch.zeros_like(seqs.response_mask)
    for i, (p, (a, b)) in enumerate(zip(prompts, spans)):
        mask[i, len(p) + a:len(p) + b] = 1.0
    return AnswerView(SequenceBatch(tokens=seqs.tokens, response_mask=mask),
                      torch.tensor([has_reference(r) for r in references]),
                      torch.tensor(trimmed), torch.tensor(skipped), torch.tensor(thinking))


def engine_trainer_gap(batch: RolloutBatch, trainer_logprobs: torch.Tensor) -> torch.Tensor:
    """|engine sampler logprob - trainer logprob| of every scored response token, flat.

    trainer_logprobs: [B, S] aligned with `response_sequences(batch, ...)` (position t
    scores token t). With temperature 1 and top-p 1 the two are the same distribution,
    so after a correct refit the gap is float round-off.
    """
    gaps = []
    seq = trainer_logprobs.shape[1]
    trainer_logprobs = trainer_logprobs.float().cpu()  # one copy to the host, not one a row
    for i, (prompt, lps) in enumerate(zip(batch.per_response(batch.prompt_ids),
                                          batch.rollout_logprobs)):
        count = max(0, min(len(lps), seq - len(prompt)))
        if count:
            engine = torch.tensor(lps[:count], dtype=torch.float32)
            gaps.append((trainer_logprobs[i, len(prompt):len(prompt) + count]
                         - engine).abs())
    return torch.cat(gaps) if gaps else torch.zeros(0)
