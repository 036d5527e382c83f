"""Random Hugging Face checkpoints of real sizes, written layer by layer (memory stays at
one tensor whatever the model's size), sharded as transformers shards them.

    .venv/bin/python -m bench.big_model OUT --preset qwen3-8b|llama-1b [--layers N]

Tensor names and shapes come from the project's weight mapping for the architecture;
values are N(0, 0.02) in bf16 (norm weights 1), seeded per tensor, so the same preset
gives the same bytes. Shards of at most 5 GB (`model-0000i-of-0000n.safetensors` and
`model.safetensors.index.json`), as `save_pretrained` writes them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import zlib
from pathlib import Path

PRESETS = {
    # Qwen3-8B's config.json (36 layers, hidden 4096, FFN 12288, 32 heads / 8 KV heads of
    # 128, vocabulary 151936, untied head, per-head q/k RMSNorm): 8.19e9 parameters.
    "qwen3-8b": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
                 "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                 "vocab_size": 151936, "max_position_embeddings": 40960,
                 "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
                 "hidden_act": "silu", "attention_bias": False, "dtype": "bfloat16"},
    # A Llama of 1.1e9 parameters (hidden 2048, 22 layers, GQA 16/4, vocabulary 32000).
    "llama-1b": {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                 "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
                 "num_attention_heads": 16, "num_key_value_heads": 4,
                 "vocab_size": 32000, "max_position_embeddings": 2048, "rope_theta": 10000.0,
                 "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "hidden_act": "silu",
                 "attention_bias": False, "dtype": "bfloat16"},
}
SHARD_BYTES = 5 * 10**9


def write_random_hf(out: Path, config: dict, shard_bytes: int = SHARD_BYTES) -> Path:
    """``out`` (created whole, via a temporary sibling) with config.json and the weights."""
    import torch

    from maestro_megatron.weights import hf_io
    from maestro_megatron.weights.registry import mapping_for_hf_config
    from maestro_megatron.weights.units import hf_shapes

    mapping = mapping_for_hf_config(config)
    cfg = mapping.model_config(config)
    specs = [(name, shape) for unit in mapping.units(cfg)
             for name, shape in zip(unit.hf_names, hf_shapes(unit, cfg))]
    sizes = [2 * torch.Size(shape).numel() for _, shape in specs]
    shards = hf_io.plan_shards(sizes, shard_bytes)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weight_map = {}
    for index, members in enumerate(shards):
        file = hf_io.shard_file_name(index, len(shards))
        shard = hf_io.StreamingShard(tmp / file, [(specs[i][0], specs[i][1], torch.bfloat16)
                                                  for i in members])
        for i in members:
            name, shape = specs[i]
            if "norm" in name:
                tensor = torch.ones(shape, dtype=torch.bfloat16)
            else:
                gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
                tensor = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
            shard.write(name, tensor)
            weight_map[name] = file
            del tensor
        shard.finish()
    if len(shards) > 1:
        hf_io.write_index(tmp, weight_map, sum(sizes))
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--preset", choices=sorted(PRESETS), default="qwen3-8b")
    p.add_argument("--layers", type=int, default=None, help="fewer layers (same shapes)")
    p.add_argument("--shard-bytes", type=int, default=SHARD_BYTES)
    args = p.parse_args(argv)
    config = dict(PRESETS[args.preset])
    if args.layers:
        config["num_hidden_layers"] = args.layers
    write_random_hf(args.out, config, args.shard_bytes)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
