"""Hugging Face checkpoint directories: lazy per-tensor reading and sharded writing."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import torch
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


SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32,
                      "F64": torch.float64, "I64": torch.int64, "I32": torch.int32,
                      "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn,
                      "F8_E5M2": torch.float8_e5m2}
SAFETENSORS_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
_MAX_HEADER = 100 * 2**20


class SafetensorsFile:
    """One safetensors file, read with plain file reads (no memory map).

    safetensors' own reader maps the file, so every byte it reads stays in the process's
    resident set until the file is closed: converting a 16 GB model that way shows a
    16 GB resident set. Here each read copies its bytes into a tensor of its own, and
    the header is checked as safetensors checks it: valid JSON, known dtypes, offsets
    that tile the data area, and a file as long as the header says.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 (closed by close())
            size = os.fstat(self._file.fileno()).st_size
            (length,) = struct.unpack("<Q", self._read_exact(0, 8))
            if not 2 <= length <= min(_MAX_HEADER, size - 8):
                raise ValueError(f"header length {length} for a file of {size} bytes")
            header = json.loads(self._read_exact(8, length))
        except (OSError, ValueError, struct.error) as exc:  # JSONDecodeError is a ValueError
            raise ConversionError(f"{self.path}: not a readable safetensors file ({exc})") \
                from None
        self.metadata = header.pop("__metadata__", None) or {}
        self._base = 8 + length
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        end = 0
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"]):
            dtype = SAFETENSORS_DTYPES.get(info.get("dtype"))
            start, stop = info["data_offsets"]
            shape = tuple(int(d) for d in info["shape"])
            nbytes = torch.Size(shape).numel() * (dtype.itemsize if dtype else 0)
            if dtype is None or start != end or stop - start != nbytes:
                raise ConversionError(f"{self.path}: not a readable safetensors file (tensor "
                                      f"{name}: dtype {info.get('dtype')}, offsets "
                                      f"{info['data_offsets']})")
            self.entries[name] = (dtype, shape, start, stop)
            end = stop
        if self._base + end > size:
            raise ConversionError(f"{self.path}: not a readable safetensors file (truncated: "
                                  f"{size} bytes, the header needs {self._base + end})")

    def _read_exact(self, offset: int, count: int, into=None) -> bytes:
        buffer = into if into is not None else bytearray(count)
        view, done = memoryview(buffer).cast("B"), 0
        while done < count:
            got = os.preadv(self._file.fileno(), [view[done:]], offset + done)
            if got == 0:
                raise OSError(f"unexpected end of file at byte {offset + done}")
            done += got
        return buffer

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1]

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        """Tensor ``name``, or its rows [start, stop) (dim 0: contiguous bytes)."""
        dtype, shape, begin, _ = self.entries[name]
        rows = shape[0] if shape else 1
        start, stop = (0, rows) if start is None else (start, stop)
        if not 0 <= start <= stop <= rows:
            raise ValueError(f"rows [{start}, {stop}) outside {list(shape)}")
        row_bytes = torch.Size(shape[1:]).numel() * dtype.itemsize
        out = torch.empty((stop - start, *shape[1:]) if shape else (), dtype=dtype)
        if out.numel():
            self._read_exact(self._base + begin + start * row_bytes, out.numel() * dtype.itemsize,
                             into=out.view(-1).view(torch.uint8).numpy())
        return out

    def close(self) -> None:
        self._file.close()


def open_safetensors(path: Path) -> SafetensorsFile:
    """One safetensors file, its header checked; a torn or foreign file is a
    ConversionError naming it (no checksums: flipped bits inside tensor data pass)."""
    return SafetensorsFile(path)


class StreamingShard:
    """A safetensors file written one tensor at a time: the header (every name, dtype
    and shape, known in advance) first, then each tensor's bytes as it is produced, so
    the shard is never held in memory. The result is what ``safetensors.torch.save_file``
    writes for the same tensors (format ``pt``), in the given order."""

    def __init__(self, path: Path, specs: list[tuple[str, tuple[int, ...], torch.dtype]]):
        self.path, self.order = Path(path), [name for name, _, _ in specs]
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        self.specs = {}
        for name, shape, dtype in specs:
            size = torch.Size(shape).numel() * dtype.itemsize
            header[name] = {"dtype": SAFETENSORS_NAMES[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + size]}
            self.specs[name] = (tuple(shape), dtype)
            offset += size
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the data area starts 8-byte aligned
        self._file = open(self.path, "wb")  # noqa: SIM115 (closed by finish())
        self._file.write(struct.pack("<Q", len(text)) + text)
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """The next tensor, in the order given; shape and dtype as announced."""
        if self._next >= len(self.order) or name != self.order[self._next]:
            expected = self.order[self._next] if self._next < len(self.order) else "none"
            raise ValueError(f"{self.path.name}: got {name}, expected {expected}")
        shape, dtype = self.specs[name]
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise ValueError(f"{name}: {tuple(tensor.shape)} {tensor.dtype}, the header says "
                             f"{shape} {dtype}")
        self._file.write(tensor.contiguous().view(-1).view(torch.uint8).numpy().data)
        self._next += 1

    def finish(self) -> None:
        if self._next != len(self.order):
            raise ValueError(f"{self.path.name}: {len(self.order) - self._next} tensors "
                             "were never written")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


class HFCheckpoint:
    """Safetensors weights of an HF directory, read one tensor (or slice) at a time.

    Every file is opened (its header checked) up front; a read copies only the requested
    rows (or, for columns, the tensor) from the file, nothing stays mapped.
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
        return self._handles[file]

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of tensor ``name`` (from the header; no data read)."""
        return self._slice(name).shape(name)

    def read(self, name: str, dim: int | None = None, start: int = 0,
             stop: int = 0) -> torch.Tensor:
        """Tensor ``name`` (``dim`` None), or its slice [start, stop) along dim 0 or 1."""
        file = self._slice(name)
        if dim is None:
            return file.read(name)
        if dim == 0:
            return file.read(name, start, stop)
        return file.read(name)[:, start:stop].contiguous()

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
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
