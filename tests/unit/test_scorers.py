"""Preference scorers: real MiniLM embeddings offline, a tiny local reward model."""

from __future__ import annotations

import time

import pytest
import torch

from maestro_megatron.config.schema import PrefConfig
from maestro_megatron.scorers import (
    SCORERS,
    EmbeddingSimilarityScorer,
    SequenceClassifierScorer,
    build_scorer,
    extract_answer,
)

REF_SKY = "Blue light is scattered more strongly by the air."
REF_CAT = "A cat is napping in the sunshine."
PAIRS = [  # (prompt, response, reference)
    ("Why is the sky blue?", "<think>Light.</think><answer>Air scatters blue light the "
     "most.</answer>", REF_SKY),
    ("Why is the sky blue?", "<think>Light.</think><answer>I like to eat pizza on "
     "Fridays.</answer>", REF_SKY),
    ("Write one sentence about a cat.", "The cat sleeps in the sun.", REF_CAT),
    ("Write one sentence about a cat.", "The stock market fell sharply today.", REF_CAT),
    ("What is 3 + 4?", "<answer>7</answer>", "7"),
]


def test_registry_and_errors():
    assert set(SCORERS) == {"embedding_similarity", "sequence_classifier"}
    with pytest.raises(ValueError, match="rewards.pref.scorer: 'bleu' is not one of"):
        build_scorer(PrefConfig(scorer="bleu"))
    with pytest.raises(ValueError, match="rewards.pref.model_path"):
        build_scorer(PrefConfig(scorer="sequence_classifier", model_path=None))


def test_extract_answer():
    assert extract_answer("<think>a</think><answer> 7 </answer>") == "7"
    assert extract_answer("<answer>x\ny</answer> <answer>z</answer>") == "x\ny"
    assert extract_answer("  no tags ") == "no tags"


# ---------------------------------------------------------------- MiniLM


@pytest.fixture(scope="module")
def minilm():
    start = time.perf_counter()
    scorer = build_scorer(PrefConfig(scorer="embedding_similarity", batch_size=16))
    print(f"\nMiniLM scorer loaded in {time.perf_counter() - start:.2f} s")
    return scorer


def _score(scorer, pairs):
    return scorer.score([p for p, _, _ in pairs], [r for _, r, _ in pairs],
                        [x for _, _, x in pairs])


def test_minilm_ranks_paraphrase_above_unrelated(minilm):
    assert isinstance(minilm, EmbeddingSimilarityScorer)
    assert minilm.model.config.hidden_size == 384
    scores = _score(minilm, PAIRS)
    for (_, response, reference), value in zip(PAIRS, scores.tolist()):
        print(f"{value:+.4f}  {extract_answer(response)!r} vs {reference!r}")
    assert scores.shape == (5,) and scores.dtype == torch.float32
    assert scores[0] > 0.7 and scores[1] < 0.2 and scores[0] - scores[1] > 0.6
    assert scores[2] > 0.6 and scores[3] < 0.2
    assert scores[4] == pytest.approx(1.0, abs=1e-5)  # identical answer text
    assert bool(((scores >= -1.0 - 1e-6) & (scores <= 1.0 + 1e-6)).all())


def test_minilm_deterministic_and_batch_independent(minilm):
    first = _score(minilm, PAIRS)
    assert torch.equal(first, _score(minilm, PAIRS))
    small = EmbeddingSimilarityScorer.__new__(EmbeddingSimilarityScorer)
    small.__dict__.update(minilm.__dict__, batch_size=2)
    torch.testing.assert_close(_score(small, PAIRS), first, atol=1e-5, rtol=0)
    # each score only depends on its own pair
    torch.testing.assert_close(_score(minilm, PAIRS[1:2]), first[1:2], atol=1e-5, rtol=0)


def test_minilm_uses_answer_span_and_prompt_fallback(minilm):
    wrapped = _score(minilm, [("q", "<think>long unrelated musing about pizza</think>"
                                    "<answer>The cat sleeps in the sun.</answer>", REF_CAT)])
    bare = _score(minilm, [("q", "The cat sleeps in the sun.", REF_CAT)])
    torch.testing.assert_close(wrapped, bare, atol=1e-6, rtol=0)
    no_ref = _score(minilm, [("Why is the sky blue?", "Because of scattering.", None)])
    prompt_ref = _score(minilm, [("x", "Because of scattering.", "Why is the sky blue?")])
    torch.testing.assert_close(no_ref, prompt_ref, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="must be equal"):
        minilm.score(["a"], ["b", "c"], [None, None])
    assert minilm.score([], [], []).shape == (0,)


def test_minilm_model_path_override(minilm, tmp_path):
    import shutil

    copy = tmp_path / "minilm"
    shutil.copytree(minilm.model_path, copy)
    other = build_scorer(PrefConfig(scorer="embedding_similarity", model_path=str(copy)))
    assert other.model_path == copy
    torch.testing.assert_close(_score(other, PAIRS[:2]), _score(minilm, PAIRS[:2]),
                               atol=1e-6, rtol=0)
    with pytest.raises(FileNotFoundError, match="rewards.pref.model_path"):
        EmbeddingSimilarityScorer(model_path=tmp_path / "missing")


# ---------------------------------------------------------------- sequence classifier

CHAT = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}")


def _tiny_reward_model(out, *, num_labels=1, chat_template=CHAT):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from maestro_megatron.data import builtin_texts
    from maestro_megatron.data.tokenizer import train_tokenizer

    train_tokenizer(builtin_texts() + ["<|user|> <|assistant|>"], out, vocab_size=512,
                    chat_template=chat_template)
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=256, num_labels=num_labels, pad_token_id=0,
                         bos_token_id=2, eos_token_id=3)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        model.score.weight.normal_(0.0, 1.0)  # spread the random scores out
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    return _tiny_reward_model(tmp_path_factory.mktemp("rm"))


def test_sequence_classifier_scores(reward_model_dir):
    scorer = build_scorer(PrefConfig(scorer="sequence_classifier",
                                     model_path=str(reward_model_dir), batch_size=3))
    assert isinstance(scorer, SequenceClassifierScorer)
    prompts = ["What is 3 + 4?"] * 4 + ["Why is the sky blue?"]
    responses = ["<think>3 plus 4 is 7.</think><answer>7</answer>", "<answer>8</answer>",
                 "The dog runs.", "<think>a</think><answer>The cat sleeps in the sun.</answer>",
                 "Air scatters blue light the most."]
    refs = [None] * 5
    scores = scorer.score(prompts, responses, refs)
    print("reward-model scores", [round(v, 4) for v in scores.tolist()])
    assert scores.shape == (5,) and scores.dtype == torch.float32
    assert torch.equal(scores, scorer.score(prompts, responses, refs))
    assert len({round(v, 5) for v in scores.tolist()}) == 5

    # chat formatting, and the batched (padded) scores equal one-at-a-time forwards
    text = scorer.format(prompts[0], responses[0])
    assert text == f"<|user|> {prompts[0]}\n<|assistant|> {responses[0]}\n"
    for i in range(5):
        enc = scorer.tokenizer(scorer.format(prompts[i], responses[i]), return_tensors="pt")
        with torch.no_grad():
            single = scorer.model(**enc).logits[0, 0]
        torch.testing.assert_close(scores[i], single, atol=1e-5, rtol=0)


def test_sequence_classifier_without_template_and_bad_heads(tmp_path):
    plain = _tiny_reward_model(tmp_path / "plain", chat_template=None)
    scorer = SequenceClassifierScorer(plain, batch_size=4)
    assert scorer.format("P", "R") == "P\n\nR"
    assert scorer.score(["P"], ["R"], [None]).shape == (1,)
    two = _tiny_reward_model(tmp_path / "two", num_labels=2)
    with pytest.raises(ValueError, match="num_labels=2"):
        SequenceClassifierScorer(two)
