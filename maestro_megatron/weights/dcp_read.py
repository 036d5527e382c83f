"""Read boxes of global tensors from a torch_dist (torch DCP) checkpoint, one process.

megatron-core's ``torch_dist`` format is a torch.distributed.checkpoint directory whose
keys are the ShardedTensor keys, each stored as the chunks the saving ranks held. A
box (offsets, sizes) of a key's global tensor is read with a DCP load planner that asks
for exactly that box, whatever chunks were saved: this is how one layer of a layer-
stacked key is read without reading the others. No process group is needed.

A damaged checkpoint is a :class:`ConversionError` naming the file: an unreadable
``.metadata`` index, a shard file that is missing or shorter than the index says
(:func:`check_storage`, before any output is written), or a record that does not
unpickle while it is read. DCP stores no checksums: flipped bits inside tensor data
cannot be noticed.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import load as dcp_load
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, ReadItem
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list
from torch.futures import Future

from maestro_megatron.weights.errors import ConversionError


def _reason(exc: BaseException) -> str:
    """One line for an exception (DCP wraps the reader's in a CheckpointException)."""
    failures = getattr(exc, "failures", None)
    if failures:
        inner = next(iter(failures.values()))
        exc = inner[0] if isinstance(inner, tuple) else inner
    # The first sentence only: torch.load's continues with advice that does not apply.
    first = str(exc).strip().splitlines()[0].split(". ")[0][:160] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def read_metadata(ckpt: Path):
    """The checkpoint's DCP index (``.metadata``); ConversionError if unreadable."""
    try:
        return FileSystemReader(str(ckpt)).read_metadata()
    except Exception as exc:  # a torn or foreign file: pickle, EOF, OS errors
        raise ConversionError(f"{Path(ckpt) / '.metadata'}: cannot read the checkpoint's "
                              f"index ({_reason(exc)})") from None


def tensor_metadata(ckpt: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """key -> (global shape, dtype) of every tensor in the checkpoint."""
    md = read_metadata(ckpt)
    return {k: (tuple(v.size), v.properties.dtype) for k, v in md.state_dict_metadata.items()
            if isinstance(v, TensorStorageMetadata)}


def row_splits(ckpt: Path, key: str) -> int:
    """Number of distinct row offsets ``key`` was saved in (the TP size that saved a
    vocabulary-parallel tensor)."""
    meta = read_metadata(ckpt).state_dict_metadata[key]
    return len({chunk.offsets[0] for chunk in meta.chunks})


def check_storage(ckpt: Path) -> None:
    """Every file the index names exists and is as long as the index says."""
    needed: dict[str, int] = {}
    for info in (read_metadata(ckpt).storage_data or {}).values():
        if not hasattr(info, "relative_path"):  # not a file-system checkpoint's index
            continue
        needed[info.relative_path] = max(needed.get(info.relative_path, 0),
                                         info.offset + info.length)
    for name, end in sorted(needed.items()):
        path = Path(ckpt) / name
        if not path.is_file():
            raise ConversionError(f"{path}: missing (the checkpoint's index names it)")
        size = path.stat().st_size
        if size < end:
            raise ConversionError(f"{path}: truncated ({size} bytes, the checkpoint's index "
                                  f"needs {end})")


Box = tuple[tuple[int, ...], tuple[int, ...]]
"""(offsets, sizes) of a box, both of the global tensor's rank."""


def checkpoint_keys(ckpt: Path) -> set[str]:
    """Every key of the checkpoint (tensors, and ``KEY/shard_*`` entries of objects)."""
    return set(read_metadata(ckpt).state_dict_metadata)


class _NamingReader(FileSystemReader):
    """A FileSystemReader that reads one file at a time and remembers which, so that a
    failed read can name the file; a tensor record that is a whole requested box
    becomes that box (no copy into a preallocated one)."""

    current: Path | None = None

    def read_data(self, plan: LoadPlan, planner):
        per_file: dict[str, list[ReadItem]] = {}
        for item in plan.items:
            per_file.setdefault(self.storage_data[item.storage_index].relative_path,
                                []).append(item)
        for name, items in per_file.items():
            self.current = Path(self.path) / name
            if any(self.storage_data[item.storage_index].transform_descriptors
                   for item in items):  # stored through an extension: torch's own path
                super().read_data(LoadPlan(items), planner).wait()
            else:
                self._read_records(self.current, items, planner)
        self.current = None
        done: Future = Future()
        done.set_result(None)
        return done

    def _read_records(self, path: Path, items: list[ReadItem], planner: _BoxPlanner) -> None:
        """Load each item's record of one file (as torch's reader does) and hand it to
        the planner."""
        with open(path, "rb") as stream:
            for item in items:
                record = self._slice_file(stream, self.storage_data[item.storage_index])
                if item.type == LoadItemType.BYTE_IO:
                    planner.load_bytes(item, io.BytesIO(record.read(-1)))
                    continue
                tensor = torch.load(record, map_location="cpu", weights_only=True)
                planner.place(item, _narrow(tensor, item.storage_offsets, item.lengths))


def _narrow(tensor: torch.Tensor, offsets, lengths) -> torch.Tensor:
    """The box [offsets, offsets + lengths) of ``tensor`` (a view)."""
    for dim, (start, length) in enumerate(zip(offsets, lengths)):
        tensor = tensor.narrow(dim, start, length)
    return tensor


def _owns_storage(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is contiguous and all of its storage."""
    return tensor.is_contiguous() and \
        tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()


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
        return _narrow(dest, read_item.dest_offsets, read_item.lengths)

    def place(self, read_item: ReadItem, tensor: torch.Tensor) -> None:
        """Put a loaded record's ``tensor`` where ``read_item`` says: it becomes the
        destination box when it is all of the box and all of its own storage (a whole
        saved chunk), else it is copied into its part of the box."""
        index = read_item.dest_index
        offsets, dest = self.dests[index.fqn][index.index]
        if tensor.shape == dest.shape and tensor.dtype == dest.dtype \
                and not any(read_item.dest_offsets) and _owns_storage(tensor):
            self.dests[index.fqn][index.index] = (offsets, tensor)
        else:
            target = self.resolve_tensor(read_item)
            if target.shape != tensor.shape:  # an index that does not fit its records
                raise ValueError(f"record of {index.fqn} has shape {list(tensor.shape)}, "
                                 f"the index says {list(target.shape)}")
            target.copy_(tensor)


def read_boxes(ckpt: Path, boxes: dict[str, list[Box]],
               dtypes: dict[str, torch.dtype]) -> dict[str, list[torch.Tensor]]:
    """key -> the requested boxes of its global tensor, in request order (one DCP read).

    Args:
        boxes: key -> [(offsets, sizes), ...].
        dtypes: key -> saved dtype.
    """
    dests = {key: [(offs, torch.empty(sizes, dtype=dtypes[key])) for offs, sizes in items]
             for key, items in boxes.items()}
    reader = _NamingReader(str(ckpt))
    try:
        with warnings.catch_warnings():  # "torch.distributed is disabled": we know
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp_load({}, storage_reader=reader, planner=_BoxPlanner(dests), no_dist=True)
    except (Exception, CheckpointException) as exc:  # CheckpointException: BaseException
        where = reader.current or Path(ckpt)
        raise ConversionError(f"{where}: damaged, a tensor record does not load "
                              f"({_reason(exc)})") from None
    return {key: [dest for _, dest in items] for key, items in dests.items()}
