"""Read boxes of global tensors from a torch_dist (torch DCP) checkpoint, one process.

megatron-core's ``torch_dist`` format is a torch.distributed.checkpoint directory whose
keys are the ShardedTensor keys, each stored as the chunks the saving ranks held. A
box (offsets, sizes) of a key's global tensor is read with a DCP load planner that asks
for exactly that box, whatever chunks were saved: this is how one layer of a layer-
stacked key is read without reading the others. No process group is needed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import load as dcp_load
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadPlan, ReadItem
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list


def tensor_metadata(ckpt: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """key -> (global shape, dtype) of every tensor in the checkpoint."""
    md = FileSystemReader(str(ckpt)).read_metadata()
    return {k: (tuple(v.size), v.properties.dtype) for k, v in md.state_dict_metadata.items()
            if isinstance(v, TensorStorageMetadata)}


Box = tuple[tuple[int, ...], tuple[int, ...]]
"""(offsets, sizes) of a box, both of the global tensor's rank."""


def checkpoint_keys(ckpt: Path) -> set[str]:
    """Every key of the checkpoint (tensors, and ``KEY/shard_*`` entries of objects)."""
    return set(FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata)


class _BoxPlanner(DefaultLoadPlanner):
    """Plans reads of boxes of the requested keys into caller-owned tensors."""

    def __init__(self, dests: dict[str, list[tuple[tuple[int, ...], torch.Tensor]]]) -> None:
        super().__init__()
        self.dests = dests

    def create_local_plan(self) -> LoadPlan:
        items: list[ReadItem] = []
        for key, boxes in self.dests.items():
            chunks = [ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=dest.shape)
                      for offsets, dest in boxes]
            items += create_read_items_for_chunk_list(
                key, self.metadata.state_dict_metadata[key], chunks)
        return LoadPlan(items)

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        index = read_item.dest_index
        dest = self.dests[index.fqn][index.index][1]
        for dim, (start, length) in enumerate(zip(read_item.dest_offsets, read_item.lengths)):
            dest = dest.narrow(dim, start, length)
        return dest


def read_boxes(ckpt: Path, boxes: dict[str, list[Box]],
               dtypes: dict[str, torch.dtype]) -> dict[str, list[torch.Tensor]]:
    """key -> the requested boxes of its global tensor, in request order (one DCP read).

    Args:
        boxes: key -> [(offsets, sizes), ...].
        dtypes: key -> saved dtype.
    """
    dests = {key: [(offs, torch.empty(sizes, dtype=dtypes[key])) for offs, sizes in items]
             for key, items in boxes.items()}
    dcp_load({}, storage_reader=FileSystemReader(str(ckpt)), planner=_BoxPlanner(dests),
             no_dist=True)
    return {key: [dest for _, dest in items] for key, items in dests.items()}
