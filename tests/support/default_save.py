"""Child process of tests/integration/test_convert.py: the HF directory ARGV[1] saved as
torch_dist into ARGV[2] the plain way, to compare the converter's output against: the
model built in memory on the CPU, filled from HF (`import_hf_weights`), written by
megatron-core's own default save strategy (its writer processes)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(hf_dir: str, out: str) -> None:
    import torch
    from megatron.core import dist_checkpointing

    from maestro_megatron.config.schema import ParallelConfig
    from maestro_megatron.megatron.model import padded_vocab_size
    from maestro_megatron.megatron.parallel import destroy_distributed, init_distributed
    from maestro_megatron.weights import hf_io
    from maestro_megatron.weights.convert import build_model_shard, resolve_dtype
    from maestro_megatron.weights.model_io import _sharded_state_dict, import_hf_weights
    from maestro_megatron.weights.registry import mapping_for_hf_config

    hf = hf_io.HFCheckpoint(Path(hf_dir))
    mapping = mapping_for_hf_config(hf.config)
    cfg = mapping.model_config(hf.config, make_vocab_size_divisible_by=128)
    groups = init_distributed(ParallelConfig(), cfg)
    try:
        chunks = build_model_shard(cfg, 1, 1, groups, resolve_dtype("auto", hf.config),
                                   device="cpu")
        with torch.no_grad():
            import_hf_weights(chunks, hf, mapping, cfg, tp_rank=0, tp_size=1,
                              padded_vocab=padded_vocab_size(cfg, 1))
        Path(out).mkdir(parents=True)
        dist_checkpointing.save(_sharded_state_dict(chunks), out)
    finally:
        destroy_distributed()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
