"""tools/diagnose_run.py and tools/ablate.py: the statistics, worked by hand."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


diag = _tool("diagnose_run")
ablate = _tool("ablate")


def _rec(step, prompt, task, response, reference, rewards, action=None, kl=0.0):
    return {"step": step, "prompt_index": prompt, "task": task, "response": response,
            "reference": reference, "rewards": rewards, "action": action,
            "weights": [0.5, 0.5], "kl_seq": kl, "num_tokens": 3}


def test_utility_is_exact_match_of_the_answer_span():
    assert diag.utility("<think>2 plus 2</think><answer> 4 </answer>", "4") == 1.0
    assert diag.utility("<think>x</think><answer>5</answer>", "4") == 0.0
    assert diag.utility("<answer>4</answer>", None) == 0.0


def test_pearson_by_hand_and_undefined_for_constant_sides():
    # x = 1,2,3 ; y = 0,0,1: mean x 2, mean y 1/3; cov sum = (-1)(-1/3)+0+(1)(2/3) = 1;
    # sxx = 2, syy = 1/9+1/9+4/9 = 2/3 -> 1 / sqrt(4/3) = 0.8660
    assert diag.pearson([1, 2, 3], [0, 0, 1]) == pytest.approx(math.sqrt(3) / 2)
    assert diag.pearson([1, 1, 1], [0, 1, 0]) is None
    assert diag.pearson([1, 2, 3], [1, 1, 1]) is None


def test_group_correlations_average_groups_where_both_sides_vary():
    right, wrong = "<answer>4</answer>", "<answer>5</answer>"
    records = [
        # group (1, 0): a tracks utility perfectly, b against it
        _rec(1, 0, "arith", right, "4", {"a": 1.0, "b": 0.0}),
        _rec(1, 0, "arith", wrong, "4", {"a": 0.0, "b": 1.0}),
        # group (1, 1): utility constant (both wrong): no signal, not counted
        _rec(1, 1, "arith", wrong, "4", {"a": 0.3, "b": 0.0}),
        _rec(1, 1, "arith", wrong, "4", {"a": 0.9, "b": 1.0}),
    ]
    for r in records:
        r["utility"] = diag.utility(r["response"], r["reference"])
    corr = diag.group_correlations(records, ["a", "b"])
    assert corr["a"] == (pytest.approx(1.0), 1, 2)
    assert corr["b"] == (pytest.approx(-1.0), 1, 2)


def test_action_hit_rate_counts_the_emphasis_on_the_response_best_component():
    records = [
        _rec(1, 0, "t", "", None, {"a": 1.0, "b": 0.0}, action=0),  # z: a +1, b -1 -> hit
        _rec(1, 0, "t", "", None, {"a": 0.0, "b": 1.0}, action=0),  # z: a -1, b +1 -> miss
        _rec(1, 1, "t", "", None, {"a": 0.5, "b": 0.5}, action=1),  # z all 0: tie, skipped
        _rec(1, 1, "t", "", None, {"a": 0.5, "b": 0.5}, action=1),
    ]
    diag.group_zscores(records, ["a", "b"])
    assert records[0]["z"] == {"a": pytest.approx(1.0), "b": pytest.approx(-1.0)}
    assert diag.action_hit_rate(records, ["a", "b"]) == pytest.approx(0.5)
    for r in records:
        r["action"] = None
    assert diag.action_hit_rate(records, ["a", "b"]) is None


def test_diagnose_reports_per_category_windows():
    records = [_rec(s, 0, "arith", "<answer>4</answer>" if s % 2 else "<answer>1</answer>",
                    "4", {"a": float(s % 2), "b": 0.0}, kl=0.1 * s) for s in (1, 2, 3, 4)]
    report = diag.diagnose(records, 2)
    rows = report["categories"]["arith"]
    assert [r["steps"] for r in rows] == [[1, 2], [3, 4]]
    assert [r["utility"] for r in rows] == [0.5, 0.5]
    assert rows[1]["kl_seq"] == pytest.approx(0.35)
    assert "| 1-2 | 0.500 |" in diag.render(report)


def test_ablate_reads_eval_summaries_and_tabulates_mean_and_std(tmp_path):
    summary = {"overall": {"format_rate": 0.9, "pref_mean": 0.4, "judge_accuracy": None},
               "tasks": {"arith": {"exact_match": {"value": 0.25, "low": 0.1, "high": 0.4}},
                         "story": {"exact_match": None}}}
    got = ablate.utility(json.loads(json.dumps(summary)))
    assert got == {"arith_exact": 0.25, "explain_exact": None, "story_exact": None,
                   "format_rate": 0.9, "pref": 0.4, "judge": None}
    assert ablate.mean_std([0.1, 0.3]) == "0.200 ± 0.141"  # sample std: sqrt(0.02)
    assert ablate.mean_std([None, None]) == "-"
    text = ablate.table({"equal": [got, {**got, "arith_exact": 0.35}]}, [1, 2], 3.0, 40)
    assert "| equal | 0.300 ± 0.071 | - | - | 0.900 ± 0.000 | 0.400 ± 0.000 | - | 2 |" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"top\n{ablate.README_BEGIN}\nold\n{ablate.README_END}\nbottom\n")
    ablate.write_readme(readme, "new table")
    assert readme.read_text() == (f"top\n{ablate.README_BEGIN}\nnew table\n"
                                  f"{ablate.README_END}\nbottom\n")


def test_sweep_grid_expands_every_combination_and_names_bad_specs(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    sweep = _tool("sweep")
    grid = sweep.parse_grid(["conductor.lr=1e-3,3e-3", "grpo.lr=1e-4"])
    assert grid == [("conductor.lr", ["1e-3", "3e-3"]), ("grpo.lr", ["1e-4"])]
    assert sweep.settings(grid) == [("conductor.lr=1e-3", "grpo.lr=1e-4"),
                                    ("conductor.lr=3e-3", "grpo.lr=1e-4")]
    with pytest.raises(SystemExit, match="'conductor.lr': expected key=v1,v2"):
        sweep.parse_grid(["conductor.lr"])


def test_action_advantages_are_the_mean_and_standard_error_per_emphasis():
    records = [_rec(1, 0, "t", "", None, {"a": 0.0, "b": 0.0}, action=a) for a in (0, 0, 0, 1)]
    for r, adv in zip(records, (1.0, 2.0, 3.0, -6.0)):
        r["advantage"] = adv
    got = diag.action_advantages(records, ["a", "b", "c"])
    # action 0: mean 2, sample std 1 -> s.e. 1 / sqrt(3); action 1 once, action 2 never
    assert got["a"] == (pytest.approx(2.0), pytest.approx(1 / math.sqrt(3)), 3)
    assert got["b"] is None and got["c"] is None
    for r in records:
        r["action"] = None  # baselines sample no emphasis
    assert set(diag.action_advantages(records, ["a", "b"]).values()) == {None}


def test_weights_across_seeds_averages_the_tail_and_measures_agreement():
    across = _tool("weights_across_seeds")
    records = [{"step": s, "components": ["a", "b"],
                "weights": {"x": [0.1 * s, 1 - 0.1 * s], **({"y": [0.5, 0.5]} if s == 1 else {})}}
               for s in (1, 2, 3)]
    names, final = across.final_weights(records, last=2)
    assert names == ["a", "b"]
    assert final["x"] == [pytest.approx(0.25), pytest.approx(0.75)]  # steps 2, 3
    assert final["y"] == [0.5, 0.5]  # only step 1 logged it
    top, share, corr = across.agreement([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.1, 0.3, 0.6]])
    # argmax 0, 0, 2; deviations from the mean 1/3: corr(1,2) = 0.0967 / sqrt(0.1267 *
    # 0.0867) = +0.923, corr(1,3) = -0.974, corr(2,3) = -0.986
    assert (top, share) == (0, pytest.approx(2 / 3))
    assert corr == pytest.approx((0.9226 - 0.9737 - 0.9862) / 3, abs=1e-3)
    with pytest.raises(ValueError, match="no conductor weights"):
        across.final_weights([], last=5)
