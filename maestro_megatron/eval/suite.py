"""A benchmarks file (recipes/eval/paper_benchmarks.yaml) -> one `evaluate` per benchmark.

File keys (anything else is refused, naming the key):
  judge:       JudgeConfig fields (url, model, api_key_env, concurrency, timeout_s,
               max_retries, backoff_s, max_tokens, temperature); --judge-* flags win
  generation:  GenerationConfig fields (samples, temperature, top_p, max_new_tokens,
               seed, max_model_len); CLI flags given explicitly win
  data_root:   directory the benchmark paths are relative to (relative to the file's
               directory when itself relative; $MAESTRO_EVAL_DATA overrides it)
  benchmarks:  list of {name, data, split, metric (exact | option | chrf), limit}
Every file is checked to exist before the first model load. Results:
MODEL/eval/<name>/ per benchmark and MODEL/eval/suite.json (the headline per benchmark).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import yaml

from maestro_megatron.errors import UserError

TOP_KEYS = {"judge", "generation", "data_root", "benchmarks"}
BENCH_KEYS = {"name", "data", "split", "metric", "limit"}
METRICS = ("exact", "option", "chrf")


def load_suite(path: str | Path) -> dict:
    """The parsed, checked benchmarks file (data paths made absolute)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--benchmarks {path}: file not found")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - TOP_KEYS
    if unknown:
        raise UserError(f"{path}: unknown key(s) {sorted(unknown)} (allowed {sorted(TOP_KEYS)})")
    root = Path(os.environ.get("MAESTRO_EVAL_DATA") or spec.get("data_root") or ".")
    root = root if root.is_absolute() else path.parent / root
    benches = spec.get("benchmarks") or []
    if not benches:
        raise UserError(f"{path}: no benchmarks listed")
    for i, bench in enumerate(benches):
        where = f"{path}: benchmarks[{i}]"
        if not isinstance(bench, dict) or "name" not in bench or "data" not in bench:
            raise UserError(f"{where}: needs at least name and data")
        bad = set(bench) - BENCH_KEYS
        if bad:
            raise UserError(f"{where}: unknown key(s) {sorted(bad)}")
        if bench.get("metric", "exact") not in METRICS:
            raise UserError(f"{where}.metric: {bench['metric']!r} is not one of "
                            f"{', '.join(METRICS)}")
        bench["data"] = os.path.normpath(root / bench["data"])
    return spec


def _generation(spec: dict, args):
    from maestro_megatron.eval.options import generation_config

    gen = generation_config(args)
    fields = {f.name for f in dataclasses.fields(gen)}
    file_values = spec.get("generation") or {}
    bad = set(file_values) - fields
    if bad:
        raise UserError(f"generation: unknown key(s) {sorted(bad)}")
    defaults = vars(type(gen)())
    explicit = {k: getattr(gen, k) for k in fields
                if getattr(gen, k) != defaults.get(k)}  # flags the user changed
    return dataclasses.replace(type(gen)(), **{**file_values, **explicit})


def run_suite(model: str | Path, suite_path: str | Path, args) -> dict:
    """Evaluate `model` on every benchmark of the file; returns suite.json's content."""
    from maestro_megatron.eval.metrics import headline
    from maestro_megatron.eval.options import judge_config
    from maestro_megatron.eval.runner import evaluate

    spec = load_suite(suite_path)
    missing = [b["data"] for b in spec["benchmarks"] if not Path(b["data"]).is_file()]
    if missing:
        raise UserError(f"benchmark file(s) not found: {', '.join(missing)} (set data_root "
                        "or $MAESTRO_EVAL_DATA)")
    judge = judge_config(args, spec.get("judge"))
    generation = _generation(spec, args)
    base = Path(args.out) if args.out else Path(model) / "eval"
    results = {}
    for bench in spec["benchmarks"]:
        metric = bench.get("metric", "exact")
        res = evaluate(model, bench["data"], split=bench.get("split"),
                       out_dir=base / bench["name"], judge=judge,
                       judge_prompt=args.judge_prompt,
                       judge_cache=args.judge_cache or base / "judge_cache.jsonl",
                       generation=generation, metric=metric, pref=args.pref,
                       limit=bench.get("limit", args.limit))
        results[bench["name"]] = {"accuracy": headline(res.summary["overall"], metric,
                                                       judge is not None),
                                  "counts": res.summary["overall"]["counts"],
                                  "dir": str(res.out_dir)}
    (base / "suite.json").write_text(json.dumps(results, indent=2) + "\n")
    return results
