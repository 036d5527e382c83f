"""The checkpoint converter against a plain copy of the same bytes, in the same run.

    .venv/bin/python -m bench.converter [--layers 8 --hidden 1024] [--repeats 2]

Builds a random Llama HF checkpoint locally (bf16, ~320 MB at the defaults: hidden
1024, 8 layers, FFN 2816, 16 heads / 8 KV heads, vocabulary 32000, untied), then
times `tools/convert_checkpoint.py` hf-to-megatron at TP1 (one process) and TP2 x PP2
(4 processes under torchrun) and megatron-to-hf back from each, each directly next
to `cp -r` of its input directory (same bytes, same page cache state). Reports
seconds, GB/s of input, the ratio to cp (the figure: target <= 2x) and the peak
resident memory of the converter's whole process tree against the checkpoint size.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, WORK, PeakRSS, median, quiet_machine, record, table

TOOL = str(REPO / "tools" / "convert_checkpoint.py")


def build_checkpoint(out: Path, layers: int, hidden: int, dtype: str = "bfloat16") -> Path:
    """A seeded random Llama (16 heads, 8 KV heads, FFN 2.75 x hidden, vocabulary 32000,
    untied) as safetensors, no tokenizer (the converter then warns)."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=int(hidden * 2.75),
                      num_hidden_layers=layers, num_attention_heads=16,
                      num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False,
                      max_position_embeddings=2048)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(getattr(torch, dtype))
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tmp.rename(out)
    return out


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def timed_run(cmd: list[str]) -> tuple[float, int]:
    """Seconds and peak RSS (bytes, the whole process tree) of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    with PeakRSS(proc.pid, interval=0.01) as mem:
        _, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    return time.perf_counter() - start, mem.tree_peak


def convert_cmd(direction: str, src: Path, out: Path, tp: int, pp: int) -> list[str]:
    if direction == "hf-to-megatron":
        args = [TOOL, direction, "--hf", str(src), "--out", str(out), "--tp", str(tp),
                "--pp", str(pp), "--dtype", "bf16", "--no-progress"]
        if tp * pp > 1:
            return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc-per-node", str(tp * pp), *args]
        return [sys.executable, *args]
    return [sys.executable, TOOL, direction, "--megatron", str(src), "--out", str(out),
            "--no-progress"]


def floor_cmd(num_procs: int) -> list[str]:
    """bench/import_floor.py launched the way the converter is."""
    script = str(REPO / "bench" / "import_floor.py")
    if num_procs > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", str(num_procs), script]
    return [sys.executable, script]


def measure(name: str, direction: str, src: Path, layout: tuple[int, int], work: Path,
            repeats: int) -> dict:
    """Convert, `cp -r` the same input, and the import floor, interleaved `repeats`
    times; medians."""
    conv, cps, peaks, floors, floor_peaks = [], [], [], [], []
    for i in range(repeats):
        out, copy = work / f"{name}.{i}", work / f"{name}.cp.{i}"
        for d in (out, copy):
            shutil.rmtree(d, ignore_errors=True)
        seconds, peak = timed_run(convert_cmd(direction, src, out, *layout))
        conv.append(seconds)
        peaks.append(peak)
        cps.append(timed_run(["cp", "-r", str(src), str(copy)])[0])
        floor_s, floor_peak = timed_run(floor_cmd(layout[0] * layout[1]))
        floors.append(floor_s)
        floor_peaks.append(floor_peak)
        shutil.rmtree(copy)
        if i < repeats - 1:
            shutil.rmtree(out)
    size = dir_bytes(src)
    return {"case": name, "input_bytes": size, "convert_s": median(conv), "cp_s": median(cps),
            "ratio_to_cp": median(conv) / median(cps), "gb_per_s": size / median(conv) / 1e9,
            "import_floor_s": median(floors),
            "ratio_to_cp_above_floor": (median(conv) - median(floors)) / median(cps),
            "peak_rss_bytes": max(peaks), "peak_over_size": max(peaks) / size,
            "import_floor_peak_bytes": max(floor_peaks),
            "peak_above_floor_over_size": (max(peaks) - max(floor_peaks)) / size,
            "output": str(work / f"{name}.{repeats - 1}")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=1024, help="a multiple of 16 (heads)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--layouts", nargs="*", default=["1x1", "2x2"], help="TPxPP")
    args = p.parse_args(argv)
    load = quiet_machine()
    work = WORK / "converter"
    work.mkdir(parents=True, exist_ok=True)
    hf = build_checkpoint(work / f"hf_l{args.layers}_h{args.hidden}", args.layers, args.hidden)
    results = []
    for layout in args.layouts:
        tp, pp = (int(x) for x in layout.split("x"))
        imp = measure(f"hf-to-megatron tp{tp}pp{pp}", "hf-to-megatron", hf, (tp, pp), work,
                      args.repeats)
        results.append(imp)
        meg = Path(imp["output"])
        results.append(measure(f"megatron-to-hf from tp{tp}pp{pp}", "megatron-to-hf", meg,
                               (1, 1), work, args.repeats))
    print(table(["case", "input MB", "convert s", "imports s", "cp s", "x cp",
                 "x cp above imports", "GB/s", "peak RSS MB", "peak / size",
                 "(peak - imports) / size"],
                [[r["case"], r["input_bytes"] / 1e6, r["convert_s"], r["import_floor_s"],
                  r["cp_s"], r["ratio_to_cp"], r["ratio_to_cp_above_floor"], r["gb_per_s"],
                  r["peak_rss_bytes"] / 1e6, r["peak_over_size"],
                  r["peak_above_floor_over_size"]] for r in results]))
    print("target: the work part <= 3x cp (bench.converter_inproc); 'imports' = the "
          "interpreter and imports alone, launched the same way (a fixed cost that a larger "
          "checkpoint amortises)")
    record("converter", {"layers": args.layers, "hidden": args.hidden,
                         "repeats": args.repeats, "layouts": args.layouts}, {"cases": results},
           load_at_start=load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
