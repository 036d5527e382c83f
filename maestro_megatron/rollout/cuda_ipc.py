"""Refit buckets to a colocated GPU engine by CUDA IPC: no host copy (DESIGN.md section 4).

The trainer (producer) copies each bucket's tensors, device to device, into one byte
buffer on its GPU (`CudaIpcBucketBuffer`, reused by the buckets of one refit, at the
`bucket_io.bucket_layout` offsets) and exports it once per engine worker
(`torch.multiprocessing.reductions.reduce_tensor`, as NeMo-RL and vLLM's own
`weight_transfer.ipc_engine` do). Each worker (consumer) maps its export
(`open_ipc_bucket`) and its loader reads the tensors in place.

torch pairs one export with one consumer's rebuild and release (a cross-process
reference count): every worker opens its own export once per bucket and drops it when
the bucket is loaded, so once the refit ends the producer's buffer is freed
(`torch.cuda.ipc_collect`). A worker on another GPU than the buffer maps it over peer
access (cudaIpcMemLazyEnablePeerAccess).

Exports are plain bytes / ints / bools / str (`ipc_export`): vLLM's msgpack RPC carries
them without pickle. Torch only (the vLLM worker imports this too).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from maestro_megatron.rollout.bucket_io import (
    GROW,
    BucketLayout,
    NamedTensor,
    _dtype,
    _views,
    bucket_layout,
)

IpcExport = list
"""One export of a CUDA tensor, plain values: [size, stride, storage offset (elements),
dtype name, storage handle, storage bytes, storage offset in its allocation (bytes),
ref-counter handle, ref-counter offset, event handle, event sync required]."""


def ipc_export(tensor: torch.Tensor) -> IpcExport:
    """`reduce_tensor`'s rebuild arguments of a CUDA tensor as plain values (the tensor
    and storage classes and the device are set again by `ipc_import`). Each call is a
    new export that one consumer must open and release once."""
    from torch.multiprocessing.reductions import reduce_tensor

    if not tensor.is_cuda:
        raise ValueError(f"CUDA IPC needs a CUDA tensor, got one on {tensor.device}")
    _, args = reduce_tensor(tensor.detach())
    (_cls, size, stride, offset, _storage_cls, dtype, _device, handle, storage_bytes,
     storage_offset, _grad, counter_handle, counter_offset, event_handle, event_sync) = args
    return [list(size), list(stride), int(offset), str(dtype).removeprefix("torch."),
            handle, int(storage_bytes), int(storage_offset), counter_handle,
            int(counter_offset), event_handle, bool(event_sync)]


def ipc_import(export: IpcExport, device_index: int) -> torch.Tensor:
    """The tensor of `export` mapped into this process on CUDA device `device_index`
    (this process's numbering: the sender's index may differ)."""
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    (size, stride, offset, dtype, handle, storage_bytes, storage_offset, counter_handle,
     counter_offset, event_handle, event_sync) = export
    return rebuild_cuda_tensor(torch.Tensor, torch.Size(size), tuple(stride), offset,
                               torch.UntypedStorage, _dtype(dtype), device_index, handle,
                               storage_bytes, storage_offset, False, counter_handle,
                               counter_offset, event_handle, event_sync)


class CudaIpcBucketBuffer:
    """A byte buffer on the trainer's GPU that `write` copies a bucket into and `exports`
    hands to the engine's workers. It grows to the largest bucket of the refit; `close`
    frees it (call it when the refit ends: training never holds it)."""

    def __init__(self, device: torch.device | str | int) -> None:
        self.device = torch.device("cuda", device) if isinstance(device, int) \
            else torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"CudaIpcBucketBuffer needs a CUDA device, got {self.device}")
        self._base: torch.Tensor | None = None

    @property
    def capacity(self) -> int:
        return 0 if self._base is None else self._base.numel()

    def write(self, bucket: Sequence[NamedTensor]) -> BucketLayout:
        """Copy the bucket's tensors (any device: GPU ones device to device) into the
        buffer; return their layout. Overwrites the previous bucket: call after the
        workers loaded it (the load RPC returned)."""
        layout, end = bucket_layout(bucket)
        if end > self.capacity:
            self._base = None  # the old buffer goes before the new one is allocated
            self._base = torch.empty(max(-(-end // GROW) * GROW, GROW), dtype=torch.uint8,
                                     device=self.device)
        views = _views(self._base, layout)
        with torch.no_grad():
            for name, t in bucket:
                views[name].copy_(t)
        # The workers read on their own streams: every copy is done before any export.
        torch.cuda.current_stream(self.device).synchronize()
        return layout

    def exports(self, num_workers: int) -> list[IpcExport]:
        """One export of the buffer per worker (worker i opens entry i)."""
        if self._base is None:
            raise RuntimeError("CudaIpcBucketBuffer: nothing written")
        return [ipc_export(self._base) for _ in range(num_workers)]

    def close(self) -> None:
        """Drop the buffer; its memory returns once every worker released its mapping."""
        if self._base is not None:
            self._base = None
            torch.cuda.ipc_collect()


def open_ipc_bucket(exports: Sequence[IpcExport], layout: BucketLayout, worker_rank: int,
                    device_index: int) -> dict[str, torch.Tensor]:
    """Worker side: name -> tensor viewing this worker's export (`exports[worker_rank]`)
    as `layout` says, on CUDA device `device_index`. The mapping is released when the
    views are dropped: drop them once the bucket is loaded."""
    if not 0 <= worker_rank < len(exports):
        raise ValueError(f"worker {worker_rank}: the trainer sent {len(exports)} exports")
    return _views(ipc_import(exports[worker_rank], device_index), layout)
