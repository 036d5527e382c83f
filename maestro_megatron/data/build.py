"""`maestro data build`: the paper's training set from NOVER-format benchmark files.

NOVER's public files hold one CSV per benchmark, columns ``prompt, reference, split``,
each mixing train / validation / test rows. The training set is every benchmark's
train rows, de-duplicated (a prompt seen twice is kept once) and with every prompt that
also appears in any benchmark's validation or test split removed, so nothing the
evaluation scores was trained on. Prompts are compared after whitespace and case are
normalised. Output: one JSONL row per prompt ``{prompt, reference, task, split:
"train"}``, task = the benchmark's name, written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from maestro_megatron.data.prompts import DataError, PromptRecord, load_prompts, split_counts

NOVER_FILES = {"nr": "natural_reasoning", "gt": "general_thoughts", "webit": "webinstruct",
               "ssgen": "ss_gen", "emobench": "emobench", "tombench": "tombench",
               "opus_books_all_pairs": "opus_books"}
"""NOVER's file stems -> the benchmark names the eval suite uses."""
HELD_OUT = ("validation", "test")


def prompt_key(text: str) -> str:
    """What two prompts must share to count as the same prompt."""
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class BenchmarkCounts:
    name: str
    splits: dict[str, int]
    kept: int
    duplicate: int
    """Train rows dropped as a repeat of an earlier train row."""
    held_out: int
    """Train rows dropped because the prompt is in a validation or test split."""


def build_training_set(files: dict[str, Path]) -> tuple[list[PromptRecord],
                                                        list[BenchmarkCounts]]:
    """name -> NOVER CSV; the de-duplicated train rows (task = name) and the counts."""
    loaded = {name: load_prompts(path) for name, path in files.items()}
    for name, records in loaded.items():
        if all(r.split is None for r in records):
            raise DataError(f"{files[name]}: no split column: cannot tell train rows from "
                            "test rows")
    held = {prompt_key(r.prompt) for records in loaded.values() for r in records
            if r.split in HELD_OUT}
    seen: set[str] = set()
    out, counts = [], []
    for name, records in loaded.items():
        kept = duplicate = held_out = 0
        for r in (r for r in records if r.split == "train"):
            key = prompt_key(r.prompt)
            if key in held:
                held_out += 1
            elif key in seen:
                duplicate += 1
            else:
                seen.add(key)
                kept += 1
                out.append(PromptRecord(r.prompt, r.reference, name, "train", r.where))
        counts.append(BenchmarkCounts(name, split_counts(records), kept, duplicate, held_out))
    return out, counts


def nover_files(directory: Path, names: Sequence[str] | None = None) -> dict[str, Path]:
    """The NOVER CSVs in `directory` (all of `NOVER_FILES` present, or `names`)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory")
    wanted = list(names) if names else [s for s in NOVER_FILES if (directory / f"{s}.csv")
                                        .is_file()]
    files = {}
    for stem in wanted:
        path = directory / f"{stem}.csv"
        if not path.is_file():
            raise DataError(f"{path}: file not found (NOVER's files: "
                            f"{', '.join(s + '.csv' for s in NOVER_FILES)})")
        files[NOVER_FILES.get(stem, stem)] = path
    if not files:
        raise DataError(f"{directory}: none of NOVER's files "
                        f"({', '.join(s + '.csv' for s in NOVER_FILES)})")
    return files


def write_jsonl(records: Sequence[PromptRecord], out: Path) -> None:
    """The records as JSONL, written to a temporary sibling and renamed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({"prompt": r.prompt, "reference": r.reference, "task": r.task,
                                "split": r.split}, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)


def format_counts(counts: Sequence[BenchmarkCounts]) -> str:
    lines = ["benchmark           train  validation   test  kept  repeats  in a test split"]
    for c in counts:
        lines.append(f"{c.name:<18}{c.splits.get('train', 0):>6}{c.splits.get('validation', 0):>12}"
                     f"{c.splits.get('test', 0):>7}{c.kept:>6}{c.duplicate:>9}{c.held_out:>17}")
    lines.append(f"{'total':<18}{sum(c.splits.get('train', 0) for c in counts):>6}"
                 f"{sum(c.splits.get('validation', 0) for c in counts):>12}"
                 f"{sum(c.splits.get('test', 0) for c in counts):>7}"
                 f"{sum(c.kept for c in counts):>6}{sum(c.duplicate for c in counts):>9}"
                 f"{sum(c.held_out for c in counts):>17}")
    return "\n".join(lines)


def add_data_parser(subparsers) -> None:
    """``maestro data build --nover DIR --out FILE [--files STEM ...]``."""
    parser = subparsers.add_parser("data", help="build training data from benchmark files")
    sub = parser.add_subparsers(dest="data_command", required=True)
    p = sub.add_parser("build", help="the paper's training set from NOVER's CSVs: train "
                       "rows only, de-duplicated, nothing of a validation or test split")
    p.add_argument("--nover", type=Path, required=True,
                   help="directory of NOVER's CSVs (nr.csv, gt.csv, webit.csv, ssgen.csv, "
                        "emobench.csv, tombench.csv, opus_books_all_pairs.csv)")
    p.add_argument("--out", type=Path, required=True, help="training JSONL to write")
    p.add_argument("--files", nargs="*", default=None, metavar="STEM",
                   help="only these files (stems; default: every NOVER file present)")
    p.set_defaults(func=_cmd_build)


def _cmd_build(args) -> int:
    records, counts = build_training_set(nover_files(args.nover, args.files))
    if not records:
        raise DataError(f"{args.nover}: no train rows left to write")
    write_jsonl(records, args.out)
    print(format_counts(counts), flush=True)
    print(f"wrote {len(records)} training prompts to {args.out}", flush=True)
    return 0
