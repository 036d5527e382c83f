"""How a refit bucket (HF-named tensors) travels to a rollout engine (`refit_transport`):
by CUDA IPC to a GPU engine (`cuda_ipc.py`), copied once into a `SharedBucketBuffer` that
a CPU engine's processes on this host map, or as safetensors bytes.

Torch and safetensors only (the vLLM worker imports this too).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import warnings
from collections.abc import Sequence

import torch

NamedTensor = tuple[str, torch.Tensor]
BucketLayout = list[tuple[str, str, list[int], int]]
"""Where a `SharedBucketBuffer` holds each tensor: (name, dtype name as in `torch.float32`
without the prefix, shape, byte offset); plain str/int/list, so msgpack carries it."""
ALIGN = 64
"""Byte alignment of each tensor in a `SharedBucketBuffer` (any dtype, a cache line)."""
GROW = 1 << 20
"""A `SharedBucketBuffer` grows in multiples of this many bytes."""
_READ_MAPS: dict[str, tuple[tuple[int, int], torch.Tensor]] = {}
"""path -> ((inode, size), [size] uint8 view): this process's mappings of writers' buffers."""


TRANSPORTS = ("cuda_ipc", "shared_memory", "bytes")


def refit_transport(engine_device: str, shared_memory: bool) -> str:
    """How buckets go to an engine whose processes run on this host, from its device:
    "cuda_ipc" for a GPU ("cuda") engine: the bucket stays on the GPU and the workers map
    it (no host copy); "shared_memory" for a CPU engine with a `SharedBucketBuffer`;
    "bytes" otherwise (safetensors through the engine's RPC)."""
    if engine_device == "cuda":
        return "cuda_ipc"
    if engine_device != "cpu":
        raise ValueError(f"no refit transport for an engine on {engine_device!r}")
    return "shared_memory" if shared_memory else "bytes"


def _cpu_untied(bucket: Sequence[NamedTensor]) -> dict[str, torch.Tensor]:
    """name -> CPU contiguous tensor (no copy where it already is one); a tensor sharing
    storage with an earlier one (tied weights) is cloned: safetensors refuses shared storage."""
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, t in bucket:
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in storages:
            t = t.clone()
        storages.add(ptr)
        tensors[name] = t
    return tensors


def serialize_bucket(bucket: Sequence[NamedTensor]) -> bytes:
    """safetensors bytes of a bucket (tensors moved to CPU, made contiguous, untied)."""
    from safetensors.torch import save

    return save(_cpu_untied(bucket))


def deserialize_bucket(blob: bytes) -> dict[str, torch.Tensor]:
    """Inverse of `serialize_bucket` (CPU tensors)."""
    from safetensors.torch import load

    return load(blob)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def bucket_layout(bucket: Sequence[NamedTensor]) -> tuple[BucketLayout, int]:
    """The layout of a bucket packed at `ALIGN`-byte offsets, and its total bytes."""
    layout: BucketLayout = []
    end = 0
    for name, t in bucket:
        offset = -(-end // ALIGN) * ALIGN
        layout.append((name, str(t.dtype).removeprefix("torch."), list(t.shape), offset))
        end = offset + _nbytes(t)
    return layout, end


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown tensor dtype {name!r} in a bucket layout")
    return dtype


def _views(base: torch.Tensor, layout: BucketLayout) -> dict[str, torch.Tensor]:
    """name -> tensor viewing `base` ([N] uint8) as `layout` says (no copy)."""
    out = {}
    for name, dtype_name, shape, offset in layout:
        dtype = _dtype(dtype_name)
        numel = 1
        for d in shape:
            numel *= d
        end = offset + numel * dtype.itemsize
        if end > base.numel():
            raise ValueError(f"'{name}' ends at byte {end}, past the buffer's {base.numel()}")
        out[name] = base[offset:end].view(dtype).view(shape)
    return out


class SharedBucketBuffer:
    """Memory shared with this host's processes, into which `write` copies a bucket once.

    A memfd (`os.memfd_create`): it has no name in any file system, so nothing is left
    behind whatever happens to this process; other processes map it by `path`
    (`/proc/<pid>/fd/<fd>`, see `read_shared_bucket`). It grows to the largest bucket
    written and keeps those pages until `close` (reused, already mapped memory: a write
    is one memcpy). Linux only (`os.memfd_create`).
    """

    def __init__(self) -> None:
        self._fd = os.memfd_create("maestro-refit", os.MFD_CLOEXEC)
        self.path = f"/proc/{os.getpid()}/fd/{self._fd}"
        self.capacity = 0
        """Bytes allocated (and mapped here)."""
        self._map: mmap.mmap | None = None
        self._base: torch.Tensor | None = None

    def _reserve(self, nbytes: int) -> torch.Tensor:
        """[capacity] uint8 view of the buffer, grown first to hold `nbytes`."""
        if self._fd < 0:
            raise RuntimeError("SharedBucketBuffer is closed")
        if nbytes > self.capacity or self._base is None:
            capacity = max(-(-nbytes // GROW) * GROW, GROW)
            self._unmap()
            os.posix_fallocate(self._fd, 0, capacity)  # ENOMEM/ENOSPC here, not SIGBUS later
            self._map = mmap.mmap(self._fd, capacity,
                                  flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
            self._base = torch.frombuffer(self._map, dtype=torch.uint8)
            self.capacity = capacity
        return self._base

    def write(self, bucket: Sequence[NamedTensor]) -> BucketLayout:
        """Copy the bucket's tensors (any device, strides, dtype) into the buffer; return
        their layout for `read_shared_bucket`. Overwrites the previous bucket."""
        layout, end = bucket_layout(bucket)
        views = _views(self._reserve(end), layout)
        with torch.no_grad():
            for name, t in bucket:
                views[name].copy_(t)
        return layout

    def _unmap(self) -> None:
        self._base = None
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a view still alive: unmapped with it
                self._map.close()
            self._map = None

    def close(self) -> None:
        """Unmap and close the memfd. Its memory is freed once no process maps it: a reader
        (`read_shared_bucket`) keeps its mapping until it exits."""
        self._unmap()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.capacity = 0


def _read_map(path: str) -> torch.Tensor:
    """[size] uint8 read-only view of a shared mapping of the file at `path`, kept for the
    next call while the file is the same (inode) and has the same size: its pages are
    mapped once, not faulted in again by every bucket."""
    st = os.stat(path)
    key = (st.st_ino, st.st_size)
    cached = _READ_MAPS.get(path)
    if cached is None or cached[0] != key:
        with open(path, "rb") as f:
            mapping = mmap.mmap(f.fileno(), st.st_size, prot=mmap.PROT_READ,
                                flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        with warnings.catch_warnings():  # read-only on purpose: a write faults
            warnings.filterwarnings("ignore", message="The given buffer is not writable")
            _READ_MAPS[path] = (key, torch.frombuffer(mapping, dtype=torch.uint8))
    return _READ_MAPS[path][1]


def read_shared_bucket(path: str, layout: BucketLayout) -> dict[str, torch.Tensor]:
    """The tensors that `SharedBucketBuffer.write` put at `path`: CPU views of a read-only
    shared mapping of it (no copy; writing to them kills the process). Valid until the
    writer's next `write`: copy what must outlive that."""
    return _views(_read_map(path), layout)
