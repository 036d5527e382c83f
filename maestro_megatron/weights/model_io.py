"""Weights in and out of live megatron ``GPTModel`` chunks, and torch_dist checkpoints.

These run on every rank of a Megatron layout (any TP/PP/VPP); each rank touches only
its own shard.
"""

from __future__ import annotations

from pathlib import Path

import torch

from maestro_megatron.config.schema import ModelConfig
from maestro_megatron.megatron.model import unwrap_model
from maestro_megatron.weights.errors import ConversionError
from maestro_megatron.weights.hf_io import HFCheckpoint
from maestro_megatron.weights.mapping import DecoderMapping
from maestro_megatron.weights.units import read_fc1_half, read_megatron_shard

VOCAB_KEYS = ("embedding.word_embeddings.weight", "output_layer.weight")


def _spec(model: torch.nn.Module) -> str:
    impl = getattr(model.config, "transformer_impl", "local")
    return "transformer_engine" if impl == "transformer_engine" else "local"


def _targets(model, mapping: DecoderMapping, cfg: ModelConfig):
    """(unit, parameter) pairs this chunk holds; tied output layers get the embedding."""
    params = dict(model.named_parameters())
    local = {layer.layer_number - 1: j for j, layer in enumerate(model.decoder.layers)}
    spec = _spec(model)
    for unit in mapping.units(cfg):
        if unit.layer is not None and unit.layer not in local:
            continue
        names = [unit.param_name(spec, local.get(unit.layer))]
        if cfg.tie_embeddings and names[0] == VOCAB_KEYS[0]:
            names.append(VOCAB_KEYS[1])  # last stage's copy of the tied embedding (PP > 1)
        for name in names:
            if name in params:
                yield unit, params[name]


@torch.no_grad()
def import_hf_weights(model_chunks: list[torch.nn.Module], hf: HFCheckpoint,
                      mapping: DecoderMapping, cfg: ModelConfig, *, tp_rank: int,
                      tp_size: int, padded_vocab: int, progress: bool = False) -> int:
    """Copy HF weights into this rank's chunks, one tensor slice at a time.

    Each shard is written straight into its parameter (merged QKV / fc1 and the padded
    vocabulary included). Peak extra memory: the HF slices of one parameter.
    Returns the number of parameters filled.
    """
    from tqdm import tqdm

    count = 0
    for chunk in model_chunks:
        model = unwrap_model(chunk)
        pairs = list(_targets(model, mapping, cfg))
        for unit, param in tqdm(pairs, desc="hf->megatron", disable=not progress):
            try:
                read_megatron_shard(unit, hf.read, cfg, padded_vocab, tp_rank, tp_size,
                                    out=param)
            except ValueError as exc:
                raise ConversionError(f"{unit.hf_names}: {exc} ({unit.param_name()})") from None
            count += 1
    return count


def hf_sources(model_chunks: list[torch.nn.Module], hf: HFCheckpoint, mapping: DecoderMapping,
               cfg: ModelConfig, *, tp_rank: int, tp_size: int,
               padded_vocab: int) -> dict[int, object]:
    """id(parameter) -> ``make(shape, storage_offset)``: this rank's shard of the
    parameter (or of the row block of it that starts at that element: a SwiGLU fc1 half)
    read from ``hf`` in the parameter's dtype. The data of chunks built on the ``meta``
    device, made while the checkpoint is written (`dist_save.LazySource`)."""
    def reader(unit, param):
        def make(shape: tuple, offset: int) -> torch.Tensor:
            try:
                if tuple(shape) == tuple(param.shape) and offset == 0:
                    return read_megatron_shard(unit, hf.read, cfg, padded_vocab, tp_rank,
                                               tp_size, out=torch.empty(shape, dtype=param.dtype))
                if unit.kind == "fc1" and 2 * shape[0] == param.shape[0]:
                    half = offset // (shape[0] * param.shape[1])
                    return read_fc1_half(unit, hf.read, cfg, tp_rank, tp_size, half,
                                         out=torch.empty(shape, dtype=param.dtype))
            except ValueError as exc:
                raise ConversionError(f"{unit.hf_names}: {exc} ({unit.param_name()})") \
                    from None
            raise ConversionError(f"{unit.param_name()}: no HF source for the block "
                                  f"{list(shape)} at element {offset}")
        return make

    sources = {}
    for chunk in model_chunks:
        model = unwrap_model(chunk)
        for unit, param in _targets(model, mapping, cfg):
            sources[id(param)] = reader(unit, param)
        missing = [n for n, p in model.named_parameters() if id(p) not in sources]
        if missing:
            raise ConversionError(f"no HF tensor maps to {missing}")
    return sources


def _sharded_state_dict(model_chunks: list[torch.nn.Module]) -> dict:
    if len(model_chunks) == 1:
        return unwrap_model(model_chunks[0]).sharded_state_dict()
    return {f"model{i}": unwrap_model(m).sharded_state_dict() for i, m in enumerate(model_chunks)}


def save_megatron_checkpoint(model_chunks: list[torch.nn.Module], ckpt_dir: Path,
                             sources: dict | None = None, progress: bool = False) -> None:
    """``dist_checkpointing.save`` of the model weights (collective over all ranks),
    each rank writing its files itself (:mod:`~maestro_megatron.weights.dist_save`).
    sources: for chunks built on ``meta``, `hf_sources` (each tensor made as written,
    with a progress bar when `progress`)."""
    from megatron.core import dist_checkpointing

    from maestro_megatron.weights.dist_save import InProcessSaveStrategy, LazySource

    Path(ckpt_dir).mkdir(parents=True, exist_ok=True)
    strategy = InProcessSaveStrategy(LazySource(sources, progress)
                                     if sources is not None else None)
    dist_checkpointing.save(_sharded_state_dict(model_chunks), str(ckpt_dir),
                            sharded_strategy=strategy)


@torch.no_grad()
def load_megatron_checkpoint(model_chunks: list[torch.nn.Module], ckpt_dir: Path) -> None:
    """Load a torch_dist checkpoint's weights into chunks of any TP/PP/VPP layout.

    dist_checkpointing reshards QKV, fc1 and row/column splits on load. The embedding
    and output layer are padded to a multiple of ``make_vocab_size_divisible_by * TP``,
    which differs between some TP sizes; when the saved rows differ from the model's,
    this rank reads the whole saved tensor and copies its own rows (zeros past the end).
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedObject, ShardedTensor

    from maestro_megatron.weights.dcp_read import checkpoint_keys

    ckpt_dir = str(ckpt_dir)
    meta = dist_checkpointing.load_tensors_metadata(ckpt_dir)
    saved_objects = {k.split("/shard_")[0] for k in checkpoint_keys(Path(ckpt_dir))}
    sharded = _sharded_state_dict(model_chunks)
    single = len(model_chunks) == 1
    flat = [sharded] if single else [sharded[f"model{i}"] for i in range(len(model_chunks))]
    refill = []  # (chunk index, state dict key, the model's ShardedTensor, saved shape)
    absent = [set() for _ in flat]  # module extra states the checkpoint lacks
    for i, sd in enumerate(flat):
        for name, sh in list(sd.items()):
            if isinstance(sh, ShardedObject) and sh.key not in saved_objects:
                # e.g. TE's core_attention._extra_state in a checkpoint written with the
                # local spec: the module keeps its freshly initialised extra state.
                if not name.endswith("_extra_state"):
                    raise ConversionError(f"checkpoint has no object {sh.key}")
                absent[i].add(name)
                del sd[name]
                continue
            if not isinstance(sh, ShardedTensor) or sh.key not in meta:
                continue
            saved = tuple(meta[sh.key].global_shape)
            if saved == tuple(sh.global_shape):
                continue
            if sh.key not in VOCAB_KEYS or saved[1:] != tuple(sh.global_shape[1:]):
                raise ConversionError(f"checkpoint tensor {sh.key} has shape {list(saved)}, "
                                      f"the model expects {list(sh.global_shape)}")
            refill.append((i, name, sh, saved))
            del sd[name]
    state = dist_checkpointing.load(sharded, ckpt_dir)
    states = [state] if single else [state[f"model{i}"] for i in range(len(model_chunks))]
    if refill:
        full = {sh.key: ShardedTensor.from_rank_offsets(
            sh.key, torch.empty(saved, dtype=meta[sh.key].dtype), replica_id=0)
            for _, _, sh, saved in refill}
        full = dist_checkpointing.load(full, ckpt_dir)
        for i, name, sh, _ in refill:
            start = sh.global_offset[0]
            rows = full[sh.key][start:start + sh.local_shape[0]]
            local = torch.zeros(sh.local_shape, dtype=sh.data.dtype)
            local[: rows.shape[0]] = rows
            states[i][name] = local
    for chunk, sd, skipped in zip(model_chunks, states, absent):
        result = unwrap_model(chunk).load_state_dict(sd, strict=not skipped)
        missing = set(getattr(result, "missing_keys", ())) - skipped
        if missing or getattr(result, "unexpected_keys", None):
            raise ConversionError(f"checkpoint does not fit the model: missing {sorted(missing)}, "
                                  f"unexpected {sorted(result.unexpected_keys)}")
