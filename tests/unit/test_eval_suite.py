"""The paper's benchmarks file and the judge / generation settings it feeds."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from maestro_megatron.errors import UserError
from maestro_megatron.eval.cli import add_eval_parser
from maestro_megatron.eval.options import generation_config, judge_config
from maestro_megatron.eval.suite import _generation, load_suite, run_suite

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "recipes" / "eval" / "paper_benchmarks.yaml"


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers())
    return parser.parse_args(["eval", "runs/x", *argv])


def test_the_paper_file_lists_the_seven_benchmarks():
    spec = load_suite(PAPER)
    metrics = {b["name"]: b["metric"] for b in spec["benchmarks"]}
    assert metrics == {"natural_reasoning": "exact", "general_thoughts": "exact",
                       "webinstruct": "exact", "ss_gen": "exact", "emobench": "option",
                       "tombench": "option", "opus_books": "chrf"}
    # NOVER's files, test rows only
    assert {b["split"] for b in spec["benchmarks"]} == {"test"}
    assert all(b["data"].endswith(".csv") for b in spec["benchmarks"])
    judge = judge_config(parse(), spec["judge"])
    assert judge.model == "Qwen/Qwen3-235B-A22B-Instruct-2507" and judge.concurrency == 32
    assert judge.endpoint == "http://localhost:8000/v1/chat/completions"


def test_flags_override_the_file():
    spec = load_suite(PAPER)
    args = parse("--judge-url", "http://node7:8000/v1", "--judge-concurrency", "4",
                 "--max-new-tokens", "64")
    judge = judge_config(args, spec["judge"])
    assert judge.url == "http://node7:8000/v1" and judge.concurrency == 4
    assert judge.timeout_s == 300  # from the file
    gen = _generation(spec, args)
    assert gen.max_new_tokens == 64 and gen.max_model_len == 8192


def test_judge_and_generation_flags():
    assert judge_config(parse()) is None  # no judge: judge-free metrics only
    with pytest.raises(UserError, match="both --judge-url and --judge-model"):
        judge_config(parse("--judge-model", "m"))
    assert generation_config(parse()).temperature == 0.0  # greedy
    assert generation_config(parse("--samples", "4")).temperature == 1.0


def test_bad_files_are_refused_before_any_model(tmp_path, monkeypatch):
    bad = tmp_path / "b.yaml"
    bad.write_text("benchmarks: [{name: x, data: x.jsonl, metric: bleu}]\n")
    with pytest.raises(UserError, match=r"benchmarks\[0\].metric: 'bleu'"):
        load_suite(bad)
    bad.write_text("judges: {}\nbenchmarks: [{name: x, data: x.jsonl}]\n")
    with pytest.raises(UserError, match=r"unknown key\(s\) \['judges'\]"):
        load_suite(bad)
    monkeypatch.setenv("MAESTRO_EVAL_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"benchmark file.* not found.*nowhere/nr.csv"):
        run_suite("runs/x", PAPER, parse())
