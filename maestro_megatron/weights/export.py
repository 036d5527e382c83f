"""Read a torch_dist checkpoint's global tensors one HF shard at a time -> safetensors.

No model and no process group: the checkpoint's metadata gives each key's global shape
(layers stacked on axis 0, vocabulary padded, QKV interleaved, fc1 = [gate; up], whatever
TP/PP wrote it), and one read per output shard fetches the per-layer boxes of its
tensors (:mod:`~maestro_megatron.weights.dcp_read`). Each output file is written
tensor by tensor as the reads come in, so the peak memory does not grow with the model
or the shard size: about two read buckets, or two copies of the largest tensor.
"""

from __future__ import annotations

from pathlib import Path

import torch

from maestro_megatron.config.schema import ModelConfig
from maestro_megatron.weights import hf_io
from maestro_megatron.weights.ckpt_model import key_prefix
from maestro_megatron.weights.dcp_read import Box, read_boxes, tensor_metadata
from maestro_megatron.weights.errors import ConversionError
from maestro_megatron.weights.mapping import DecoderMapping
from maestro_megatron.weights.units import Unit, hf_shapes, to_hf

_MODEL_ROOTS = ("embedding.", "decoder.", "output_layer.")
READ_BUCKET_BYTES = 256 * 2**20
"""Output bytes converted per checkpoint read: the peak memory is about twice this (the
megatron tensors read and the HF tensors made of them) or twice the largest tensor."""


def _expected_shape(unit: Unit, cfg: ModelConfig) -> tuple[int, ...]:
    """Full megatron shape without vocabulary padding and without the layer axis."""
    shapes = hf_shapes(unit, cfg)
    if unit.kind in ("qkv", "fc1"):
        return (sum(s[0] for s in shapes), *shapes[0][1:])
    return shapes[0]


def _check(unit: Unit, meta: dict, prefix: str, cfg: ModelConfig) -> None:
    key = prefix + unit.ckpt_key
    if key not in meta:
        raise ConversionError(f"checkpoint has no tensor {key} (model config implies it)")
    shape = meta[key][0]
    if unit.layer is not None:
        if shape[0] != cfg.num_layers:
            raise ConversionError(f"{key} stacks {shape[0]} layers, config has {cfg.num_layers}")
        shape = shape[1:]
    want = _expected_shape(unit, cfg)
    if unit.kind == "vocab":
        ok = shape[1:] == want[1:] and shape[0] >= want[0]
    else:
        ok = shape == want
    if not ok:
        raise ConversionError(f"checkpoint tensor {key} has shape {list(shape)}, "
                              f"the model config implies {list(want)}")


def _check_all_used(units: list[Unit], meta: dict, prefix: str) -> None:
    """Every model tensor of the checkpoint goes into the output (no weight is lost)."""
    used = {prefix + unit.ckpt_key for unit in units}
    for key in meta:
        if key.startswith(prefix) and key[len(prefix):].startswith(_MODEL_ROOTS) \
                and key not in used:
            raise ConversionError(f"checkpoint tensor {key} has no place in the model the "
                                  "config describes (it would be lost)")


def _check_padding(key: str, full: torch.Tensor, vocab_size: int) -> None:
    """Rows past the vocabulary are padding, which megatron keeps at zero."""
    if full.shape[0] > vocab_size and bool(full[vocab_size:].any()):
        raise ConversionError(
            f"checkpoint tensor {key}: rows {vocab_size}..{full.shape[0] - 1} are not zero, so "
            f"they are not vocabulary padding; is the vocabulary size {vocab_size} right?")


def _boxes(unit: Unit, meta: dict, prefix: str) -> list[Box]:
    """(offsets, sizes) of the parts of the unit's tensor read from its key's global
    tensor: the whole tensor, or fc1's gate and up halves (each a whole saved record
    when TP=1 saved it, so read without a copy)."""
    shape = meta[prefix + unit.ckpt_key][0]
    lead = () if unit.layer is None else (unit.layer,)
    rest = shape[len(lead):]
    if unit.kind != "fc1":
        return [(lead + (0,) * len(rest), (1,) * len(lead) + rest)]
    half = rest[0] // 2
    return [(lead + (row,) + (0,) * (len(rest) - 1), (1,) * len(lead) + (half, *rest[1:]))
            for row in (0, half)]


def _hf_tensors(unit: Unit, key: str, parts: list[torch.Tensor],
                cfg: ModelConfig) -> list[torch.Tensor]:
    """The unit's HF tensors from the parts :func:`_boxes` named of ``key``."""
    if unit.layer is not None:
        parts = [part[0] for part in parts]  # the layer axis
    if unit.kind == "fc1":
        return parts  # [gate, up]
    if unit.kind == "vocab":
        _check_padding(key, parts[0], cfg.vocab_size)
    return to_hf(unit, parts[0], cfg)


def _read_shard(ckpt: Path, units: list[Unit], meta: dict, prefix: str, cfg: ModelConfig,
                out_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """HF name -> tensor (``out_dtype``) of ``units``, read from ``ckpt`` in one read."""
    requests = [(prefix + unit.ckpt_key, _boxes(unit, meta, prefix)) for unit in units]
    boxes: dict[str, list[Box]] = {}
    for key, parts in requests:
        boxes.setdefault(key, []).extend(parts)
    loaded = read_boxes(ckpt, boxes, {key: meta[key][1] for key in boxes})
    tensors = {}
    for unit, (key, parts) in zip(units, requests):  # a key's boxes come back in order
        got = [loaded[key].pop(0) for _ in parts]
        for name, tensor in zip(unit.hf_names, _hf_tensors(unit, key, got, cfg)):
            tensors[name] = tensor.to(out_dtype)
    return tensors


def export_shards(ckpt: Path, out: Path, mapping: DecoderMapping, cfg: ModelConfig, *,
                  dtype: torch.dtype | None, max_shard_bytes: int,
                  read_bucket_bytes: int = READ_BUCKET_BYTES,
                  progress: bool = True) -> torch.dtype:
    """Write ``out/model*.safetensors`` (+ index if > 1 shard), each file streamed
    (`hf_io.StreamingShard`) from reads of at most ``read_bucket_bytes`` of output
    tensors (one unit at least). Returns the output dtype."""
    from tqdm import tqdm

    meta = tensor_metadata(ckpt)
    prefix = key_prefix(meta)
    units = mapping.units(cfg)
    for unit in units:
        _check(unit, meta, prefix, cfg)
    _check_all_used(units, meta, prefix)
    out_dtype = dtype or meta[prefix + units[0].ckpt_key][1]
    item = torch.empty((), dtype=out_dtype).element_size()
    sizes = [sum(item * torch.Size(s).numel() for s in hf_shapes(u, cfg)) for u in units]
    shards = hf_io.plan_shards(sizes, max_shard_bytes)
    weight_map: dict[str, str] = {}
    bar = tqdm(total=len(units), desc="megatron->hf", disable=not progress)
    for index, members in enumerate(shards):
        file = hf_io.shard_file_name(index, len(shards))
        shard = hf_io.StreamingShard(out / file, [
            (name, shape, out_dtype) for i in members
            for name, shape in zip(units[i].hf_names, hf_shapes(units[i], cfg))])
        for group in hf_io.plan_shards([sizes[i] for i in members], read_bucket_bytes):
            chosen = [units[members[j]] for j in group]
            for name, tensor in _read_shard(ckpt, chosen, meta, prefix, cfg, out_dtype).items():
                shard.write(name, tensor)
                weight_map[name] = file
            bar.update(len(group))
        shard.finish()
    bar.close()
    if len(shards) > 1:
        hf_io.write_index(out, weight_map, sum(sizes))
    return out_dtype
