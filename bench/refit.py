"""Refit into the CPU vLLM engine against an in-memory copy of the same bytes.

    .venv/bin/python -m bench.refit [--layers 8 --hidden 512] [--repeats 3] [--bucket-mb 64]

Starts the rollout engine (`VLLMEngine`, float32 on CPU, as the trainer does) on a
random Llama (~225 MB in float32 at the defaults), then times the trainer's own
`refit_engine` (size-bounded buckets, safetensors bytes, in-place load through the
worker extension, prefix-cache reset) of all its weights, interleaved with a plain
`copy_` of the same tensors into preallocated buffers (memcpy speed) in this process.
Also splits the refit into serialisation (safetensors to bytes, here) and the rest
(transport to the engine process and its load). Target: refit <= 3x the copy.
"""

from __future__ import annotations

import argparse
import shutil
import time

import torch

from bench.common import WORK, base_model, median, record, table
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
    from safetensors.torch import load_file

    named = []
    for f in sorted(path.glob("*.safetensors")):
        named += [(k, v.float().contiguous()) for k, v in load_file(f).items()]
    return named


def time_copy(named) -> float:
    """memcpy of the same bytes: `copy_` into buffers allocated beforehand."""
    buffers = [torch.empty_like(t) for _, t in named]
    start = time.perf_counter()
    for buf, (_, t) in zip(buffers, named):
        buf.copy_(t)
    return time.perf_counter() - start


def time_serialize(named, bucket_bytes: int) -> float:
    from maestro_megatron.rollout.refit import iter_buckets, serialize_bucket

    start = time.perf_counter()
    for bucket in iter_buckets(iter(named), bucket_bytes):
        serialize_bucket(bucket)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=512, help="a multiple of 512 (16 heads of 32)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bucket-mb", type=int, default=64, help="the recipe's refit_bucket_mb")
    args = p.parse_args(argv)
    from maestro_megatron.logs import configure_quiet

    configure_quiet()
    from maestro_megatron.rollout import build_engine
    from maestro_megatron.rollout.refit import refit_engine

    path = engine_model(args.layers, args.hidden)
    named = load_tensors(path)
    size = sum(t.numel() * t.element_size() for _, t in named)
    bucket = args.bucket_mb * 2**20
    engine = build_engine("vllm", str(path), seed=0, max_model_len=256)
    refit, copy, ser, buckets = [], [], [], 0
    try:
        refit_engine(engine, iter(named), bucket)  # the first load pays one-off costs
        for _ in range(args.repeats):
            stats = refit_engine(engine, iter(named), bucket)
            refit.append(stats.seconds)
            buckets = stats.num_buckets
            copy.append(time_copy(named))
            ser.append(time_serialize(named, bucket))
    finally:
        engine.close()
    r, c, s = median(refit), median(copy), median(ser)
    res = {"bytes": size, "num_tensors": len(named), "num_buckets": buckets, "refit_s": r,
           "copy_s": c, "serialize_s": s, "transport_and_load_s": r - s,
           "refit_gb_per_s": size / r / 1e9, "copy_gb_per_s": size / c / 1e9,
           "ratio_to_copy": r / c, "refit_s_per_gb": r / (size / 1e9)}
    print(table(["what", "seconds", "GB/s", "s per GB", "x copy"],
                [["in-memory copy_", c, size / c / 1e9, c / (size / 1e9), 1.0],
                 ["refit (all)", r, size / r / 1e9, r / (size / 1e9), r / c],
                 ["  serialise (safetensors bytes)", s, size / s / 1e9, s / (size / 1e9), s / c],
                 ["  transport + load in engine", r - s, size / (r - s) / 1e9,
                  (r - s) / (size / 1e9), (r - s) / c]]))
    print(f"{size / 1e6:.0f} MB, {len(named)} tensors, {buckets} buckets of <= "
          f"{args.bucket_mb} MiB; target: refit <= 3x copy")
    record("refit", {"layers": args.layers, "hidden": args.hidden, "repeats": args.repeats,
                     "bucket_mb": args.bucket_mb}, res)
    shutil.rmtree(WORK / "refit" / "tmp", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
