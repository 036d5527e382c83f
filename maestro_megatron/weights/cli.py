"""Command line of the converter: ``maestro convert ...`` and tools/convert_checkpoint.py."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from maestro_megatron.errors import UserError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30}


def parse_size(text: str) -> int:
    """``5GB`` / ``500MiB`` / ``1000000`` -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 5GB, 500MiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def add_convert_commands(sub) -> None:
    """Add ``hf-to-megatron`` and ``megatron-to-hf`` to an argparse subparsers object."""
    p = sub.add_parser("hf-to-megatron", help="HF safetensors dir -> megatron torch_dist dir",
                       description="Run in 1 process, or under torchrun/srun with TP*PP "
                                   "processes (each holds 1/(TP*PP) of the model).")
    p.add_argument("--hf", type=Path, required=True, help="HF model directory")
    p.add_argument("--out", type=Path, required=True, help="new checkpoint directory")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size it is laid out for")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size")
    p.add_argument("--dtype", default="auto", help="auto (the HF config's) | fp32 | bf16 | fp16")
    p.add_argument("--make-vocab-size-divisible-by", type=int, default=128,
                   help="vocabulary padding multiple (times TP), as in the recipe")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run, convert="hf-to-megatron")
    p = sub.add_parser("megatron-to-hf", help="megatron torch_dist dir (any TP/PP) -> HF dir")
    p.add_argument("--megatron", type=Path, required=True, help="torch_dist checkpoint dir")
    p.add_argument("--out", type=Path, required=True, help="new HF model directory")
    p.add_argument("--dtype", default=None,
                   help="output dtype (default: the checkpoint's) | auto | fp32 | bf16 | fp16")
    p.add_argument("--max-shard-size", type=parse_size, default=parse_size("5GB"),
                   help="bytes per safetensors file (default 5GB)")
    p.add_argument("--config", type=Path, default=None,
                   help="recipe (or ModelConfig YAML/JSON) when the checkpoint has no "
                        "maestro_weights.json (default for RUN/checkpoints/step_N: "
                        "RUN/recipe.yaml); sizes must agree with the checkpoint's tensors")
    p.add_argument("--architecture", default=None,
                   help="HF architecture with --config (default: the recipe's, or inferred)")
    p.add_argument("--tokenizer", type=Path, default=None,
                   help="tokenizer directory: gives the real vocabulary size (rows past it "
                        "are padding) and is copied into --out (default: maestro_weights.json's"
                        " hf_assets, else RUN/tokenizer, model.hf_path, RUN/hf_final)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run, convert="megatron-to-hf")


def add_convert_parser(subparsers) -> argparse.ArgumentParser:
    """``maestro convert {hf-to-megatron,megatron-to-hf} ...`` on the main CLI."""
    parser = subparsers.add_parser("convert", help="convert checkpoints HF <-> megatron")
    add_convert_commands(parser.add_subparsers(dest="convert_command", required=True))
    return parser


def run(args: argparse.Namespace) -> int:
    """Execute a parsed convert command; a UserError (ConversionError, a recipe's
    ConfigError) -> one line on stderr, exit 2."""
    # Conversion is CPU work; a visible GPU would make megatron pick NCCL/CUDA tensors.
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    from maestro_megatron.weights import convert

    try:
        if args.convert == "hf-to-megatron":
            convert.hf_to_megatron(args.hf, args.out, tp=args.tp, pp=args.pp, dtype=args.dtype,
                                   make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
                                   progress=not args.no_progress)
        else:
            convert.megatron_to_hf(args.megatron, args.out, dtype=args.dtype,
                                   max_shard_bytes=args.max_shard_size,
                                   config_path=args.config, architecture=args.architecture,
                                   tokenizer=args.tokenizer, progress=not args.no_progress)
    except UserError as exc:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {exc}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":
        print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convert_checkpoint.py",
                                     description="HF safetensors <-> megatron torch_dist")
    add_convert_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of tools/convert_checkpoint.py."""
    args = build_parser().parse_args(argv)
    return args.func(args)
