"""`maestro eval`'s pure parts: verdict parsing, answer normalisation, option letters,
bootstrap intervals (golden values), summaries, the table and atomic outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maestro_megatron.errors import UserError
from maestro_megatron.eval.answers import (
    answer_letter,
    exact_match,
    extract_answer,
    normalize,
    option_match,
    prompt_options,
)
from maestro_megatron.eval.bootstrap import bootstrap_mean, paired_difference
from maestro_megatron.eval.metrics import by_task, judge_free, summarize
from maestro_megatron.eval.verdict import (
    load_template,
    parse_verdict,
    prompt_hash,
    render_messages,
)


@pytest.mark.parametrize("reply,verdict", [
    ("The answer matches.\nVERDICT: CORRECT", True),
    ("VERDICT: INCORRECT", False),
    ("verdict: correct", True),
    ("**VERDICT: CORRECT**", True),
    ("**Verdict:** Incorrect.", False),
    ("Reasoning...\n\nVERDICT: INCORRECT\n", False),
    ("<think>maybe VERDICT: CORRECT</think>\nVERDICT: INCORRECT", False),  # think ignored
    ("<think>VERDICT: CORRECT (still thinking, cut off", None),
    ("VERDICT: CORRECT\nVERDICT: INCORRECT", None),  # disagreeing lines: no guess
    ("VERDICT: CORRECT\nVERDICT: CORRECT", True),
    ("The answer is correct.", None),  # no verdict line
    ("VERDICT: PARTIALLY CORRECT", None),
    ("VERDICT: CORRECTNESS UNCLEAR", None),
    ("I would say VERDICT: CORRECT but", None),  # not a line of its own
    ("", None),
    (None, None),
])
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) is verdict


def test_template_fields_and_hash():
    template = load_template()
    assert not any(line.startswith("#") for line in template.splitlines())
    messages = render_messages(template, "What is {x}?", "4", "four")
    assert "What is {x}?" in messages[0]["content"]  # braces in a sample are left alone
    assert "{answer}" not in messages[0]["content"]
    assert prompt_hash(messages) == prompt_hash(render_messages(template, "What is {x}?",
                                                                "4", "four"))
    assert prompt_hash(messages) != prompt_hash(render_messages(template, "What is {x}?",
                                                                "4", "five"))


def test_a_template_without_a_field_is_refused(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# comment\nQ: {question}\nA: {answer}\n")
    with pytest.raises(UserError, match=r"missing field\(s\) \{reference\}"):
        load_template(path)
    with pytest.raises(UserError, match="file not found"):
        load_template(tmp_path / "none.txt")


@pytest.mark.parametrize("answer,reference,match", [
    ("42", "42", True), ("42.0", "42", True), ("1,000", "1000", True), ("41", "42", False),
    ("The Eiffel Tower!", "eiffel tower", True), ("  Paris. ", "paris", True),
    ("a cat", "the cat", True), ("cats", "cat", False), ("x", None, None), ("x", "  ", None),
])
def test_exact_match(answer, reference, match):
    assert exact_match(answer, reference) is match


def test_normalize_and_extract():
    assert normalize("The  Quick, brown FOX.") == "quick brown fox"
    assert extract_answer("<think>x</think><answer> 7 </answer>") == "7"
    assert extract_answer("no tags here ") == "no tags here"
    assert extract_answer("<answer>1</answer><answer>2</answer>") == "1"  # the first span


PROMPT = "Story.\n\nQuestion: where?\nA. In the box\nB. In the basket\nC. Under the bed\n"


@pytest.mark.parametrize("answer,letter", [
    ("B", "B"), ("(B)", "B"), ("B.", "B"), ("B. In the basket", "B"), ("B) basket", "B"),
    ("The answer is C", "C"), ("Answer: (A)", "A"), ("in the basket", "B"),
    ("A or B", None), ("the answer is A, not option B", None), ("somewhere", None),
])
def test_answer_letter(answer, letter):
    assert answer_letter(answer, prompt_options(PROMPT)) == letter


def test_option_match_maps_a_text_reference_to_its_letter():
    assert prompt_options(PROMPT) == {"A": "In the box", "B": "In the basket",
                                      "C": "Under the bed"}
    assert option_match("B", "B", PROMPT) is True
    assert option_match("b. in the basket", "In the basket", PROMPT) is True  # EmoBench EA
    assert option_match("A", "In the basket", PROMPT) is False
    assert option_match("A", "Joy. Her friend came", PROMPT) is None  # no such option
    assert option_match("A", None, PROMPT) is None


def test_bootstrap_golden_values():
    # n = 2, x = [0, 1]: a resample's mean is 0, 1/2 or 1 with probability 1/4, 1/2, 1/4,
    # so the 2.5% and 97.5% quantiles of many resamples are exactly 0 and 1.
    iv = bootstrap_mean([0, 1], resamples=4000, seed=3)
    assert (iv.value, iv.low, iv.high) == (0.5, 0.0, 1.0)
    iv = bootstrap_mean([1, 1, 1, 1])
    assert (iv.value, iv.low, iv.high) == (1.0, 1.0, 1.0)
    assert bootstrap_mean([]) is None
    # n = 400, p = 1/2: the normal approximation gives 0.5 +- 1.96 * sqrt(.25 / 400) = 0.049
    iv = bootstrap_mean([0, 1] * 200, seed=0)
    assert iv.value == 0.5
    assert 0.5 - iv.low == pytest.approx(0.049, abs=0.006)
    assert iv.high - 0.5 == pytest.approx(0.049, abs=0.006)
    # the same seed gives the same interval, as numpy computes it
    rng = np.random.default_rng(0)
    x = np.array([0.0, 1.0] * 200)
    means = x[rng.integers(0, 400, size=(2000, 400))].mean(axis=1)
    assert [iv.low, iv.high] == list(np.quantile(means, [0.025, 0.975]))


def test_paired_bootstrap():
    base = [0, 1, 0, 1, 1, 0] * 20
    same = paired_difference(base, base)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)  # pairs cancel exactly
    better = paired_difference([0] * 50, [1] * 50)
    assert (better.value, better.low, better.high) == (1.0, 1.0, 1.0)
    # one run right on 30 of 120 more samples, never worse: diff 0.25, interval > 0
    other = [1 if (b == 1 or i % 4 == 0) else 0 for i, b in enumerate(base)]
    diff = paired_difference(base, other)
    assert diff.value == pytest.approx(sum(other) / 120 - sum(base) / 120)
    assert 0 < diff.low < diff.value < diff.high
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1, 0], [1])


def sample(task, judge="off", em=None, fmt=True, truncated=False, row=0, pref=None):
    return {"task": task, "judge": judge, "exact_match": em, "option_match": None,
            "format": fmt, "truncated": truncated, "reference": "r", "row": row, "pref": pref}


def test_summarize_counts_and_rates():
    rows = [sample("a", "correct", True, row=0, pref=0.5),
            sample("a", "incorrect", False, fmt=False, row=1, pref=0.1),
            sample("a", "unparseable", True, truncated=True, row=2),
            sample("b", "error", None, row=3), sample("b", "correct", False, row=4)]
    block = summarize(rows)
    assert block["counts"] == {"n": 5, "prompts": 5, "with_reference": 5, "exact_scored": 4,
                               "option_scored": 0, "judged": 4, "unparseable": 1,
                               "judge_errors": 1, "truncated": 1}
    assert block["judge_accuracy"]["value"] == pytest.approx(2 / 3)  # parsed verdicts only
    assert block["exact_match"]["value"] == 0.5
    assert block["format_rate"] == 0.8 and block["pref_mean"] == pytest.approx(0.3)
    assert block["option_match"] is None
    tasks = by_task(rows)
    assert list(tasks) == ["a", "b"] and tasks["b"]["judge_accuracy"]["value"] == 1.0


def test_judge_free_fields():
    fields = judge_free("Q", "12", "<think>6+6</think> <answer>12</answer>",
                        answer_pattern=r"<answer>(.*?)</answer>",
                        format_pattern=r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*")
    assert fields == {"answer": "12", "format": True, "exact_match": True,
                      "option_match": None, "chrf": 1.0}


def test_outputs_are_written_atomically(tmp_path):
    from maestro_megatron.eval.report import format_table, write_outputs

    rows = [dict(sample("arith", "correct", True), id="0:0")]
    summary = {"name": "run", "benchmark": "builtin", "split": "test", "metric": "exact",
               "judge": {"model": "j"}, "overall": summarize(rows), "tasks": by_task(rows)}
    table = format_table(summary)
    assert "arith" in table and "100.0 [100.0, 100.0]" in table
    out = tmp_path / "eval" / "builtin-test"
    write_outputs(out, summary, rows, table)
    (out / "stale.txt").write_text("from an earlier evaluation")
    write_outputs(out, summary, rows, table)  # replaces the whole directory
    assert sorted(p.name for p in out.iterdir()) == ["samples.jsonl", "summary.json",
                                                    "table.txt"]
    assert json.loads((out / "summary.json").read_text())["name"] == "run"
    assert [p.name for p in out.parent.iterdir()] == ["builtin-test"]  # no temp left


def test_prompt_chunks_keep_the_global_index():
    from maestro_megatron.eval.generate import prompt_chunks

    prompts = [[1] * 3, [1] * 2, [1] * 4, [1] * 9, [1]]
    assert prompt_chunks(prompts, 5) == [(0, prompts[0:2]), (2, prompts[2:3]),
                                         (3, prompts[3:4]), (4, prompts[4:5])]
    assert prompt_chunks(prompts, None) == [(0, prompts)]
    assert prompt_chunks(prompts, 100) == [(0, prompts)]
    assert prompt_chunks([], 5) == []


def _eval_dir(path, name, exact, judge):
    from maestro_megatron.eval.report import write_outputs

    rows = [dict(sample("arith" if i < 6 else "story", j, e, row=i), key=f"k{i}", sample=0,
                 id=f"{i}:0") for i, (e, j) in enumerate(zip(exact, judge))]
    summary = {"name": name, "benchmark": "builtin", "split": "test", "metric": "exact",
               "judge": {"model": "j"}, "overall": summarize(rows), "tasks": by_task(rows)}
    write_outputs(path, summary, rows, "")
    return path


def test_compare_pairs_samples_and_reports_differences(tmp_path):
    from maestro_megatron.eval.compare import compare, format_comparison

    base = _eval_dir(tmp_path / "a", "run", [True, False, False, True, False, False, True,
                                             False], ["correct", "incorrect"] * 4)
    other = _eval_dir(tmp_path / "b", "run", [True, True, True, True, False, False, True,
                                              False], ["correct"] * 7 + ["unparseable"])
    result = compare([base, other], tmp_path / "cmp")
    assert result["runs"] == ["run/a", "run/b"]  # same run name: the folder tells them apart
    exact = result["scores"]["exact"]
    assert exact["arith"][1]["diff_vs_first"]["value"] == pytest.approx(2 / 6)
    assert exact["all"][1]["pairs"] == 8
    judge = result["scores"]["judge"]["all"][1]
    assert judge["pairs"] == 7  # the unparseable verdict pairs with nothing
    assert judge["diff_vs_first"]["value"] == pytest.approx(3 / 7)
    text = format_comparison(result)
    assert "judge accuracy:" in text and "exact accuracy:" in text
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 5_000
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text()) == result
