"""The tiny recipe's SentencePiece tokenizer, as a Hugging Face directory."""

from __future__ import annotations

import time

import pytest

from maestro_megatron.data import builtin_texts, load_builtin_rows
from maestro_megatron.data.tokenizer import (
    FORMAT_TOKENS,
    train_builtin_tokenizer,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    start = time.perf_counter()
    train_builtin_tokenizer(out)
    elapsed = time.perf_counter() - start
    print(f"tokenizer trained + saved in {elapsed:.3f} s")
    assert elapsed < 5.0
    return out


@pytest.fixture(scope="module")
def tok(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)


def test_directory_and_ids(tok_dir, tok):
    names = {p.name for p in tok_dir.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
            "tokenizer.model"} <= names
    assert len(tok) == tok.vocab_size == 512
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2, 3)
    assert tok.convert_tokens_to_ids(list(FORMAT_TOKENS)) == [4, 5, 6, 7]
    assert tok.convert_tokens_to_ids("\n") == 8


def test_format_tags_are_single_non_special_tokens(tok):
    text = "<think>3 plus 4 is 7.</think><answer>7</answer>"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces == ["<s>", "<think>", "3", "▁plus", "▁", "4", "▁is", "▁", "7", ".",
                      "</think>", "<answer>", "7", "</answer>"]
    # vLLM decodes with skip_special_tokens=True: the tags must survive it
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(ids) == "<s>" + text
    for tag in FORMAT_TOKENS:
        ids = tok(f"a{tag}b", add_special_tokens=False)["input_ids"]
        assert tok.convert_ids_to_tokens(ids) == ["▁a", tag, "b"]


def test_round_trip_and_agreement_with_sentencepiece(tok_dir, tok):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tok_dir / "tokenizer.model"))
    lone_prefix = sp.piece_to_id("▁")
    extra = ["What is 12 + 7?", "Hello  world, (x) = [y]!", "line one\nline two", "ZEBRA"]
    for text in builtin_texts() + extra:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, text
        assert tok.decode(ids) == text
        sp_ids = sp.encode(text)
        # SentencePiece writes its dummy-prefix "▁" before a leading user symbol
        if text.startswith("<") and sp_ids[0] == lone_prefix:
            sp_ids = sp_ids[1:]
        assert ids == sp_ids, text


def test_builtin_responses_are_short(tok):
    lengths = [len(tok(r["response"], add_special_tokens=False)["input_ids"])
               for r in load_builtin_rows()]
    print(f"response tokens: min {min(lengths)} max {max(lengths)}")
    assert 10 <= min(lengths) and max(lengths) <= 40  # fits rollout.max_new_tokens = 48


def test_deterministic_files(tok_dir, tmp_path):
    again = train_builtin_tokenizer(tmp_path / "again")
    for path in sorted(tok_dir.iterdir()):
        assert (again / path.name).read_bytes() == path.read_bytes(), path.name


def test_vocab_size_and_chat_template(tmp_path):
    from transformers import AutoTokenizer

    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    out = train_tokenizer(builtin_texts(), tmp_path / "t300", vocab_size=300,
                          chat_template=template)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert len(tok) == 300
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "user: hi\n"


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="no texts"):
        train_tokenizer(["", ""], tmp_path / "none")
    with pytest.raises(RuntimeError, match="Vocabulary size too high"):
        train_tokenizer(["a tiny corpus"], tmp_path / "big", vocab_size=50_000)


def test_chat_prompts_follow_the_chatml_template(tok):
    """prompt_format=chat: the ids are the rendered template encoded once (no BOS added
    twice), the turn markers are single tokens, and system prompt and template variables
    come from the recipe. (The landed code took list() of apply_chat_template's
    BatchEncoding in transformers 5: ['input_ids', 'attention_mask'].)"""
    from maestro_megatron.config.schema import DataConfig
    from maestro_megatron.trainer.rollouts import encode_prompt

    data = DataConfig(prompt_format="chat", system_prompt="Answer briefly.")
    ids = encode_prompt(tok, "What is 2 + 3?", data)
    messages = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "What is 2 + 3?"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == ("<|im_start|>system\nAnswer briefly.<|im_end|>\n"
                    "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert all(isinstance(i, int) for i in ids) and ids[0] != tok.bos_token_id
    start, end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert ids.count(start) == 3 and ids.count(end) == 2  # whole tokens, never split
    assert tok.decode(ids) == text
    plain = encode_prompt(tok, "What is 2 + 3?", DataConfig(prompt_format="plain"))
    assert plain[0] == tok.bos_token_id and start not in plain


def test_chat_template_kwargs_reach_the_template(tok):
    from maestro_megatron.config.schema import DataConfig
    from maestro_megatron.trainer.rollouts import encode_prompt

    saved = tok.chat_template
    tok.chat_template = saved + "{% if enable_thinking is defined and not enable_thinking %}" \
                                "<think></think>{% endif %}"
    try:
        on = encode_prompt(tok, "Hi", DataConfig(prompt_format="chat"))
        off = encode_prompt(tok, "Hi", DataConfig(prompt_format="chat",
                                                  chat_template_kwargs={"enable_thinking": False}))
    finally:
        tok.chat_template = saved
    think, end_think = tok.convert_tokens_to_ids(["<think>", "</think>"])
    assert off == on + [think, end_think]


def _answer_row(tokenizer, reference: str):
    """r_ppl's view of one response whose answer is the reference: (row ids after the
    prompt, the masked ids)."""
    from maestro_megatron.trainer.rollouts import RolloutBatch, answer_sequences

    text = f"<think>A dog runs in the sun.</think><answer>{reference}</answer>"
    batch = RolloutBatch(prompts=["p"], references=[reference], tasks=["story"],
                         prompt_ids=[[9]], response_ids=[[1]], response_texts=[text],
                         truncated=[False], group_size=1, rollout_logprobs=[[0.0]])
    view = answer_sequences(batch, tokenizer, 0, 128, r"<answer>(.*?)</answer>")
    row, mask = view.sequences.tokens[0], view.sequences.response_mask[0].bool()
    return row[1:][row[1:] != 0].tolist(), row[mask].tolist()


@pytest.mark.parametrize("kind", ["sentencepiece", "byte-level-bpe"])
def test_r_ppl_scores_the_reference_ids_the_policy_writes(tok, kind):
    """The reference is encoded together with the reasoning and "<answer>", as in the
    policy's own output. The landed code encoded it alone: SentencePiece then wrote
    "▁The" where the policy writes "The" (after "<answer>"), a token the warm-up model
    gave -17.5 nats, so r_ppl was ~0.03 for every response, right or wrong."""
    from tests.support.tiny_llama import train_tokenizer as byte_bpe

    tokenizer = tok if kind == "sentencepiece" else byte_bpe()
    reference = "The dog runs in the sun."
    text = f"<think>A dog runs in the sun.</think><answer>{reference}</answer>"
    row, scored = _answer_row(tokenizer, reference)
    assert row == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(scored).strip() == reference
    if kind == "sentencepiece":
        assert tokenizer.convert_ids_to_tokens(scored)[0] == "The"  # not "▁The"
        assert scored != tokenizer(reference, add_special_tokens=False)["input_ids"]


def test_split_tokenize_without_offsets_needs_prefix_stable_encodings():
    from maestro_megatron.trainer.rollouts import split_tokenize

    class Chars:  # a slow tokenizer: no offsets
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

    assert split_tokenize(Chars(), ["ab", "<", "c"], 2) == [[97, 98], [60], [99]]

    class Merging(Chars):  # "<c" becomes one id: no prefix of the whole encoding
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text.replace("<c", "\x01")]}

    with pytest.raises(ValueError, match="part boundary.*fast tokenizer"):
        split_tokenize(Merging(), ["ab", "<", "c"], 2)
