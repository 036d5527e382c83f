"""`evaluate(...)`: one model on one benchmark -> samples, metrics, outputs.

    prompts (file + split) -> responses (vLLM, the recipe's chat template)
      -> answer span -> judge-free scores (exact / option match, format, [pref])
      -> [judge verdicts over HTTP, cached] -> per-task + overall metrics with
         bootstrap intervals -> OUT/summary.json, samples.jsonl, table.txt

Every input is checked before the model is loaded: the data file and split, the
model path, the judge prompt, and that the judge's host accepts a connection.
"""

from __future__ import annotations

import hashlib
import socket
import time
import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path

from maestro_megatron.errors import UserError
from maestro_megatron.eval.generate import GenerationConfig
from maestro_megatron.eval.judge import JudgeConfig, JudgeUnavailable

DEFAULT_FORMAT = r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*"
DEFAULT_ANSWER = r"<answer>(.*?)</answer>"


@dataclass
class EvalResult:
    """What `evaluate` produced (also on disk in `out_dir`)."""

    summary: dict
    samples: list[dict]
    out_dir: Path
    table: str


def benchmark_name(data: str | Path | None) -> str:
    return "builtin" if data is None else Path(data).stem


def default_out_dir(model: str | Path, data: str | Path | None, split: str | None) -> Path:
    """MODEL/eval/<data stem>-<split> (a run's results live beside it)."""
    return Path(model) / "eval" / f"{benchmark_name(data)}-{split or 'all'}"


def load_records(data, split, recipe=None, limit: int | None = None):
    from maestro_megatron.data.prompts import BUILTIN_PROMPTS, load_prompts, select_split

    keys = {}
    if recipe is not None:
        d = recipe.data
        keys = dict(prompt_key=d.prompt_key, reference_key=d.reference_key,
                    task_key=d.task_key, split_key=d.split_key)
    records = load_prompts(data, **keys)
    records = select_split(records, split, str(data or BUILTIN_PROMPTS))
    return records[:limit] if limit is not None else records


def check_judge_reachable(cfg: JudgeConfig, timeout_s: float = 10.0) -> None:
    """UserError unless the judge URL's host:port accepts a TCP connection."""
    parts = urllib.parse.urlsplit(cfg.endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"--judge-url {cfg.url!r}: not an http(s) URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        raise JudgeUnavailable(f"judge {cfg.endpoint}: cannot connect ({exc})") from None


def _data_config(recipe, tokenizer):
    from maestro_megatron.config.schema import DataConfig

    if recipe is not None:
        return recipe.data
    chat = getattr(tokenizer, "chat_template", None) is not None
    return DataConfig(prompt_format="chat" if chat else "plain")


def _generation_config(gen: GenerationConfig | None, recipe) -> GenerationConfig:
    """Unset fields (None) take the recipe's values: max new tokens, model length."""
    gen = gen or GenerationConfig()
    if gen.max_new_tokens is None:
        gen = replace(gen, max_new_tokens=recipe.rollout.max_new_tokens if recipe else 256)
    if gen.max_model_len is None and recipe is not None and recipe.model.hf_path is None:
        gen = replace(gen, max_model_len=recipe.model.seq_length)
    return gen


def _patterns(recipe) -> tuple[str, str]:
    if recipe is None:
        return DEFAULT_ANSWER, DEFAULT_FORMAT
    return recipe.rewards.ppl.answer_pattern, recipe.rewards.fmt.pattern


def _samples(records, generations, recipe) -> list[dict]:
    from maestro_megatron.eval.metrics import judge_free

    answer_pattern, format_pattern = _patterns(recipe)
    rows = []
    for i, (record, group) in enumerate(zip(records, generations)):
        key = hashlib.sha256(f"{record.prompt}\x00{record.reference}".encode()).hexdigest()
        for j, gen in enumerate(group):
            row = {"id": f"{i}:{j}", "row": i, "sample": j, "key": key[:16],
                   "task": record.task, "prompt": record.prompt,
                   "reference": record.reference, "response": gen.text,
                   "num_tokens": gen.num_tokens, "truncated": gen.truncated,
                   "pref": None, "judge": "off", "judge_reply": None}
            row.update(judge_free(record.prompt, record.reference, gen.text,
                                  answer_pattern=answer_pattern,
                                  format_pattern=format_pattern))
            rows.append(row)
    return rows


def _score_pref(samples: list[dict], recipe) -> None:
    from maestro_megatron.scorers import EmbeddingSimilarityScorer, build_scorer

    scorer = (build_scorer(recipe.rewards.pref) if recipe is not None
              else EmbeddingSimilarityScorer())
    scores = scorer.score([s["prompt"] for s in samples], [s["response"] for s in samples],
                          [s["reference"] for s in samples])
    for s, v in zip(samples, scores.tolist()):
        s["pref"] = float(v)


def _judge(samples: list[dict], judge: JudgeConfig, template: str, cache_path) -> dict:
    from maestro_megatron.eval.cache import JudgeCache
    from maestro_megatron.eval.judge import JudgeClient
    from maestro_megatron.eval.verdict import render_messages

    asked = [s for s in samples if s["reference"] is not None]
    for s in samples:
        s["judge"] = "no_reference" if s["reference"] is None else "error"
    client = JudgeClient(judge, JudgeCache(cache_path))
    messages = [render_messages(template, s["prompt"], s["reference"], s["answer"])
                for s in asked]
    results, stats = client.judge_all(messages)
    for s, judgment in zip(asked, results):
        if judgment is not None:
            s["judge_reply"] = judgment.reply
            s["judge"] = {True: "correct", False: "incorrect", None: "unparseable"}[
                judgment.verdict]
    return stats.as_dict()


def evaluate(model: str | Path, data: str | Path | None = None, *, split: str | None = "test",
             out_dir: str | Path | None = None, judge: JudgeConfig | None = None,
             judge_prompt: str | Path | None = None, judge_cache: str | Path | None = None,
             generation: GenerationConfig | None = None, metric: str = "exact",
             pref: bool = False, limit: int | None = None, quiet: bool = False
             ) -> EvalResult:
    """Evaluate `model` (run dir, HF dir or megatron checkpoint) on `data` (None: the
    built-in prompts) rows of `split` and write OUT (default MODEL/eval/<data>-<split>).

    judge None: judge-free metrics only. judge_cache default: OUT/../judge_cache.jsonl.
    generation fields left None come from the run's recipe. Returns an EvalResult whose
    `summary` is what summary.json holds. UserError on any bad input, before the model
    is loaded.
    """
    from maestro_megatron.eval.generate import encode_all, generate, load_tokenizer
    from maestro_megatron.eval.metrics import by_task, summarize
    from maestro_megatron.eval.report import format_table, write_outputs
    from maestro_megatron.eval.source import resolve_source, run_recipe
    from maestro_megatron.eval.verdict import load_template

    if metric not in ("exact", "option", "chrf"):
        raise UserError(f"--metric must be exact, option or chrf, got {metric!r}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    if generation is not None and generation.samples < 1:
        raise UserError(f"--samples must be >= 1, got {generation.samples}")
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(model, data, split)
    cache_path = Path(judge_cache) if judge_cache else out_dir.parent / "judge_cache.jsonl"
    template = load_template(judge_prompt) if judge is not None else None
    records = load_records(data, split, run_recipe(model), limit)  # before any model
    if judge is not None:
        check_judge_reachable(judge)
    timings = {}
    with resolve_source(model) as source:
        gen = _generation_config(generation, source.recipe)
        tokenizer = load_tokenizer(source.hf_dir)
        prompt_ids = encode_all(tokenizer, records, _data_config(source.recipe, tokenizer), gen)
        start = time.perf_counter()
        generations = generate(source.hf_dir, prompt_ids, gen)
        timings["generate_s"] = round(time.perf_counter() - start, 2)
        samples = _samples(records, generations, source.recipe)
        if pref:
            _score_pref(samples, source.recipe)
        judge_stats = None
        if judge is not None:
            start = time.perf_counter()
            judge_stats = _judge(samples, judge, template, cache_path)
            timings["judge_s"] = round(time.perf_counter() - start, 2)
        summary = {
            "model": str(model), "name": source.name, "kind": source.kind,
            "benchmark": benchmark_name(data), "data": str(data) if data else None,
            "split": split, "metric": metric,
            "generation": {k: getattr(gen, k) for k in gen.__dataclass_fields__},
            "judge": None if judge is None else {
                "url": judge.endpoint, "model": judge.model,
                "prompt_sha256": hashlib.sha256(template.encode()).hexdigest(),
                "cache": str(cache_path), "stats": judge_stats},
            "overall": summarize(samples), "tasks": by_task(samples),
            "timing": timings,
        }
    table = format_table(summary)
    write_outputs(out_dir, summary, samples, table)
    if not quiet:
        print(table, end="")
        if judge_stats is not None:
            print(f"judge: {len(samples)} samples, {judge_stats['cached']} judgments from the "
                  f"cache, {judge_stats['new']} new, {judge_stats['requests']} new requests, "
                  f"{judge_stats['errors']} errors"
                  + (f" (last: {judge_stats['last_error']})" if judge_stats["errors"] else "")
                  + f"; cache {cache_path}")
        print(f"wrote {out_dir}/summary.json, samples.jsonl, table.txt")
    return EvalResult(summary, samples, out_dir, table)
