"""``dist_checkpointing.save`` in the calling process: the torch_dist format, written
without megatron-core's writer processes.

megatron-core's default torch_dist strategy hands a rank's files to writer processes
(``FileSystemWriterAsync``: a spawned ``multiprocessing`` Manager for the results, then
one forked process per file), which lets a training step overlap the write. A converter
has nothing to overlap: it waits for them, and starting them (spawning the Manager,
forking a process that holds the whole model) costs far more than the write itself.

:class:`InProcessSaveStrategy` plans exactly as megatron-core's strategy does (same
planner, same files ``__<rank>_<i>.distcp``, same records, same ``.metadata``) and
writes each file with megatron-core's own per-file writer, in this process, one file
after another. ``dist_checkpointing.load`` and the trainer read the result unchanged.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable
from pathlib import Path

import torch
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncRequest
from megatron.core.dist_checkpointing.strategies.filesystem_async import (
    FileSystemWriterAsync,
    _split_by_size_and_type,
)
from megatron.core.dist_checkpointing.strategies.state_dict_saver import (
    save_state_dict_async_plan,
)
from megatron.core.dist_checkpointing.strategies.torch import (
    MCoreSavePlanner,
    TorchDistSaveShardedStrategy,
    _replace_state_dict_keys_with_sharded_keys,
    mcore_to_pyt_state_dict,
)
from torch.distributed.checkpoint.filesystem import DEFAULT_SUFFIX
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner, WriteItemType


class _Compact:
    """A file's (write item, tensor) pairs, each tensor made compact only as it is
    written: a view (e.g. one half of a SwiGLU fc1 weight) is copied into its own
    storage, as megatron-core's writer does up front, so ``torch.save`` writes the
    view's elements and not its whole base tensor. With a `LazySource`, the tensors are
    meta placeholders and each is made from the source just before it is written."""

    def __init__(self, pairs: list, source: LazySource | None = None) -> None:
        self.pairs, self.source = pairs, source

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self):
        for item, tensor in self.pairs:
            if self.source is not None:
                tensor = self.source.tensor(item, tensor)
            yield item, _compact(tensor)


class LazySource:
    """The data of a model built on the ``meta`` device, made one tensor at a time while
    the checkpoint is written (the converter: read from the HF files on demand).

    ``make``: id(meta parameter) -> ``make(shape, storage_offset)``, the real tensor of
    the parameter's view with that shape starting at that element (the parameter
    itself: its shape and 0; a SwiGLU fc1 half: half the rows, at 0 or half way). A
    write item names its tensor by key and global offset; `register` maps each
    ShardedTensor of the state dict to the parameter and view it stands for. Nothing is
    cached: each item's bytes exist only while it is written. progress: a tqdm bar over
    the tensors this rank writes (`expect` sets its length once the files are planned).
    """

    def __init__(self, make: dict[int, Callable[[tuple, int], torch.Tensor]],
                 progress: bool = False) -> None:
        self.make, self.progress = make, progress
        self.views: dict[tuple[str, tuple[int, ...]], tuple] = {}
        self._bar = None

    def expect(self, count: int) -> None:
        """This rank writes `count` tensors from the source."""
        if self.progress and count:
            from tqdm import tqdm

            self._bar = tqdm(total=count, desc="hf->megatron")

    def register(self, sharded_state_dict) -> None:
        from megatron.core.dist_checkpointing.dict_utils import nested_values
        from megatron.core.dist_checkpointing.mapping import ShardedTensor

        for sh in nested_values(sharded_state_dict):
            if not isinstance(sh, ShardedTensor) or not sh.data.is_meta:
                continue
            base = sh.data if sh.data._base is None else sh.data._base
            if id(base) not in self.make or not sh.data.is_contiguous():
                raise KeyError(f"{sh.key}: no source for its parameter, or not a row block")
            self.views[(sh.key, tuple(sh.global_offset))] = (
                id(base), tuple(sh.data.shape), sh.data.storage_offset())

    def tensor(self, item, placeholder: torch.Tensor) -> torch.Tensor:
        if not placeholder.is_meta:
            return placeholder
        base, shape, offset = self.views[(item.index.fqn, tuple(item.index.offset))]
        tensor = self.make[base](shape, offset).reshape(placeholder.shape)
        if self._bar is not None:
            self._bar.update(1)
            if self._bar.n == self._bar.total:
                self._bar.close()
        return tensor


def _compact(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` on the CPU in a storage of its own (a copy only where needed)."""
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        return tensor.to("cpu")  # a new, compact storage
    whole = tensor.untyped_storage().size() == tensor.numel() * tensor.itemsize
    return tensor if whole else tensor.clone()


class InProcessWriter(FileSystemWriterAsync):
    """``FileSystemWriterAsync`` whose files are written by the calling process.

    Planning, file names, records and the final ``.metadata`` are the parent's; only
    who runs the per-file writer differs (here, not a forked process), so no Manager,
    no fork, and no up-front copy of the tensors that are views.
    """

    source: LazySource | None = None

    def prepare_write_data(self, plan: SavePlan, planner: SavePlanner) -> None:
        """Split ``plan`` into this rank's files exactly as the parent does."""
        self.write_buckets = []
        for items in _split_by_size_and_type(self.thread_count, plan.items):
            if not items:
                continue
            name = f"{plan.storage_data.prefix}{len(self.write_buckets)}{DEFAULT_SUFFIX}"
            data = [(item, planner.resolve_data(item)) for item in items]
            raw = [pair for pair in data if pair[0].type == WriteItemType.BYTE_IO]
            tensors = [pair for pair in data if pair[0].type != WriteItemType.BYTE_IO]
            self.write_buckets.append((os.path.join(self.checkpoint_dir, name), name,
                                       (raw, _Compact(tensors, self.source))))
        self.results_queue = queue.Queue() if self.write_buckets else None
        if self.source is not None:
            self.source.expect(sum(t.is_meta for _, _, (_, pairs) in self.write_buckets
                                   for _, t in pairs.pairs))

    def get_save_function_and_args(self):
        """(write every file now, no staging, no arguments); nothing on an empty rank."""
        if not self.write_buckets:
            return None, None, []
        return self._write_files, None, []

    def _write_files(self) -> None:
        """Each file by megatron-core's per-file writer (fsync included); the results
        (or the first failure) go where the parent's finalisation reads them."""
        transforms = [self.transforms] if hasattr(self, "transforms") else []
        results: dict[int, list] = {}
        for index, bucket in enumerate(self.write_buckets):
            out, pending = queue.Queue(), queue.Queue()
            pending.put(index)  # the writer marks its file done by taking this
            FileSystemWriterAsync.write_preloaded_data(transforms, index, bucket, out,
                                                       pending, use_fsync=True)
            _, result = out.get_nowait()
            if isinstance(result, Exception):
                self.results_queue.put(result)
                return
            results[index] = result
        self.results_queue.put(results)


class InProcessSaveStrategy(TorchDistSaveShardedStrategy):
    """megatron-core's torch_dist save strategy with :class:`InProcessWriter`.

    Its plan is the parent's without cached plans (the parent's default): the same
    translation of the sharded state dict, the same planner and coordinator.
    """

    def __init__(self, source: LazySource | None = None) -> None:
        super().__init__("torch_dist", 1)
        self.source = source

    def async_save(self, sharded_state_dict, checkpoint_dir: Path) -> AsyncRequest:
        """The parent's plan and finalisation, written by :class:`InProcessWriter`."""
        if self.source is not None:
            self.source.register(sharded_state_dict)
        sharded_state_dict, _, _ = _replace_state_dict_keys_with_sharded_keys(
            sharded_state_dict, self.keep_only_main_replica)
        pyt_state_dict = mcore_to_pyt_state_dict(sharded_state_dict, False)
        writer = InProcessWriter(checkpoint_dir, thread_count=self.thread_count)
        writer.source = self.source
        planner = MCoreSavePlanner(dedup_replicated_tensors=not self.keep_only_main_replica,
                                   flatten_state_dict=False)
        planned = save_state_dict_async_plan(pyt_state_dict, writer, None, 0, planner=planner)
        return self._get_save_and_finalize_callbacks(writer, planned[0])
