"""Train a small SentencePiece BPE tokenizer and save it as a Hugging Face directory.

``train_tokenizer(texts, out_dir, vocab_size=512)`` trains SentencePiece (BPE, in
memory, one thread: the same texts give the same files) and writes a directory that
``transformers.AutoTokenizer.from_pretrained(out_dir)`` and vLLM (which loads tokenizers
through transformers) read offline: ``tokenizer.json``, ``tokenizer_config.json``,
``special_tokens_map.json`` and the SentencePiece model itself (``tokenizer.model``).

Ids: ``<pad>`` 0, ``<unk>`` 1, ``<s>`` (bos) 2, ``</s>`` (eos) 3, then the answer-format
tags ``<think>`` 4, ``</think>`` 5, ``<answer>`` 6, ``</answer>`` 7 and the newline 8
(always one token each), then the learned pieces. The tags are *not* special
tokens: vLLM decodes with ``skip_special_tokens=True``, which must keep them in the
response text that the format reward reads. Encoding adds ``<s>`` in front (Llama
convention), never ``</s>``.

The ``tokenizer.json`` model is the SentencePiece model itself: its pieces as the BPE
vocabulary and, as merges, every split of a piece into two pieces ranked by the merged
piece's score (what SentencePiece's BPE encoder applies), so the fast tokenizer encodes
plain text exactly like ``SentencePieceProcessor.encode`` (a test checks the corpus).
Whitespace is kept verbatim (``remove_extra_whitespaces=False``), and every printable
ASCII character and newline has a piece, so decode(encode(s)) == s for ASCII text that
does not start with a space (a leading space is the dummy prefix, as in Llama).
"""

from __future__ import annotations

import io
import json
import string
from collections.abc import Iterable
from pathlib import Path

FORMAT_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
"""ChatML, the turn format of Qwen's chat templates (without their tool and thinking
extras): the tiny recipe's prompts take the same path as a chat model's."""
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
NEWLINE = "\n"
ALPHABET = string.ascii_letters + string.digits + string.punctuation
"""Characters that always get a piece, whether or not the texts contain them."""


def _train_spm(texts: list[str], vocab_size: int, user_symbols: tuple[str, ...]) -> bytes:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, model_type="bpe",
        vocab_size=vocab_size, character_coverage=1.0, byte_fallback=False,
        pad_id=0, unk_id=1, bos_id=2, eos_id=3,
        pad_piece=PAD, unk_piece=UNK, bos_piece=BOS, eos_piece=EOS,
        user_defined_symbols=list(user_symbols), normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, add_dummy_prefix=True,
        num_threads=1, shuffle_input_sentence=False, input_sentence_size=0,
        max_sentence_length=1 << 16, minloglevel=2,
    )
    return buf.getvalue()


def _fast_tokenizer(sp, user_symbols: tuple[str, ...]):
    """The SentencePiece model `sp` as a `tokenizers.Tokenizer` (BPE + Metaspace)."""
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    size = sp.get_piece_size()
    vocab = {sp.id_to_piece(i): i for i in range(size)}
    normal = {sp.id_to_piece(i): (sp.get_score(i), i) for i in range(size)
              if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)
                      or sp.id_to_piece(i) in user_symbols)}
    ranked = []
    for piece, (score, pid) in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-score, pid, left, right))
    merges = [(left, right) for _, _, left, right in sorted(ranked)]
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=UNK, fuse_unk=True,
                        byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                 split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in (PAD, UNK, BOS, EOS)])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in user_symbols])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])])
    return tok


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 512, *,
                    model_max_length: int = 4096, chat_template: str | None = None,
                    extra_symbols: Iterable[str] = ()) -> Path:
    """Train on ``texts`` and write the Hugging Face tokenizer directory ``out_dir``.

    ``vocab_size`` is exact (SentencePiece fails if the texts cannot support that many
    pieces). ``extra_symbols`` are more always-whole, non-special symbols after the
    four format tags. Returns ``out_dir``.
    """
    import sentencepiece as spm
    from transformers import PreTrainedTokenizerFast

    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("train_tokenizer: no texts")
    texts.append(" ".join(ALPHABET))  # every ASCII character encodes without <unk>
    # SentencePiece drops newlines from normal pieces; as a user symbol it is one token.
    fixed = FORMAT_TOKENS + (NEWLINE,)
    symbols = fixed + tuple(s for s in extra_symbols if s not in fixed)
    model = _train_spm(texts, vocab_size, symbols)
    sp = spm.SentencePieceProcessor(model_proto=model)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=_fast_tokenizer(sp, symbols), bos_token=BOS, eos_token=EOS,
        unk_token=UNK, pad_token=PAD, model_max_length=model_max_length,
        padding_side="right", clean_up_tokenization_spaces=False)
    if chat_template is not None:
        hf.chat_template = chat_template
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out)
    (out / "tokenizer.model").write_bytes(model)
    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD}
    (out / "special_tokens_map.json").write_text(json.dumps(specials))
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    # The class name transformers 4.x and 5.x both resolve (5.x writes TokenizersBackend).
    config.update(tokenizer_class="PreTrainedTokenizerFast", add_bos_token=True,
                  add_eos_token=False)
    config_path.write_text(json.dumps(config))
    _normalise_json(out)
    return out


def _normalise_json(out: Path) -> None:
    """Rewrite the JSON files with sorted keys: byte-identical output for identical input."""
    for path in sorted(out.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        path.write_text(json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True) + "\n",
                        encoding="utf-8")


def train_chat_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 512
                         ) -> Path:
    """`train_tokenizer` with the ChatML turn tokens (always whole) and template."""
    return train_tokenizer(texts, out_dir, vocab_size, chat_template=CHATML_TEMPLATE,
                           extra_symbols=CHAT_TOKENS)


def train_builtin_tokenizer(out_dir: str | Path, vocab_size: int = 512) -> Path:
    """The tiny recipe's tokenizer: trained on the built-in prompts, references, responses."""
    from maestro_megatron.data.prompts import builtin_texts

    return train_chat_tokenizer(builtin_texts(), out_dir, vocab_size)
