"""Atomic output directories: write to a hidden sibling, rename when complete."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import torch.distributed as dist


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def atomic_output(out: Path, *, is_writer: bool = True, distributed: bool = False):
    """Yield a temp dir beside ``out``; rename it to ``out`` on success, delete on error.

    ``distributed``: every rank enters; ``is_writer`` (rank 0) creates, renames and
    cleans up, the others wait at barriers. ``out`` may exist only as an empty directory.
    """
    out = Path(out).absolute()
    tmp = out.parent / f".{out.name}.partial"
    if is_writer:
        if tmp.exists():
            shutil.rmtree(tmp)  # left by a killed run of this converter
        tmp.mkdir(parents=True)
    if distributed:
        _barrier()
    try:
        yield tmp
        if distributed:
            _barrier()
        if is_writer:
            if out.exists():
                out.rmdir()  # empty (checked before conversion)
            tmp.rename(out)
    except BaseException:
        if is_writer:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
