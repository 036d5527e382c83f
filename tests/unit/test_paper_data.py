"""The paper's public files in their real layouts, on small files written here:
NOVER's one CSV per benchmark (prompt, reference, split; train / validation / test
mixed), SS-GEN's jsonl release (story_content), EmoBench as NOVER writes it ("A: ..."
option lines, two-part emotion + cause references), letter-style references.

Only train rows reach `maestro data build`'s output (de-duplicated, nothing that is in
any test or validation split); only test rows reach an eval with `split: test`; every
row gets a metric value."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from maestro_megatron.cli import main
from maestro_megatron.data.build import build_training_set, nover_files
from maestro_megatron.data.prompts import DataError, load_prompts, select_split
from maestro_megatron.eval.answers import chrf, exact_match, option_match, prompt_options

EMO_PROMPT = """Scenario: Mia sends the wrong file to her boss and does not notice.

What emotion would Mia ultimately feel in this situation?
A: Embarrassment
B: Pride
F: Oblivious

Why would Mia feel this emotion?
A: She does not realize her mistake
B: She is proud of the file"""
EMO_REF = "Emotion: F: Oblivious, Cause: A: She does not realize her mistake"


def _csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "reference", "split"])
        w.writerows(rows)
    return path


@pytest.fixture
def nover(tmp_path) -> Path:
    d = tmp_path / "dataset"
    d.mkdir()
    _csv(d / "nr.csv", [("What is 2+2?", "4", "train"), ("What is 3+3?", "6", "train"),
                        ("what is  2+2?", "4", "train"),   # a repeat (case, spaces)
                        ("Name a prime.", "2", "test"), ("Why is the sky blue?", "Rayleigh",
                                                          "validation")])
    _csv(d / "emobench.csv", [(EMO_PROMPT, EMO_REF, "test"),
                              ("Name a prime.", "3", "train"),  # in nr's test split
                              ("How would Sam feel?\nA: Happy\nB: Sad", "B", "train")])
    return d


def test_data_build_keeps_train_rows_only_and_nothing_of_a_test_split(nover):
    records, counts = build_training_set(nover_files(nover))
    assert [(r.task, r.prompt) for r in records] == [
        ("natural_reasoning", "What is 2+2?"), ("natural_reasoning", "What is 3+3?"),
        ("emobench", "How would Sam feel?\nA: Happy\nB: Sad")]
    by_name = {c.name: c for c in counts}
    assert by_name["natural_reasoning"].splits == {"train": 3, "test": 1, "validation": 1}
    assert (by_name["natural_reasoning"].kept, by_name["natural_reasoning"].duplicate) == (2, 1)
    assert (by_name["emobench"].kept, by_name["emobench"].held_out) == (1, 1)


def test_data_build_cli_writes_the_training_file_and_prints_counts(nover, tmp_path, capsys):
    out = tmp_path / "train.jsonl"
    assert main(["data", "build", "--nover", str(nover), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and {r["split"] for r in rows} == {"train"}
    text = capsys.readouterr().out
    assert "natural_reasoning" in text and "total" in text and str(out) in text
    # the training loader reads it as it is
    assert len(load_prompts(out)) == 3
    assert main(["data", "build", "--nover", str(tmp_path / "nowhere"), "--out",
                 str(tmp_path / "x.jsonl")]) == 2
    assert not (tmp_path / "x.jsonl").exists()


def test_a_file_without_splits_is_refused(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "nr.csv").write_text("prompt,reference\nq,a\n")
    with pytest.raises(DataError, match="no split column"):
        build_training_set(nover_files(d))


def test_eval_with_split_test_reads_only_the_test_rows(nover):
    rows = select_split(load_prompts(nover / "nr.csv"), "test", "nr.csv")
    assert [r.prompt for r in rows] == ["Name a prime."]


def test_emobench_as_nover_writes_it_gets_option_scores():
    assert prompt_options(EMO_PROMPT)["B"] == "She is proud of the file"  # "A:" lines
    assert option_match("Emotion: F, Cause: A", EMO_REF, EMO_PROMPT) is True
    assert option_match("F, A", EMO_REF, EMO_PROMPT) is True
    assert option_match("Emotion: F, Cause: B", EMO_REF, EMO_PROMPT) is False
    assert option_match("F", EMO_REF, EMO_PROMPT) is False  # one part only
    prompt = "How would Sam feel?\nA: Happy\nB: Sad"
    assert option_match("B: Sad", "B", prompt) is True
    assert option_match("Happy", "B", prompt) is False


def test_letter_style_references_are_matched_as_letters():
    prompt = "Which is a prime?\n(A) 4\n(B) 7\n(C) 9"
    assert exact_match("(B) 7", "B", prompt) is True
    assert exact_match("The answer is B", "B", prompt) is True
    assert exact_match("7", "B", prompt) is True  # the option's text
    assert exact_match("C", "B", prompt) is False
    assert exact_match("Paris", "paris") is True  # free-form references as before


def test_chrf_for_translation():
    assert chrf("Le chat est sur le tapis.", "Le chat est sur le tapis.") == 1.0
    near = chrf("Le chat est sur la table.", "Le chat est sur le tapis.")
    far = chrf("Un chien dort.", "Le chat est sur le tapis.")
    assert 0 < far < near < 1
    assert chrf("x", None) is None


def test_ss_gen_release_rows_load(tmp_path):
    path = tmp_path / "refined_test.jsonl"
    path.write_text(json.dumps({"id": 1, "chapter": "School", "explanation": "...",
                                "title": "Going to the library",
                                "story_content": "Today I go to the library."}) + "\n")
    (record,) = load_prompts(path)
    assert "Going to the library" in record.prompt and "School" in record.prompt
    assert record.reference == "Today I go to the library."


def test_gdpo_std_eps_keeps_a_near_constant_component_near_zero():
    """GDPO's code divides by std + 1e-4: a component that barely varies within a group
    stays near 0, where the exact std blows it up to unit scale."""
    import torch

    from maestro_megatron.rewards.normalize import normalize_components

    r = torch.tensor([[[1.0, 0.0], [1.0 + 1e-6, 1.0], [1.0, 0.0], [1.0, 1.0]]])  # [1, 4, 2]
    exact = normalize_components(r, "group")
    gdpo = normalize_components(r, "group", std_eps=1e-4)
    assert exact[0, 1, 0] > 1.0  # 1e-6 of spread -> unit scale
    assert gdpo[0, :, 0].abs().max() < 0.02
    assert torch.allclose(gdpo[0, :, 1], exact[0, :, 1], atol=1e-3)  # a real spread as before
    flat = torch.ones(1, 4, 2)
    assert normalize_components(flat, "group", std_eps=1e-4).abs().max() == 0


def test_rloo_advantage_is_the_leave_one_out_baseline():
    import torch

    from maestro_megatron.algorithms.advantages import ADVANTAGE_ESTIMATORS

    r = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    a = ADVANTAGE_ESTIMATORS["rloo"](r, eps=1e-6, normalize_std=True)
    by_hand = torch.tensor([[1 - 11 / 3, 2 - 10 / 3, 3 - 9 / 3, 6 - 6 / 3]])
    assert torch.allclose(a, by_hand)


def test_nover_recipe_checks_the_format_exactly_as_upstream():
    import re

    from maestro_megatron.config import load_recipe

    nover = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "qwen3_8b_nover.yaml")
    strict = re.compile(nover.rewards.fmt.pattern, re.DOTALL)
    assert strict.fullmatch("<think>a\nb</think>\n<answer>x</answer>")
    for bad in ("<think>a</think><think>b</think><answer>x</answer>",
                "text before <think>a</think><answer>x</answer>",
                "<think>a</think><answer>x</answer><answer>y</answer>"):
        assert not strict.fullmatch(bad), bad
    g = nover.grpo
    assert (g.kl_coef, g.eps_low, g.eps_high, nover.rollout.temperature) == (0.1, 0.1, 0.2, 0.6)
