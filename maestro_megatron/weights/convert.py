"""HF safetensors <-> megatron-core torch_dist checkpoints (the two conversions).

hf-to-megatron runs in 1 process or under torchrun/srun with TP*PP processes; each
rank builds its (uninitialised) GPTModel shard, reads only its slices of the HF
tensors, and ``dist_checkpointing.save`` writes the sharded checkpoint collectively.
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
from maestro_megatron.weights.errors import ConversionError
from maestro_megatron.weights.output import atomic_output
from maestro_megatron.weights.registry import get_mapping, mapping_for_hf_config

META_NAME = "maestro_weights.json"
"""Beside the torch_dist files: architecture, ModelConfig, source HF config, layout."""
ASSETS_DIR = "hf_assets"
"""Tokenizer / generation files of the source HF directory, kept for the way back."""
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


def _build_model(cfg: ModelConfig, tp: int, pp: int, groups, dtype: torch.dtype):
    """This rank's GPTModel shard: local spec, CPU, uninitialised memory, ``dtype``."""
    from maestro_megatron.config.schema import ParallelConfig, PrecisionConfig
    from maestro_megatron.megatron.model import build_gpt_model, build_transformer_config

    parallel = ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp)
    precision = PrecisionConfig(transformer_impl="local")
    config = build_transformer_config(cfg, parallel, precision)
    config.perform_initialization = False  # every weight is overwritten from HF
    config.use_cpu_initialization = True
    config.params_dtype = dtype
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
    from maestro_megatron.weights.model_io import import_hf_weights, save_megatron_checkpoint

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
            chunks = _build_model(build_cfg, build_tp, build_pp, groups, torch_dtype)
            import_hf_weights(chunks, hf, mapping, build_cfg, tp_rank=groups.tp_rank,
                              tp_size=build_tp, padded_vocab=padded_vocab_size(cfg, tp),
                              progress=progress and writer)
            save_megatron_checkpoint(chunks, tmp)
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
    """(architecture, ModelConfig, source HF config or None) of a megatron checkpoint.

    From ``maestro_weights.json``, or else from ``config_path`` (ModelConfig fields as
    JSON/YAML, or a recipe with a ``model:`` section) plus ``architecture``.
    """
    import yaml

    meta_file = Path(ckpt) / META_NAME
    if config_path is None:
        if not meta_file.is_file():
            raise ConversionError(f"{meta_file} not found: pass --config MODEL.yaml "
                                  "(and --architecture) for checkpoints not made by this tool")
        meta = json.loads(meta_file.read_text())
        return meta["architecture"], ModelConfig(**meta["model_config"]), meta.get("hf_config")
    data = yaml.safe_load(Path(config_path).read_text()) or {}
    data = data.get("model", data)
    try:
        cfg = ModelConfig(**data)
    except TypeError as exc:
        raise ConversionError(f"{config_path}: {exc}") from None
    if architecture is None:
        architecture = ("Qwen3ForCausalLM" if cfg.qk_layernorm else
                        "Qwen2ForCausalLM" if cfg.add_qkv_bias else "LlamaForCausalLM")
    return architecture, cfg, None


def megatron_to_hf(megatron_dir: Path, out: Path, *, dtype: str | None = None,
                   max_shard_bytes: int = 5 * 2**30, config_path: Path | None = None,
                   architecture: str | None = None, progress: bool = True) -> Path:
    """Convert a torch_dist checkpoint (any TP/PP it was saved with) into an HF directory."""
    from maestro_megatron.weights.export import export_shards

    check_output(out)
    megatron_dir = Path(megatron_dir)
    if not (megatron_dir / "metadata.json").is_file():
        raise ConversionError(f"{megatron_dir} is not a megatron dist checkpoint "
                              "(no metadata.json)")
    arch, cfg, hf_base = read_meta(megatron_dir, config_path, architecture)
    mapping = get_mapping(arch)
    with atomic_output(out) as tmp:
        out_dtype = export_shards(megatron_dir, tmp, mapping, cfg,
                                  dtype=resolve_dtype(dtype, hf_base),
                                  max_shard_bytes=max_shard_bytes, progress=progress)
        hf_cfg = mapping.hf_config(cfg, base=hf_base, dtype=HF_DTYPE_NAMES[out_dtype])
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
        hf_io.copy_tokenizer_files(megatron_dir / ASSETS_DIR, tmp)
    return Path(out)
