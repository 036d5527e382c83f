"""The converter's per-byte cost without its process start-up: hf-to-megatron (TP1)
and megatron-to-hf, each called as a function once its process is up, next to
`shutil.copytree` of the same input.

    .venv/bin/python -m bench.converter_inproc [--layers 8 --hidden 1024] [--repeats 2]

bench/converter.py times the tool as a user runs it (a new process, or 4 under
torchrun); at a few hundred MB its interpreter and imports dominate, so this script
answers the other question: what does a byte cost once the process is up? Each timed
conversion runs in a fresh process that first imports everything the conversion
imports (megatron-core included), then times the call: the figure is what one tool run
pays besides start-up and imports, per-process set-up (e.g. a writer's helper
processes) included. The copy is timed here, right after, on the same page cache.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, WORK, median, quiet_machine, record, table
from bench.converter import build_checkpoint, dir_bytes

IMPORTS = ("tqdm", "megatron.core.parallel_state", "megatron.core.tensor_parallel",
           "megatron.core.transformer", "megatron.core.models.gpt",
           "megatron.core.models.gpt.gpt_layer_specs", "megatron.core.dist_checkpointing",
           "megatron.core.dist_checkpointing.strategies.torch",
           "maestro_megatron.megatron.parallel", "maestro_megatron.megatron.model",
           "maestro_megatron.weights.convert", "maestro_megatron.weights.model_io",
           "maestro_megatron.weights.export")
"""What a conversion imports lazily; imported before its timer starts."""


def timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def child(direction: str, src: Path, out: Path) -> float:
    """In this fresh process: the imports, then the timed conversion (seconds)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # as the tool: conversion is CPU work
    for name in IMPORTS:
        importlib.import_module(name)
    from maestro_megatron.weights.convert import hf_to_megatron, megatron_to_hf

    if direction == "h2m":
        return timed(hf_to_megatron, src, out, tp=1, pp=1, dtype="bf16", progress=False)
    return timed(megatron_to_hf, src, out, progress=False)


def convert_seconds(direction: str, src: Path, out: Path) -> float:
    """Seconds of one conversion, timed inside a fresh process after its imports."""
    cmd = [sys.executable, "-m", "bench.converter_inproc", "--child", direction, str(src),
           str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--child", nargs=3, metavar=("DIRECTION", "SRC", "OUT"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        direction, src, out = args.child
        print(json.dumps({"seconds": child(direction, Path(src), Path(out))}))
        return 0
    load = quiet_machine()
    work = WORK / "converter_inproc"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    hf = build_checkpoint(WORK / "converter" / f"hf_l{args.layers}_h{args.hidden}",
                          args.layers, args.hidden)
    times = {k: [] for k in ("h2m", "h2m_cp", "m2h", "m2h_cp")}
    for i in range(args.repeats):
        meg, back = work / f"meg{i}", work / f"hf{i}"
        times["h2m"].append(convert_seconds("h2m", hf, meg))
        times["h2m_cp"].append(timed(shutil.copytree, hf, work / f"cp_hf{i}"))
        times["m2h"].append(convert_seconds("m2h", meg, back))
        times["m2h_cp"].append(timed(shutil.copytree, meg, work / f"cp_meg{i}"))
    size_hf, size_meg = dir_bytes(hf), dir_bytes(work / "meg0")
    m = {k: median(v) for k, v in times.items()}
    res = {"hf_bytes": size_hf, "megatron_bytes": size_meg, **{f"{k}_s": v for k, v in m.items()},
           "h2m_ratio_to_cp": m["h2m"] / m["h2m_cp"], "m2h_ratio_to_cp": m["m2h"] / m["m2h_cp"]}
    print(table(["case (process up, imports paid)", "MB", "convert s", "copy s", "x copy"],
                [["hf-to-megatron tp1pp1", size_hf / 1e6, m["h2m"], m["h2m_cp"],
                  res["h2m_ratio_to_cp"]],
                 ["megatron-to-hf", size_meg / 1e6, m["m2h"], m["m2h_cp"],
                  res["m2h_ratio_to_cp"]]]))
    record("converter_inproc", {"layers": args.layers, "hidden": args.hidden,
                                "repeats": args.repeats, "fresh_process_per_call": True}, res,
           load_at_start=load)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
