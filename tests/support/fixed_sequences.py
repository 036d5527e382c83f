"""The refit verifier's fixed sequences: two texts, their prompt lengths, and the
trainer's right-padded batch of them (the project's `pack_sequences`), on the host."""

from __future__ import annotations

from maestro_megatron.data.packing import SequenceBatch, pack_sequences

TEXTS = ("the quick brown fox jumps over the lazy dog",
         "<think> two plus two is four </think><answer> 4 </answer>")
PROMPT_LENS = (3, 4)


def fixed_sequences(tokenizer) -> tuple[list[list[int]], list[int], SequenceBatch]:
    """-> (token ids per text, prompt lengths, batch with the mask on the rest)."""
    ids = [list(tokenizer(t)["input_ids"]) for t in TEXTS]
    lens = list(PROMPT_LENS)
    batch = pack_sequences([x[:p] for x, p in zip(ids, lens)],
                           [x[p:] for x, p in zip(ids, lens)], tokenizer.pad_token_id,
                           max(len(x) for x in ids))
    return ids, lens, batch
