"""Per-sample scores -> per-benchmark and per-task metrics (the summary.json blocks).

A sample is one response (prompt row x sample index) as a dict (a samples.jsonl row).
Judge-free fields: ``exact_match`` and ``option_match`` (None without a reference or
an option), ``chrf`` (sentence chrF as a fraction, None without a reference),
``format`` (the recipe's fmt pattern, fullmatch), ``truncated``, ``pref`` (None unless
asked). Judge field: ``judge`` in {"correct", "incorrect",
"unparseable", "error", "no_reference", "off"}.

Accuracies are means over the samples that HAVE the score, with a 95% percentile
bootstrap interval: exact / option match over samples with a reference (and a named
option), judge accuracy over samples with a parsed verdict (``judged - unparseable``);
the counts say how many that is, so an unparseable verdict is never scored either way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from maestro_megatron.eval.answers import chrf, exact_match, extract_answer, option_match
from maestro_megatron.eval.bootstrap import bootstrap_mean

JUDGE_STATES = ("correct", "incorrect", "unparseable", "error", "no_reference", "off")


def judge_free(prompt: str, reference: str | None, response: str, *, answer_pattern: str,
               format_pattern: str) -> dict:
    """The judge-free fields of one response."""
    answer = extract_answer(response, answer_pattern)
    return {"answer": answer,
            "format": re.fullmatch(format_pattern, response, flags=re.DOTALL) is not None,
            "exact_match": exact_match(answer, reference, prompt),
            "option_match": option_match(answer, reference, prompt),
            "chrf": chrf(answer, reference)}


def _interval(values: Sequence[bool | float], seed: int) -> dict | None:
    interval = bootstrap_mean([float(v) for v in values], seed=seed)
    return None if interval is None else interval.as_dict()


def summarize(samples: Sequence[dict], *, seed: int = 0) -> dict:
    """The metrics block of a group of samples (a benchmark, or one of its tasks)."""
    judged = [s for s in samples if s["judge"] in ("correct", "incorrect", "unparseable")]
    verdicts = [s["judge"] == "correct" for s in judged if s["judge"] != "unparseable"]
    em = [s["exact_match"] for s in samples if s["exact_match"] is not None]
    opt = [s["option_match"] for s in samples if s["option_match"] is not None]
    pref = [s["pref"] for s in samples if s.get("pref") is not None]
    chrfs = [s["chrf"] for s in samples if s.get("chrf") is not None]
    n = len(samples)
    return {
        "exact_match": _interval(em, seed),
        "option_match": _interval(opt, seed),
        "chrf": _interval(chrfs, seed),
        "judge_accuracy": _interval(verdicts, seed),
        "format_rate": sum(s["format"] for s in samples) / n if n else None,
        "pref_mean": sum(pref) / len(pref) if pref else None,
        "counts": {
            "n": n,
            "prompts": len({s["row"] for s in samples}),
            "with_reference": sum(s["reference"] is not None for s in samples),
            "exact_scored": len(em),
            "option_scored": len(opt),
            "judged": len(judged),
            "unparseable": sum(s["judge"] == "unparseable" for s in samples),
            "judge_errors": sum(s["judge"] == "error" for s in samples),
            "truncated": sum(bool(s["truncated"]) for s in samples),
        },
    }


def headline(block: dict, metric: str, judged: bool) -> dict | None:
    """The accuracy a table leads with: the judge's when a judge was asked (None when it
    gave no parseable verdict), else the judge-free metric ("exact" or "option")."""
    if judged:
        return block["judge_accuracy"]
    return block[{"option": "option_match", "chrf": "chrf"}.get(metric, "exact_match")]


def by_task(samples: Sequence[dict], *, seed: int = 0) -> dict[str, dict]:
    """summarize() per `task` value, tasks in first-seen order."""
    tasks: dict[str, list[dict]] = {}
    for s in samples:
        tasks.setdefault(s["task"], []).append(s)
    return {task: summarize(rows, seed=seed) for task, rows in tasks.items()}
