"""Refit into the CPU vLLM engine against an in-memory copy of the same bytes.

    .venv/bin/python -m bench.refit [--layers 8 --hidden 512] [--repeats 3] [--bucket-mb 64]

Starts the rollout engine (`VLLMEngine`, float32 on CPU, as the trainer does) on a
random Llama (~225 MB in float32 at the defaults), then times the trainer's own
`refit_engine` (size-bounded buckets, each copied once into shared memory that the
engine's worker maps, in-place load through the worker extension, prefix-cache reset)
of all its weights, interleaved with a plain `copy_` of the same tensors into
preallocated buffers (memcpy speed) in this process: into fresh buffers (their
first-touch page faults included; the target's reference) and into buffers written
before (memcpy alone). Also splits the refit into what this process does (copying the
buckets into shared memory, timed inside the refit; for an engine without a
`refit_buffer`, serialising them to safetensors bytes, timed apart) and the rest (the
RPC and the load in the engine process). Target: refit <= 3x the copy.
"""

from __future__ import annotations

import argparse
import shutil
import time

import torch

from bench.common import WORK, base_model, median, quiet_machine, record, table
from bench.converter import build_checkpoint


def engine_model(layers: int, hidden: int):
    """The random Llama with the tiny tokenizer beside it (vLLM needs one)."""
    from maestro_megatron.weights.hf_io import copy_tokenizer_files

    path = WORK / "refit" / f"llama_l{layers}_h{hidden}"
    path.parent.mkdir(parents=True, exist_ok=True)
    build_checkpoint(path, layers, hidden, dtype="float32")
    if not (path / "tokenizer_config.json").is_file():
        copy_tokenizer_files(base_model().parent / "tokenizer", path)
    return path


def load_tensors(path) -> list[tuple[str, torch.Tensor]]:
    """The checkpoint's tensors in this process's own memory, as the trainer's are: not
    views of the file's mapping, whose pages the kernel may drop between repeats and
    read back from disk inside a timing."""
    from safetensors.torch import load_file

    named = []
    for f in sorted(path.glob("*.safetensors")):
        named += [(k, v.float().clone(memory_format=torch.contiguous_format))
                  for k, v in load_file(f).items()]
    return named


def time_copy(named, touched: bool = False) -> float:
    """memcpy of the same bytes: `copy_` into buffers allocated beforehand; `touched`:
    written once before the timing too (no first-touch page faults inside it)."""
    buffers = [torch.empty_like(t) for _, t in named]
    if touched:
        for buf in buffers:
            buf.zero_()
    start = time.perf_counter()
    for buf, (_, t) in zip(buffers, named):
        buf.copy_(t)
    return time.perf_counter() - start


def time_serialize(named, bucket_bytes: int) -> float:
    """What the bytes transport does here: serialise each bucket to safetensors bytes."""
    from maestro_megatron.rollout.refit import iter_buckets, serialize_bucket

    start = time.perf_counter()
    for bucket in iter_buckets(iter(named), bucket_bytes):
        serialize_bucket(bucket)
    return time.perf_counter() - start


class TimedWrites:
    """Stands in for an engine's `refit_buffer` and adds up the seconds of its writes
    (this process's share of a refit, timed inside the refit itself)."""

    def __init__(self, buffer) -> None:
        self.buffer, self.seconds = buffer, 0.0

    @property
    def path(self) -> str:
        return self.buffer.path

    def write(self, bucket):
        start = time.perf_counter()
        try:
            return self.buffer.write(bucket)
        finally:
            self.seconds += time.perf_counter() - start

    def close(self) -> None:
        self.buffer.close()


def timed_refit(engine, named, bucket_bytes: int) -> tuple[float, float, int]:
    """(refit seconds, of which this process's writing or serialising, number of buckets)."""
    from maestro_megatron.rollout.refit import refit_engine

    timed = getattr(engine, "refit_buffer", None)
    if timed is not None:
        timed.seconds = 0.0
    stats = refit_engine(engine, iter(named), bucket_bytes)
    write = timed.seconds if timed is not None else time_serialize(named, bucket_bytes)
    return stats.seconds, write, stats.num_buckets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=512, help="a multiple of 512 (16 heads of 32)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bucket-mb", type=int, default=64, help="the recipe's refit_bucket_mb")
    args = p.parse_args(argv)
    load = quiet_machine()
    from maestro_megatron.logs import configure_quiet

    configure_quiet()
    from maestro_megatron.rollout import build_engine
    from maestro_megatron.rollout.refit import refit_engine

    path = engine_model(args.layers, args.hidden)
    named = load_tensors(path)
    size = sum(t.numel() * t.element_size() for _, t in named)
    bucket = args.bucket_mb * 2**20
    engine = build_engine("vllm", str(path), seed=0, max_model_len=256)
    refit, copy, warm, write, buckets = [], [], [], [], 0
    shared = getattr(engine, "refit_buffer", None) is not None
    if shared:
        engine.refit_buffer = TimedWrites(engine.refit_buffer)
    try:
        refit_engine(engine, iter(named), bucket)  # the first load pays one-off costs
        for _ in range(args.repeats):
            seconds, w, buckets = timed_refit(engine, named, bucket)
            refit.append(seconds)
            write.append(w)
            copy.append(time_copy(named))
            warm.append(time_copy(named, touched=True))
    finally:
        engine.close()
    r, c, t, w = median(refit), median(copy), median(warm), median(write)
    transport = "shared memory" if shared else "safetensors bytes"
    res = {"bytes": size, "num_tensors": len(named), "num_buckets": buckets, "refit_s": r,
           "copy_s": c, "transport": transport, "write_s": w, "load_in_engine_s": r - w,
           "refit_gb_per_s": size / r / 1e9, "copy_gb_per_s": size / c / 1e9,
           "ratio_to_copy": r / c, "refit_s_per_gb": r / (size / 1e9),
           "touched_copy_s": t, "ratio_to_touched_copy": r / t}
    first = "copy into shared memory" if shared else "serialise (safetensors bytes)"
    print(table(["what", "seconds", "GB/s", "s per GB", "x copy"],
                [["in-memory copy_", c, size / c / 1e9, c / (size / 1e9), 1.0],
                 ["  (into buffers touched before)", t, size / t / 1e9, t / (size / 1e9),
                  t / c],
                 ["refit (all)", r, size / r / 1e9, r / (size / 1e9), r / c],
                 [f"  {first}", w, size / w / 1e9, w / (size / 1e9), w / c],
                 ["  RPC + load in engine", r - w, size / (r - w) / 1e9,
                  (r - w) / (size / 1e9), (r - w) / c]]))
    print(f"{size / 1e6:.0f} MB, {len(named)} tensors, {buckets} buckets of <= "
          f"{args.bucket_mb} MiB; target: refit <= 3x copy ({r / t:.2f}x the copy into "
          "touched buffers)")
    record("refit", {"layers": args.layers, "hidden": args.hidden, "repeats": args.repeats,
                     "bucket_mb": args.bucket_mb}, res, load_at_start=load)
    shutil.rmtree(WORK / "refit" / "tmp", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
