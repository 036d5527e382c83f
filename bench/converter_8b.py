"""The converter at Qwen3-8B size on this machine: both directions, peak memory, time
against `cp` of the same bytes, the round trip bit for bit, and logits against
transformers on a slice of the model.

    .venv/bin/python -m bench.converter_8b [--layouts 1x1 2x1 8x1 1x2] [--logit-layers 2]

The checkpoint is Qwen3-8B's shape (bench/big_model.py: its config.json, random bf16,
16.4 GB in 5 GB shards), written layer by layer. Layouts TPxPP: with PP 1 one process
(the converter lays the checkpoint out for TP=tp: vocabulary padding and metadata; it
loads at any layout); PP > 1 runs TP*PP processes under torchrun, each saving its own
shard. Each conversion runs next to `cp -r` of its input and, once per process count,
the import floor (interpreter + imports, launched the same way). megatron-to-hf always
runs in one process. Logits: the same shape cut to its first `--logit-layers` layers,
converted hf -> megatron (TP 2 layout), loaded into megatron-core at TP 1 and run on 16
tokens against transformers' Qwen3ForCausalLM on the HF directory, both in fp32.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import REPO, WORK, PeakRSS, quiet_machine, record, table
from bench.converter import dir_bytes, floor_cmd, timed_run

CLI = ["-m", "maestro_megatron.cli", "convert"]


def convert_cmd(direction: str, src: Path, out: Path, tp: int = 1, pp: int = 1) -> list[str]:
    if direction == "megatron-to-hf":
        return [sys.executable, *CLI, direction, "--megatron", str(src), "--out", str(out),
                "--no-progress"]
    args = [*CLI, direction, "--hf", str(src), "--out", str(out), "--tp", str(tp), "--pp",
            str(pp), "--no-progress"]
    if pp > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", str(tp * pp), *args]
    return [sys.executable, *args]


def same_bits(a: Path, b: Path) -> tuple[bool, int]:
    """(every tensor of HF dirs a and b equal bit for bit, tensors compared)."""
    import torch

    from maestro_megatron.weights.hf_io import HFCheckpoint

    x, y = HFCheckpoint(a), HFCheckpoint(b)
    if x.names() != y.names():
        return False, 0
    for name in sorted(x.names()):
        if not x.read(name).view(torch.uint8).equal(y.read(name).view(torch.uint8)):
            return False, len(x.names())
    return True, len(x.names())


def one(direction: str, src: Path, out: Path, work: Path, tp: int = 1, pp: int = 1) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    seconds, peak = timed_run(convert_cmd(direction, src, out, tp, pp))
    copy = work / "cp"
    shutil.rmtree(copy, ignore_errors=True)
    cp_s = timed_run(["cp", "-r", str(src), str(copy)])[0]
    shutil.rmtree(copy)
    return {"seconds": seconds, "peak_rss_bytes": peak, "cp_s": cp_s,
            "input_bytes": dir_bytes(src)}


LOGITS_CHILD = """
import json, sys, torch
from maestro_megatron.config.schema import ParallelConfig, PrecisionConfig
from maestro_megatron.megatron.model import build_model
from maestro_megatron.megatron.parallel import destroy_distributed, init_distributed
from maestro_megatron.weights.convert import read_meta
from maestro_megatron.weights.model_io import load_megatron_checkpoint
ckpt, tokens_file, out = sys.argv[1:4]
_, cfg, _ = read_meta(ckpt)
groups = init_distributed(ParallelConfig(), cfg)
chunks = build_model(cfg, ParallelConfig(), PrecisionConfig(dtype="fp32"), pp_rank=0,
                     pp_size=1, wrap_ddp=False)
load_megatron_checkpoint(chunks, ckpt)
tokens = torch.load(tokens_file)
with torch.no_grad():
    logits = chunks[0](tokens, torch.arange(tokens.shape[1]).expand_as(tokens), None)
torch.save(logits[..., :cfg.vocab_size].float(), out)
destroy_distributed()
"""

HF_CHILD = """
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
with torch.no_grad():
    torch.save(model(input_ids=torch.load(sys.argv[2])).logits, sys.argv[3])
"""


def logits_check(work: Path, layers: int) -> dict:
    """Max |megatron - transformers| logit on a `layers`-layer cut of the 8B shape."""
    import torch

    from bench.big_model import PRESETS, write_random_hf

    config = {**PRESETS["qwen3-8b"], "num_hidden_layers": layers}
    hf = write_random_hf(work / f"hf_l{layers}", config)
    meg = work / f"meg_l{layers}"
    shutil.rmtree(meg, ignore_errors=True)
    subprocess.run(convert_cmd("hf-to-megatron", hf, meg, 2, 1), cwd=REPO, check=True,
                   capture_output=True)
    tokens = torch.randint(0, config["vocab_size"], (1, 16),
                           generator=torch.Generator().manual_seed(0))
    torch.save(tokens, work / "tokens.pt")
    for code, args in ((LOGITS_CHILD, [meg, work / "tokens.pt", work / "meg_logits.pt"]),
                       (HF_CHILD, [hf, work / "tokens.pt", work / "hf_logits.pt"])):
        subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, check=True,
                       capture_output=True)
    ours, theirs = torch.load(work / "meg_logits.pt"), torch.load(work / "hf_logits.pt")
    shutil.rmtree(meg)
    return {"layers": layers, "tokens": 16, "max_abs_diff": float((ours - theirs).abs().max()),
            "logit_scale": float(theirs.abs().max())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layouts", nargs="*", default=["1x1", "2x1", "8x1", "1x2"], help="TPxPP")
    p.add_argument("--logit-layers", type=int, default=2, help="0: skip the logit check")
    p.add_argument("--layers", type=int, default=None, help="fewer layers (a quick look)")
    args = p.parse_args(argv)
    load = quiet_machine()
    from bench.big_model import PRESETS, write_random_hf

    work = WORK / "converter_8b"
    work.mkdir(parents=True, exist_ok=True)
    config = dict(PRESETS["qwen3-8b"])
    if args.layers:
        config["num_hidden_layers"] = args.layers
    hf = work / f"hf_{config['num_hidden_layers']}"
    if not (hf / "config.json").is_file():
        with PeakRSS() as gen:
            write_random_hf(hf, config)
        print(f"generated {hf} ({dir_bytes(hf) / 1e9:.1f} GB), peak RSS "
              f"{gen.self_peak / 1e9:.2f} GB", flush=True)
    floors = {}
    rows = []
    for layout in args.layouts:
        tp, pp = (int(x) for x in layout.split("x"))
        procs = tp * pp if pp > 1 else 1
        if procs not in floors:
            floors[procs] = timed_run(floor_cmd(procs))
        meg, back = work / "meg", work / "back"
        to_meg = one("hf-to-megatron", hf, meg, work, tp, pp)
        to_hf = one("megatron-to-hf", meg, back, work)
        exact, count = same_bits(hf, back)
        for direction, r, n in (("hf-to-megatron", to_meg, procs), ("megatron-to-hf", to_hf, 1)):
            floor_s, floor_peak = floors.get(n) or floors.setdefault(n, timed_run(floor_cmd(n)))
            rows.append({"layout": layout, "direction": direction, "processes": n, **r,
                         "import_floor_s": floor_s, "import_floor_peak_bytes": floor_peak,
                         "ratio_to_cp": r["seconds"] / r["cp_s"],
                         "work_ratio_to_cp": (r["seconds"] - floor_s) / r["cp_s"],
                         "round_trip_bit_exact": exact, "tensors": count})
        print(json.dumps(rows[-2:]), flush=True)
        shutil.rmtree(meg)
        shutil.rmtree(back)
    logits = logits_check(work, args.logit_layers) if args.logit_layers else None
    print(table(["layout", "direction", "procs", "GB", "convert s", "imports s", "cp s",
                 "x cp", "work x cp", "peak RSS GB", "bit-exact"],
                [[r["layout"], r["direction"], r["processes"], r["input_bytes"] / 1e9,
                  r["seconds"], r["import_floor_s"], r["cp_s"], r["ratio_to_cp"],
                  r["work_ratio_to_cp"], r["peak_rss_bytes"] / 1e9,
                  r["round_trip_bit_exact"]] for r in rows]))
    if logits:
        print(f"logits, {logits['layers']}-layer cut, {logits['tokens']} tokens: max |megatron -"
              f" transformers| = {logits['max_abs_diff']:.3g} (largest logit "
              f"{logits['logit_scale']:.3g})")
    record("converter_8b", {"layouts": args.layouts, "config": config},
           {"cases": rows, "logits": logits}, load_at_start=load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
