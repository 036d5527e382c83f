"""What one megatron-core layer really saves for backward (local spec, on CPU), for
`maestro plan`'s activation formulas (maestro_megatron/plan/activations.py).

`python saved_activations.py` prints one JSON line: for each case, the bytes per token
that autograd's saved-tensor hooks see for ONE layer (the difference between a 3-layer
and a 1-layer model, halved, so the embedding and the output head cancel), with the
parameters themselves left out. Its own process: megatron's parallel state is global.
"""

from __future__ import annotations

import dataclasses
import json

CASES = [  # (qk_layernorm, num_query_groups, recompute)
    (False, 2, "none"), (True, 2, "none"), (False, 4, "none"),
    (True, 2, "selective"), (True, 2, "full"),
]
SHAPE = dict(hidden_size=64, ffn_hidden_size=160, num_attention_heads=4, kv_channels=16,
             vocab_size=256, seq_length=32, tie_embeddings=False)
MICRO_BATCH = 2


def _saved_bytes(num_layers: int, qk: bool, groups: int, recompute: str) -> int:
    import torch

    from maestro_megatron.config.schema import (
        MemoryConfig,
        ModelConfig,
        ParallelConfig,
        PrecisionConfig,
    )
    from maestro_megatron.megatron.model import (
        build_gpt_model,
        build_transformer_config,
        recompute_fields,
    )

    model = ModelConfig(num_layers=num_layers, num_query_groups=groups, qk_layernorm=qk,
                        **SHAPE)
    par, prec = ParallelConfig(), PrecisionConfig(dtype="fp32", transformer_impl="local")
    memory = MemoryConfig(recompute=recompute, recompute_num_layers=1)
    config = dataclasses.replace(build_transformer_config(model, par, prec),
                                 **recompute_fields(memory, model, par))
    chunk = build_gpt_model(model, par, prec, pre_process=True, post_process=True,
                            config=config).train()
    params = {p.untyped_storage().data_ptr() for p in chunk.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    seq = SHAPE["seq_length"]
    tokens = torch.randint(0, SHAPE["vocab_size"], (MICRO_BATCH, seq))
    positions = torch.arange(seq).expand(MICRO_BATCH, seq)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        chunk(tokens, positions, None)
    return sum(storages.values())


def main() -> None:
    from maestro_megatron.config.schema import ModelConfig, ParallelConfig
    from maestro_megatron.megatron.parallel import init_distributed

    init_distributed(ParallelConfig(), ModelConfig(), seed=0)
    tokens = MICRO_BATCH * SHAPE["seq_length"]
    out = []
    for qk, groups, recompute in CASES:
        one, three = (_saved_bytes(n, qk, groups, recompute) for n in (1, 3))
        out.append({"qk_layernorm": qk, "groups": groups, "recompute": recompute,
                    "bytes_per_token": (three - one) / 2 / tokens})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
