"""A tiny random Llama + locally trained tokenizer, written to a directory (no model hub).

vLLM needs a real HF directory (config.json, safetensors, tokenizer files). The sizes
respect vLLM's CPU attention kernel, which only supports head sizes that are multiples
of 32 (so hidden 64 with 2 heads, head_dim 32). `tiny_hf.build_tiny_hf` (the converter's
models) has head_dim 16 and no tokenizer, so vLLM cannot serve it on CPU.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "<think> two plus two is four </think><answer> 4 </answer>",
    "question: what is the capital of france? answer: paris",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z 0 1 2 3 4 5 6 7 8 9",
    "reward models score responses; the conductor picks the weights",
] * 4


def train_tokenizer(vocab_size: int = 320):
    """Byte-level BPE trained on a few sentences; every byte is encodable.

    Returns a `transformers.PreTrainedTokenizerFast` with bos `<s>`, eos `</s>`, pad `<pad>`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def build_tiny_llama(out_dir: str | Path, *, seed: int = 0, num_layers: int = 2,
                     hidden_size: int = 64, vocab_size: int = 320,
                     num_kv_heads: int = 1) -> Path:
    """Write a random fp32 LlamaForCausalLM (untied head) and its tokenizer to `out_dir`.

    Shapes: hidden_size / 32 heads of head_dim 32, `num_kv_heads` KV heads (GQA),
    SwiGLU intermediate 2 x hidden_size.
    Returns the directory.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=hidden_size // 32,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    with torch.no_grad():
        # The default init (std 0.02) gives near-uniform next-token distributions; a
        # larger scale makes logprobs spread out so refit differences are visible.
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
