"""Live Megatron chunks <-> Hugging Face directories (what training runs need).

- `hf_model_config`: an HF directory's config.json -> (ModelConfig, mapping).
- `load_hf_weights`: fill this rank's chunks from an HF directory (each rank reads only
  its TP slices of its PP stage's tensors).
- `export_hf`: gather the live shards (`iter_hf_weights`) and write an HF directory on
  the leader, shard by shard (for the rollout engine's first load and for exports).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from maestro_megatron.config.schema import ModelConfig
from maestro_megatron.megatron.model import padded_vocab_size
from maestro_megatron.megatron.parallel import ParallelGroups
from maestro_megatron.weights.gather import is_refit_leader, iter_hf_weights
from maestro_megatron.weights.hf_io import (
    HFCheckpoint,
    copy_tokenizer_files,
    read_config,
    shard_file_name,
    write_index,
    write_shard,
)
from maestro_megatron.weights.mapping import DecoderMapping
from maestro_megatron.weights.model_io import import_hf_weights
from maestro_megatron.weights.registry import get_mapping, mapping_for_hf_config

DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def hf_model_config(hf_dir: str | Path, base: ModelConfig | None = None
                    ) -> tuple[ModelConfig, DecoderMapping]:
    """The architecture of an HF directory (config.json); the run's fields are kept from
    the recipe's `base`: seq_length (config.json's max_position_embeddings goes to
    `max_position_embeddings`, so an export keeps it; trainer/preflight.py checks that
    seq_length fits), the vocabulary padding multiple and the init std. Without `base`
    (the converter, tools), seq_length is config.json's max_position_embeddings."""
    hf = read_config(Path(hf_dir))
    mapping = mapping_for_hf_config(hf)
    cfg = mapping.model_config(hf)
    if base is not None:
        positions = hf.get("max_position_embeddings")
        cfg = replace(cfg, seq_length=base.seq_length,
                      max_position_embeddings=None if positions is None else int(positions),
                      make_vocab_size_divisible_by=base.make_vocab_size_divisible_by,
                      init_method_std=base.init_method_std)
    return replace(cfg, architecture=mapping.architecture, hf_path=str(hf_dir)), mapping


def load_hf_weights(model_chunks: list[torch.nn.Module], hf_dir: str | Path, cfg: ModelConfig,
                    groups: ParallelGroups) -> int:
    """Copy the HF weights of `hf_dir` into this rank's chunks; returns tensors filled."""
    hf = HFCheckpoint(Path(hf_dir))
    return import_hf_weights(model_chunks, hf, get_mapping(cfg.architecture), cfg,
                             tp_rank=groups.tp_rank, tp_size=groups.tp_size,
                             padded_vocab=padded_vocab_size(cfg, groups.tp_size))


def export_hf(model_chunks: list[torch.nn.Module], cfg: ModelConfig, groups: ParallelGroups,
              out_dir: str | Path, *, tokenizer_dir: str | Path | None = None,
              base_config: dict | None = None, max_shard_bytes: int = 2 * 1024**3) -> None:
    """Write the live policy as an HF directory (leader writes; every rank must call).

    Written to `.<out>.partial` and renamed when complete; `out_dir` must not exist.
    """
    out = Path(out_dir)
    leader = is_refit_leader(groups)
    tmp = out.parent / f".{out.name}.partial"
    if leader:
        if out.exists():
            raise FileExistsError(f"{out} exists")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    pending: dict[str, torch.Tensor] = {}
    files: list[list[str]] = []
    written: list[Path] = []
    size, dtype = 0, None
    for name, tensor in iter_hf_weights(model_chunks, get_mapping(cfg.architecture), cfg,
                                        groups):
        if tensor is None:
            continue
        dtype = tensor.dtype
        if pending and size + tensor.numel() * tensor.element_size() > max_shard_bytes:
            written.append(tmp / f"part-{len(written)}.safetensors")
            write_shard(written[-1], pending)
            files.append(list(pending))
            pending, size = {}, 0
        pending[name] = tensor.cpu()
        size += tensor.numel() * tensor.element_size()
    if leader:
        written.append(tmp / f"part-{len(written)}.safetensors")
        write_shard(written[-1], pending)
        files.append(list(pending))
        weight_map, total = {}, 0
        for i, (path, names) in enumerate(zip(written, files)):
            final = tmp / shard_file_name(i, len(written))
            path.rename(final)
            weight_map.update({n: final.name for n in names})
            total += final.stat().st_size
        if len(written) > 1:
            write_index(tmp, weight_map, total)
        mapping = get_mapping(cfg.architecture)
        hf = mapping.hf_config(cfg, base=base_config, dtype=DTYPE_NAMES.get(dtype, "float32"))
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        if tokenizer_dir is not None:
            copy_tokenizer_files(Path(tokenizer_dir), tmp)
        tmp.rename(out)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
