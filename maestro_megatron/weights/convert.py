"""HF safetensors <-> megatron-core torch_dist checkpoints (the two conversions).

hf-to-megatron runs in 1 process or under torchrun/srun with TP*PP processes; each
rank builds its GPTModel shard on the ``meta`` device (shapes, no memory) and
``dist_checkpointing.save`` writes the sharded checkpoint collectively, each tensor
read from the HF files (only this rank's slices) just before it is written and
dropped after: the model is never in memory.
megatron-to-hf runs in 1 process and reads one HF shard's worth of tensors at a time.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import torch

from maestro_megatron.config.schema import ModelConfig
from maestro_megatron.weights import hf_io
from maestro_megatron.weights.checks import check_hf_tensors, check_layout, check_output
from maestro_megatron.weights.ckpt_model import ASSETS_DIR, META_NAME, describe
from maestro_megatron.weights.errors import ConversionError
from maestro_megatron.weights.output import atomic_output
from maestro_megatron.weights.registry import get_mapping, mapping_for_hf_config

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
HF_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16",
                  torch.float16: "float16"}


def resolve_dtype(name: str | None, hf: dict | None = None) -> torch.dtype | None:
    """``auto`` -> the HF config's dtype (fp32 if absent); None -> None (keep)."""
    if name is None:
        return None
    if name == "auto":
        name = (hf or {}).get("dtype") or (hf or {}).get("torch_dtype") or "float32"
    if name not in DTYPES:
        raise ConversionError(f"unsupported dtype {name!r}; expected fp32|bf16|fp16")
    return DTYPES[name]


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1)


def build_model_shard(cfg: ModelConfig, tp: int, pp: int, groups, dtype: torch.dtype,
                      device: str = "meta"):
    """This rank's GPTModel shard: local spec, uninitialised, ``dtype``, on ``device``
    (the converter's ``meta``: no memory; each tensor is read from the HF files as the
    checkpoint is written)."""
    from maestro_megatron.config.schema import ParallelConfig, PrecisionConfig
    from maestro_megatron.megatron.model import build_gpt_model, build_transformer_config

    parallel = ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp)
    precision = PrecisionConfig(transformer_impl="local")
    config = build_transformer_config(cfg, parallel, precision)
    config.perform_initialization = False  # every weight is overwritten from HF
    config.use_cpu_initialization = True
    config.params_dtype = dtype
    with torch.device(device):
        return [build_gpt_model(cfg, parallel, precision, pre_process=groups.is_first_stage,
                                post_process=groups.is_last_stage, config=config)]


def hf_to_megatron(hf_dir: Path, out: Path, *, tp: int = 1, pp: int = 1, dtype: str = "auto",
                   make_vocab_size_divisible_by: int = 128, progress: bool = True) -> Path:
    """Convert an HF directory into a torch_dist checkpoint laid out for TP=tp, PP=pp.

    The checkpoint loads into ``build_model`` at that layout, and through
    :func:`~maestro_megatron.weights.model_io.load_megatron_checkpoint` at any other.
    """
    import torch.distributed as dist

    from maestro_megatron.config.schema import ParallelConfig
    from maestro_megatron.megatron.model import padded_vocab_size
    from maestro_megatron.megatron.parallel import destroy_distributed, init_distributed
    from maestro_megatron.weights.model_io import hf_sources, save_megatron_checkpoint

    check_output(out)
    hf = hf_io.HFCheckpoint(hf_dir)
    mapping = mapping_for_hf_config(hf.config)
    cfg = mapping.model_config(hf.config, make_vocab_size_divisible_by=make_vocab_size_divisible_by)
    check_layout(cfg, tp, pp)
    check_hf_tensors(hf, mapping, cfg)
    torch_dtype = resolve_dtype(dtype, hf.config)
    world = _world_size()
    if world not in (1, tp * pp):
        raise ConversionError(f"run with 1 process or TP*PP={tp * pp} processes, not {world}")
    # One process builds the TP=1 model but pads the vocabulary as TP=tp would.
    build_tp, build_pp = (tp, pp) if world == tp * pp else (1, 1)
    build_cfg = replace(cfg, make_vocab_size_divisible_by=make_vocab_size_divisible_by * tp
                        // build_tp)
    created = not dist.is_initialized()
    groups = init_distributed(ParallelConfig(tensor_parallel=build_tp,
                                             pipeline_parallel=build_pp), build_cfg)
    writer = groups.rank == 0
    try:
        with atomic_output(out, is_writer=writer, distributed=True) as tmp:
            chunks = build_model_shard(build_cfg, build_tp, build_pp, groups, torch_dtype)
            sources = hf_sources(chunks, hf, mapping, build_cfg, tp_rank=groups.tp_rank,
                                 tp_size=build_tp, padded_vocab=padded_vocab_size(cfg, tp))
            save_megatron_checkpoint(chunks, tmp, sources, progress=progress and writer)
            if writer:
                _write_meta(tmp, mapping.architecture, cfg, hf.config, tp, pp, torch_dtype)
                hf_io.copy_tokenizer_files(hf.path, tmp / ASSETS_DIR)
    finally:
        hf.close()
        if created:
            destroy_distributed()
    return Path(out)


def _write_meta(ckpt: Path, arch: str, cfg: ModelConfig, hf_config: dict, tp: int, pp: int,
                dtype: torch.dtype) -> None:
    from maestro_megatron.megatron.model import padded_vocab_size

    meta = {"architecture": arch, "model_config": asdict(cfg), "tensor_parallel": tp,
            "pipeline_parallel": pp, "padded_vocab_size": padded_vocab_size(cfg, tp),
            "dtype": HF_DTYPE_NAMES[dtype], "hf_config": hf_config}
    (ckpt / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")


def read_meta(ckpt: Path, config_path: Path | None = None,
              architecture: str | None = None) -> tuple[str, ModelConfig, dict | None]:
    """(architecture, ModelConfig, base HF config or None) of a megatron checkpoint, checked
    against its tensors (:func:`~maestro_megatron.weights.ckpt_model.describe`)."""
    model = describe(ckpt, config_path=config_path, architecture=architecture)
    return model.architecture, model.cfg, model.hf_base


def megatron_to_hf(megatron_dir: Path, out: Path, *, dtype: str | None = None,
                   max_shard_bytes: int = 5 * 2**30, config_path: Path | None = None,
                   architecture: str | None = None, tokenizer: Path | None = None,
                   progress: bool = True) -> Path:
    """Convert a torch_dist checkpoint (any TP/PP it was saved with) into an HF directory.

    Sizes come from the checkpoint's tensors; the real vocabulary size and the tokenizer
    files from maestro_weights.json / the run's tokenizer (see ``ckpt_model``); every
    checkpoint file is checked to be whole before any output is written.
    """
    from maestro_megatron.weights.dcp_read import check_storage
    from maestro_megatron.weights.export import export_shards

    check_output(out)
    megatron_dir = Path(megatron_dir)
    if not (megatron_dir / "metadata.json").is_file():
        raise ConversionError(f"{megatron_dir} is not a megatron dist checkpoint "
                              "(no metadata.json)")
    check_storage(megatron_dir)
    model = describe(megatron_dir, config_path=config_path, architecture=architecture,
                     tokenizer=tokenizer)
    mapping = get_mapping(model.architecture)
    with atomic_output(out) as tmp:
        out_dtype = export_shards(megatron_dir, tmp, mapping, model.cfg,
                                  dtype=resolve_dtype(dtype, model.hf_base),
                                  max_shard_bytes=max_shard_bytes, progress=progress)
        hf_cfg = mapping.hf_config(model.cfg, base=model.hf_base,
                                   dtype=HF_DTYPE_NAMES[out_dtype])
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
        if model.tokenizer_dir is not None:
            hf_io.copy_tokenizer_files(model.tokenizer_dir, tmp)
    return Path(out)
