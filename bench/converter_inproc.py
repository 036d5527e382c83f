"""The converter's per-byte cost without its process start-up: hf-to-megatron (TP1)
and megatron-to-hf called in ONE process after the imports, each next to
`shutil.copytree` of the same input in the same process.

    .venv/bin/python -m bench.converter_inproc [--layers 8 --hidden 1024] [--repeats 2]

bench/converter.py times the tool as a user runs it (a new process, or 4 under
torchrun); at a few hundred MB its interpreter and imports dominate, so this script
answers the other question: what does a byte cost once the process is up?
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

from bench.common import WORK, median, record, table
from bench.converter import build_checkpoint, dir_bytes


def timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # as the tool: conversion is CPU work
    from maestro_megatron.weights.convert import hf_to_megatron, megatron_to_hf

    work = WORK / "converter_inproc"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    hf = build_checkpoint(WORK / "converter" / f"hf_l{args.layers}_h{args.hidden}",
                          args.layers, args.hidden)
    times = {k: [] for k in ("h2m", "h2m_cp", "m2h", "m2h_cp")}
    for i in range(args.repeats):
        meg, back = work / f"meg{i}", work / f"hf{i}"
        times["h2m"].append(timed(hf_to_megatron, hf, meg, tp=1, pp=1, dtype="bf16",
                                  progress=False))
        times["h2m_cp"].append(timed(shutil.copytree, hf, work / f"cp_hf{i}"))
        times["m2h"].append(timed(megatron_to_hf, meg, back, progress=False))
        times["m2h_cp"].append(timed(shutil.copytree, meg, work / f"cp_meg{i}"))
    size_hf, size_meg = dir_bytes(hf), dir_bytes(work / "meg0")
    m = {k: median(v) for k, v in times.items()}
    res = {"hf_bytes": size_hf, "megatron_bytes": size_meg, **{f"{k}_s": v for k, v in m.items()},
           "h2m_ratio_to_cp": m["h2m"] / m["h2m_cp"], "m2h_ratio_to_cp": m["m2h"] / m["m2h_cp"]}
    print(table(["case (one process, imports paid)", "MB", "convert s", "copy s", "x copy"],
                [["hf-to-megatron tp1pp1", size_hf / 1e6, m["h2m"], m["h2m_cp"],
                  res["h2m_ratio_to_cp"]],
                 ["megatron-to-hf", size_meg / 1e6, m["m2h"], m["m2h_cp"],
                  res["m2h_ratio_to_cp"]]]))
    record("converter_inproc", {"layers": args.layers, "hidden": args.hidden,
                                "repeats": args.repeats}, res)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
