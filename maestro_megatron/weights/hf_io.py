"""Hugging Face checkpoint directories: lazy per-tensor reading and sharded writing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from maestro_megatron.weights.errors import ConversionError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja",
    "chat_template.json", "generation_config.json",
)
"""Files copied alongside the weights (tokenizer, chat template, generation defaults)."""


def read_config(path: Path) -> dict:
    """``path/config.json`` as a dict (ConversionError if absent or not JSON)."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise ConversionError(f"{file} not found (is {path} a Hugging Face model directory?)")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{file} is not valid JSON: {exc}") from None


def open_safetensors(path: Path):
    """``safe_open`` of one file; a torn or foreign file is a ConversionError naming it.

    safetensors checks the header and that the file is as long as the header says
    (truncation); it stores no checksums, so flipped bits inside tensor data pass.
    """
    try:
        return safe_open(path, framework="pt")
    except Exception as exc:  # SafetensorError (bad header, short file), OSError
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        raise ConversionError(f"{path}: not a readable safetensors file ({lines[0]})") from None


class HFCheckpoint:
    """Safetensors weights of an HF directory, read one tensor (or slice) at a time.

    Every file is opened (its header checked) up front; files stay memory-mapped by
    safetensors and only the requested rows/columns are copied.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.config = read_config(self.path)
        self._handles: dict[str, object] = {}
        self.files = self._weight_map()

    def _weight_map(self) -> dict[str, str]:
        index = self.path / INDEX_NAME
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text()).get("weight_map") or {}
            except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as exc:
                raise ConversionError(f"{index} is not a valid index ({exc})") from None
            for file in sorted(set(weight_map.values())):
                if not (self.path / file).is_file():
                    raise ConversionError(f"{index} names shard {file}, which does not exist")
                self._handles[file] = open_safetensors(self.path / file)
            for name, file in weight_map.items():
                if name not in self._handles[file].keys():
                    raise ConversionError(f"{index} puts {name} in {file}, which lacks it")
            return weight_map
        files = sorted(p.name for p in self.path.glob("*.safetensors"))
        if not files:
            raise ConversionError(f"no *.safetensors weights in {self.path}")
        weight_map = {}
        for file in files:
            self._handles[file] = open_safetensors(self.path / file)
            weight_map.update(dict.fromkeys(self._handles[file].keys(), file))
        return weight_map

    def names(self) -> set[str]:
        """All tensor names."""
        return set(self.files)

    def _slice(self, name: str):
        if name not in self.files:
            raise ConversionError(f"tensor {name} not found in {self.path}")
        file = self.files[name]
        if file not in self._handles:  # after close()
            self._handles[file] = open_safetensors(self.path / file)
        return self._handles[file].get_slice(name)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of tensor ``name`` (from the header; no data read)."""
        return tuple(self._slice(name).get_shape())

    def read(self, name: str, dim: int | None = None, start: int = 0,
             stop: int = 0) -> torch.Tensor:
        """Tensor ``name`` (``dim`` None), or its slice [start, stop) along dim 0 or 1."""
        sl = self._slice(name)
        if dim is None:
            return sl[:]
        if dim == 0:
            return sl[start:stop]
        return sl[:, start:stop]

    def close(self) -> None:
        self._handles.clear()


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """Copy the :data:`TOKENIZER_FILES` present in ``src`` to ``dst``; returns their names."""
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(src) / name, dst / name)
            copied.append(name)
    return copied


def plan_shards(sizes: list[int], max_bytes: int) -> list[list[int]]:
    """Group consecutive items (byte sizes) into shards of at most ``max_bytes``.

    An item larger than ``max_bytes`` gets a shard of its own. Returns item indices.
    """
    shards: list[list[int]] = [[]]
    total = 0
    for i, size in enumerate(sizes):
        if shards[-1] and total + size > max_bytes:
            shards.append([])
            total = 0
        shards[-1].append(i)
        total += size
    return shards if shards[0] else []


def shard_file_name(index: int, count: int) -> str:
    """``model.safetensors`` for one shard, else ``model-0000i-of-0000n.safetensors``."""
    if count == 1:
        return SINGLE_NAME
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def write_shard(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """One safetensors file with the ``pt`` format metadata transformers expects."""
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
              metadata={"format": "pt"})


def write_index(out: Path, weight_map: dict[str, str], total_size: int) -> None:
    """``model.safetensors.index.json`` (only written for more than one shard)."""
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
