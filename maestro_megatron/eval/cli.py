"""``maestro eval``: arguments -> `evaluate` (one benchmark), `run_suite` (a benchmarks
YAML such as recipes/eval/paper_benchmarks.yaml) and `compare` (--compare)."""

from __future__ import annotations

import argparse
from pathlib import Path

from maestro_megatron.errors import UserError


def add_eval_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="evaluate a run / HF dir / megatron checkpoint on a "
                       "benchmark (judge-free metrics, optional LLM judge)")
    p.add_argument("model", help="run directory (recipe.yaml + hf_final/), HF model "
                   "directory or megatron checkpoint (checkpoints/step_N)")
    p.add_argument("--data", default=None,
                   help="benchmark file (.jsonl/.csv/.json; default: the built-in prompts)")
    p.add_argument("--split", default="test",
                   help="rows of this split (default test; a file without a split column "
                   "is used whole; 'all' = every row)")
    p.add_argument("--benchmarks", default=None, metavar="YAML",
                   help="evaluate every benchmark of this file (recipes/eval/*.yaml) "
                   "instead of --data")
    p.add_argument("--out", default=None, help="output directory (default "
                   "MODEL/eval/<data>-<split>)")
    p.add_argument("--metric", choices=("exact", "option", "chrf"), default=None,
                   help="judge-free metric of the table (option: multiple-choice letter; "
                   "chrf: sentence chrF, for translation)")
    p.add_argument("--limit", type=int, default=None, help="first N rows only")
    p.add_argument("--pref", action="store_true",
                   help="also score r_pref (the recipe's preference scorer; default MiniLM)")
    g = p.add_argument_group("generation")
    g.add_argument("--samples", type=int, default=1, help="responses per prompt (k)")
    g.add_argument("--temperature", type=float, default=None,
                   help="default 0 (greedy) for k=1, 1.0 for k>1")
    g.add_argument("--max-new-tokens", type=int, default=None,
                   help="default: the recipe's rollout.max_new_tokens (256 without one)")
    g.add_argument("--max-model-len", type=int, default=None,
                   help="default: the recipe's model.seq_length (else the model's)")
    g.add_argument("--seed", type=int, default=0)
    j = p.add_argument_group("judge (any OpenAI-compatible /v1/chat/completions)")
    j.add_argument("--judge-url", default=None, help="e.g. http://node17:8000/v1")
    j.add_argument("--judge-model", default=None, help="served model name")
    j.add_argument("--judge-api-key-env", default=None,
                   help="environment variable holding the API key "
                   "(default MAESTRO_JUDGE_API_KEY)")
    j.add_argument("--judge-concurrency", type=int, default=None)
    j.add_argument("--judge-timeout", type=float, default=None, help="seconds per request")
    j.add_argument("--judge-retries", type=int, default=None)
    j.add_argument("--judge-max-tokens", type=int, default=None)
    j.add_argument("--judge-prompt", default=None,
                   help="prompt template file (default maestro_megatron/eval/judge_prompt.txt)")
    j.add_argument("--judge-cache", default=None,
                   help="JSONL judgment cache (default OUT/../judge_cache.jsonl)")
    p.add_argument("--compare", nargs="+", default=None, metavar="RUN",
                   help="also evaluate these runs (or read these eval output directories) "
                   "and print all side by side with paired bootstrap differences")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from maestro_megatron.logs import configure_quiet

    configure_quiet()  # before vLLM is imported (MAESTRO_VERBOSE=1 keeps everything)
    from maestro_megatron.eval.compare import compare, format_comparison
    from maestro_megatron.eval.options import generation_config, judge_config
    from maestro_megatron.eval.runner import evaluate
    from maestro_megatron.eval.suite import run_suite

    split = None if args.split == "all" else args.split
    if args.benchmarks is not None:
        if args.data is not None or args.compare:
            raise UserError("--benchmarks evaluates its own files: drop --data / --compare")
        run_suite(args.model, args.benchmarks, args)
        return 0
    common = dict(split=split, judge=judge_config(args), judge_prompt=args.judge_prompt,
                  judge_cache=args.judge_cache, generation=generation_config(args),
                  metric=args.metric or "exact", pref=args.pref, limit=args.limit)
    first = evaluate(args.model, args.data, out_dir=args.out, **common)
    if not args.compare:
        return 0
    dirs = [first.out_dir]
    for other in args.compare:
        if (Path(other) / "summary.json").is_file():
            dirs.append(Path(other))  # an earlier evaluation: read, not redone
        else:
            dirs.append(evaluate(other, args.data, **common).out_dir)
    result = compare(dirs, first.out_dir)
    print(format_comparison(result), end="")
    print(f"wrote {first.out_dir}/comparison.json, comparison.png")
    return 0
