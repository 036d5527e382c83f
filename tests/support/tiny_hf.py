"""Tiny random Llama / Qwen2 / Qwen3 checkpoints written locally (no model hub).

Shapes exercise every layout rule of the converter: GQA with 2 query groups (4 heads,
2 KV heads), vocabulary 250 (not a multiple of 128: padding), Qwen2 QKV biases, Qwen3
q/k norms with head_dim 32 != hidden / heads = 16, tied and untied embeddings.
"""

from __future__ import annotations

import json
from pathlib import Path

ARCHS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
VOCAB = 250


def build_tiny_hf(out_dir: str | Path, arch: str, *, tied: bool, seed: int = 0,
                  num_layers: int = 4, max_shard_size: str | None = None) -> Path:
    """Write a random fp32 ``arch`` model (+ a tokenizer_config.json) to ``out_dir``.

    Weights are drawn with std 0.2 (biases and norms too) so every tensor, including
    the norms that default to ones, is distinguishable and logits spread out.
    ``max_shard_size`` (e.g. "40KB"): several safetensors files plus an index.
    """
    import torch
    import transformers

    kwargs = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96,
                  num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=tied,
                  bos_token_id=1, eos_token_id=2, dtype="float32")
    if arch == "qwen3":
        kwargs["head_dim"] = 32
    if arch == "llama":
        kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": 500000.0}
    name = ARCHS[arch]
    config = getattr(transformers, name.replace("ForCausalLM", "Config"))(**kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, name)(config).to(torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.add_(1.0)  # keep norms near one: a well-conditioned forward
    out = Path(out_dir)
    save_kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, **save_kwargs)
    (out / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 128}) + "\n")
    return out


def hf_logits(model_dir: Path, tokens) -> object:
    """fp32 logits [B, S, V] of the HF model in ``model_dir`` on ``tokens`` [B, S]."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(input_ids=tokens).logits
