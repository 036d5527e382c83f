"""Packed-batch width: rounding up to the layout's multiple (sequence parallel, FP8)."""

from __future__ import annotations

import pytest
import torch

from maestro_megatron.config.schema import ParallelConfig, PrecisionConfig
from maestro_megatron.data.packing import pack_sequences, sequence_pad_multiple
from maestro_megatron.trainer.rollouts import RolloutBatch, answer_sequences, response_sequences


def test_width_rounds_up_to_the_multiple_with_padding_only():
    # Rows of 5 and 2 tokens: longest 5 -> 8 at multiple 4; cut at seq_length first.
    out = pack_sequences([[1, 2], [3]], [[4, 5, 6], [7]], pad_id=9, seq_length=16,
                         pad_multiple=4)
    assert out.tokens.tolist() == [[1, 2, 4, 5, 6, 9, 9, 9], [3, 7, 9, 9, 9, 9, 9, 9]]
    assert out.response_mask.tolist() == [[0, 0, 1, 1, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0]]
    plain = pack_sequences([[1, 2], [3]], [[4, 5, 6], [7]], pad_id=9, seq_length=16)
    assert plain.tokens.shape == (2, 5)  # default 1: the longest row
    exact = pack_sequences([[1, 2, 3, 4]], [[5, 6, 7, 8]], pad_id=9, seq_length=16,
                           pad_multiple=4)
    assert exact.tokens.shape == (1, 8)  # already a multiple: unchanged
    cut = pack_sequences([[1, 2, 3]], [[4, 5, 6, 7]], pad_id=0, seq_length=6, pad_multiple=4)
    assert cut.tokens.tolist() == [[1, 2, 3, 4, 5, 6, 0, 0]]  # 6 tokens kept, 2 padding
    assert cut.response_mask.tolist() == [[0, 0, 0, 1, 1, 1, 0, 0]]
    with pytest.raises(ValueError, match="pad_multiple must be >= 1"):
        pack_sequences([[1]], [[2]], pad_id=0, seq_length=4, pad_multiple=0)


@pytest.mark.parametrize(("tp", "sp", "fp8", "multiple"), [
    (1, False, None, 1),
    (8, False, None, 1),       # TP without sequence parallelism: rows are not split
    (2, True, None, 2),
    (3, True, None, 3),
    (1, False, "hybrid", 64),
    (8, False, "hybrid", 64),
    (4, True, "hybrid", 64),   # lcm(64, 32)
    (8, True, "e4m3", 64),     # 8 tokens per rank
    (16, True, "hybrid", 128),  # lcm(64, 128): 8 tokens per rank, not 4
    (3, True, "hybrid", 192),  # lcm(64, 24)
])
def test_pad_multiple_of_the_layout(tp, sp, fp8, multiple):
    got = sequence_pad_multiple(ParallelConfig(tensor_parallel=tp, sequence_parallel=sp),
                                PrecisionConfig(fp8=fp8))
    assert got == multiple
    assert got % (tp if sp else 1) == 0 and (fp8 is None or got % 64 == 0)


def _batch() -> RolloutBatch:
    return RolloutBatch(prompts=["p"], references=["4"], tasks=["math"],
                        prompt_ids=[[1, 2, 3]], response_ids=[[4, 5], [6]],
                        response_texts=["<think>x</think><answer>4</answer>", "y"],
                        truncated=[False, False], group_size=2,
                        rollout_logprobs=[[-1.0, -1.0], [-1.0]])


def test_trainer_views_pass_the_multiple_on():
    seqs = response_sequences(_batch(), pad_id=0, seq_length=64, pad_multiple=8)
    assert seqs.tokens.tolist() == [[1, 2, 3, 4, 5, 0, 0, 0], [1, 2, 3, 6, 0, 0, 0, 0]]
    assert seqs.response_mask.sum(1).tolist() == [2, 1]

    class CharTokenizer:  # one id per character, no offsets
        def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
            if return_offsets_mapping:
                raise NotImplementedError
            return {"input_ids": [ord(c) for c in text]}

    plain = answer_sequences(_batch(), CharTokenizer(), 0, 64, r"<answer>.*?</answer>")
    padded = answer_sequences(_batch(), CharTokenizer(), 0, 64, r"<answer>.*?</answer>",
                              pad_multiple=16)
    width = plain.sequences.tokens.shape[1]
    assert padded.sequences.tokens.shape[1] == -(-width // 16) * 16 > width
    assert torch.equal(padded.sequences.tokens[:, :width], plain.sequences.tokens)
    assert torch.equal(padded.sequences.response_mask[:, :width],
                       plain.sequences.response_mask)
    assert not padded.sequences.tokens[:, width:].any()
    assert not padded.sequences.response_mask[:, width:].any()
