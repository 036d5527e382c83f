"""Prompt files -> PromptRecords, benchmark column sets, errors, the resumable stream."""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from maestro_megatron.config.schema import DataConfig, FmtConfig
from maestro_megatron.data import (
    BUILTIN_PROMPTS,
    DataError,
    PromptRecord,
    PromptStream,
    builtin_texts,
    load_builtin_rows,
    load_data_config,
    load_prompts,
    load_sft_rows,
)

ROOT = Path(__file__).resolve().parents[2]


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


# ---------------------------------------------------------------- built-in set


def test_builtin_prompt_set():
    everything = load_data_config(DataConfig(split=None))
    assert len(everything) == 196
    assert Counter(r.task for r in everything) == {"arith": 80, "story": 56, "explain": 60}
    records = load_data_config(DataConfig())  # data.split: train
    held_out = load_data_config(DataConfig(), split="test")
    assert (len(records), len(held_out)) == (147, 49)
    assert Counter(r.task for r in held_out) == {"arith": 20, "story": 14, "explain": 15}
    assert not {r.prompt for r in records} & {r.prompt for r in held_out}
    assert records[0] == PromptRecord("What is 0 + 3?", "3", "arith", split="train")
    by_prompt = {r.prompt: r for r in everything}
    assert by_prompt["Why is the sky blue?"].reference == "Air scatters blue light the most."
    assert by_prompt["Write one sentence about a cat in the park."].reference == \
        "The cat sleeps in the park."
    assert all(r.reference for r in everything)
    assert len(by_prompt) == len(everything)  # no duplicate prompts


def test_builtin_responses_follow_the_format_and_answer_the_reference():
    pattern = FmtConfig().pattern
    rows = load_builtin_rows(split=None)
    for row in rows:
        assert re.fullmatch(pattern, row["response"], flags=re.DOTALL), row
        answer = re.search(r"<answer>(.*?)</answer>", row["response"]).group(1)
        assert answer == row["reference"]
        if row["task"] == "arith":
            a, op, b = row["prompt"][len("What is "):-1].split()
            assert int(answer) == (int(a) + int(b) if op == "+" else int(a) - int(b))
    # short targets: the tiny model's warm-up must fit in rollout.max_new_tokens = 48
    assert max(len(row["response"].split()) for row in rows) <= 30
    assert len(builtin_texts()) == 3 * len(load_builtin_rows())


def test_builtin_file_is_what_the_generator_writes():
    spec = importlib.util.spec_from_file_location("make_builtin_data",
                                                  ROOT / "tools" / "make_builtin_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render(module.build_records()) == BUILTIN_PROMPTS.read_text(encoding="utf-8")


def test_sft_rows(tmp_path):
    rows = load_sft_rows()
    assert len(rows) == 147 and set(rows[0]) == {"prompt", "response", "task"}
    assert {r["prompt"] for r in rows} == {r["prompt"] for r in load_builtin_rows()}
    assert rows[0] == {"prompt": "What is 0 + 3?",
                       "response": "<think>0 plus 3 is 3.</think><answer>3</answer>",
                       "task": "arith"}
    path = tmp_path / "sft.csv"
    path.write_text("q,a\nHi?,<answer>hi</answer>\nBye?,\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{path}: line 3: key 'a' must be")):
        load_sft_rows(path, prompt_key="q", response_key="a")
    path.write_text("q,a\nHi?,<answer>hi</answer>\n", encoding="utf-8")
    assert load_sft_rows(path, prompt_key="q", response_key="a") == [
        {"prompt": "Hi?", "response": "<answer>hi</answer>"}]
    with pytest.raises(DataError, match="line 1: missing key 'response'"):
        load_sft_rows(_write_jsonl(tmp_path / "x.jsonl", [{"prompt": "p"}]))


# ---------------------------------------------------------------- files and keys


def test_jsonl_custom_keys_reference_and_task_defaults(tmp_path):
    path = _write_jsonl(tmp_path / "my_set.jsonl", [
        {"q": "Add 1 and 2.", "gold": 3, "kind": "math"},
        "",  # blank lines are skipped
        {"q": "Say hi.", "gold": ""},
        {"q": "Say bye.", "gold": None, "kind": ""},
    ])
    records = load_prompts(path, prompt_key="q", reference_key="gold", task_key="kind")
    assert records == [PromptRecord("Add 1 and 2.", "3", "math"),
                       PromptRecord("Say hi.", None, "my_set"),
                       PromptRecord("Say bye.", None, "my_set")]


def test_csv_with_quoted_multiline_field(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text('prompt,reference,task\n"Line one\nline two",ans,t1\nSecond?,,\n',
                    encoding="utf-8")
    assert load_prompts(path) == [PromptRecord("Line one\nline two", "ans", "t1"),
                                  PromptRecord("Second?", None, "qa")]


def test_json_list_file(tmp_path):
    path = tmp_path / "set.json"
    path.write_text(json.dumps([{"prompt": "a"}, {"prompt": "b", "reference": "c"}]))
    assert load_prompts(path) == [PromptRecord("a", None, "set"), PromptRecord("b", "c", "set")]


# ---------------------------------------------------------------- benchmark column sets

BENCHMARK_ROWS = [
    ({"STORY": "Ann puts a ball in the box and leaves.", "QUESTION": "Where will Ann look?",
      "OPTION-A": "A. box", "OPTION-B": "B. bag", "OPTION-C": "C. bed", "OPTION-D": "D. car",
      "答案\nANSWER": "A"},
     PromptRecord("Ann puts a ball in the box and leaves.\n\nQuestion: Where will Ann look?\n"
                  "A. box\nB. bag\nC. bed\nD. car\n"
                  "Answer with the letter of the most likely option.", "A", "tombench")),
    ({"故事": "小明把球放进盒子。", "问题": "小明会去哪里找？", "选项A": "A. 盒子",
      "选项B": "B. 包", "答案\nANSWER": "A"},
     PromptRecord("小明把球放进盒子。\n\nQuestion: 小明会去哪里找？\nA. 盒子\nB. 包\n"
                  "Answer with the letter of the most likely option.", "A", "tombench")),
    ({"qid": 1, "language": "en", "scenario": "Tom lost his dog.", "subject": "Tom",
      "emotion_choices": ["Joy", "Sadness"], "emotion_label": "Sadness",
      "cause_choices": ["He lost his dog", "He won"], "cause_label": "He lost his dog"},
     PromptRecord("Scenario: Tom lost his dog.\n\nWhat emotion would Tom ultimately feel in "
                  "this situation?\nA. Joy\nB. Sadness\n\nWhy would Tom feel this emotion?\n"
                  "A. He lost his dog\nB. He won", "Sadness. He lost his dog", "emobench")),
    ({"scenario": "Amy failed a test.", "subject": "Amy", "question type": "response",
      "choices": ["Study more", "Give up"], "label": "Study more", "category": "Personal"},
     PromptRecord("Scenario: Amy failed a test.\n\nIn this scenario, what is the most effective "
                  "response for Amy?\nA. Study more\nB. Give up", "Study more", "emobench")),
    ({"id": "0", "translation": {"en": "The cat sleeps.", "fr": "Le chat dort."}},
     PromptRecord("Translate the following English text into French:\n\nThe cat sleeps.",
                  "Le chat dort.", "translation")),
    ({"question": "Why is ice slippery?", "reference_answer": "A thin water layer.",
      "responses": [{"response_model": "m", "response": "..."}]},  # Natural Reasoning
     PromptRecord("Why is ice slippery?", "A thin water layer.", "nr")),
    ({"id": "x", "question": "2+2?", "answer": "4", "answer_type": "Integer",
      "category": "Mathematics", "difficulty": "Easy"},  # WebInstruct-verified
     PromptRecord("2+2?", "4", "Mathematics")),
    ({"question": "Name a prime.", "reference_answer": None, "model_answer": "7",
      "question_source": "natural_reasoning"},  # GeneralThought
     PromptRecord("Name a prime.", "7", "natural_reasoning")),
    ({"chapter": "School", "title": "Waiting my turn", "story": "Sometimes I wait."},
     PromptRecord("Write a Social Story for an autistic child titled \"Waiting my turn\". "
                  "Theme: School.", "Sometimes I wait.", "social_story")),
    ({"instruction": "Write a story.", "input": "About lunch.", "output": "I eat lunch."},
     PromptRecord("Write a story.\n\nAbout lunch.", "I eat lunch.", "nr")),
]


@pytest.mark.parametrize("row, expected", BENCHMARK_ROWS)
def test_benchmark_column_sets(tmp_path, row, expected):
    path = _write_jsonl(tmp_path / "nr.jsonl", [row])
    assert load_prompts(path) == [expected]


def test_configured_task_key_wins_over_alias(tmp_path):
    row = {"question": "q?", "answer": "a", "category": "Physics", "task": "mine"}
    assert load_prompts(_write_jsonl(tmp_path / "f.jsonl", [row]))[0].task == "mine"


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("lines, line_no, needle", [
    (['{"prompt": "ok"}', '{"prompt": "ok"}', '{"prompt": oops}'], 3, "invalid JSON"),
    (['{"prompt": "ok"}', '{"text": "no prompt"}'], 2, "missing prompt key 'prompt'"),
    (['{"prompt": 5}'], 1, "key 'prompt' must be a string"),
    (['{"prompt": "ok"}', '', '{"prompt": "  "}'], 3, "key 'prompt' is empty"),
    (['{"prompt": "ok", "reference": ["a"]}'], 1, "key 'reference' must be a string"),
    (['{"prompt": "ok", "task": 3}'], 1, "key 'task' must be a string"),
    (['["prompt"]'], 1, "expected an object"),
    (['{"question": 7, "answer": "a"}'], 1, "'prompt (via the question column set)'"),
])
def test_jsonl_errors_name_file_line_and_key(tmp_path, lines, line_no, needle):
    path = tmp_path / "bad_rows.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_prompts(path)
    message = str(info.value)
    print(message)
    assert str(path) in message and f"line {line_no}:" in message and needle in message


def test_csv_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('prompt,reference\n"multi\nline",a\nonly_one_field\n', encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{path}: line 4: 1 fields")):
        load_prompts(path)
    path.write_text("question,answer\nfine,1\n,2\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{path}: line 3: key 'prompt (via")):
        load_prompts(path)


@pytest.mark.parametrize("name, text, needle", [
    ("empty.jsonl", "", "empty file"),
    ("blank.jsonl", "\n\n", "empty file"),
    ("header_only.csv", "prompt,reference\n", "empty file"),
    ("prompts.parquet", "x", "unknown prompt file extension '.parquet'"),
    ("obj.json", '{"prompt": "a"}', "must hold a list"),
])
def test_file_level_errors(tmp_path, name, text, needle):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(needle)) as info:
        load_prompts(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_prompts(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------- the stream


def _records(n: int) -> list[PromptRecord]:
    return [PromptRecord(f"p{i}", None, "t") for i in range(n)]


def test_stream_epochs_are_permutations_and_seeded():
    records = _records(12)
    stream = PromptStream(records, 4, seed=7)
    epoch0 = [r for _ in range(3) for r in stream.next_batch()]
    epoch1 = [r for _ in range(3) for r in stream.next_batch()]
    assert sorted(epoch0, key=lambda r: int(r.prompt[1:])) == records
    assert sorted(epoch1, key=lambda r: int(r.prompt[1:])) == records
    assert epoch0 != epoch1 and epoch0 != records
    assert stream.state_dict()["epoch"] == 1 and stream.state_dict()["cursor"] == 12
    again = PromptStream(records, 4, seed=7)
    assert [r for _ in range(3) for r in again.next_batch()] == epoch0
    other = PromptStream(records, 4, seed=8)
    assert [r for _ in range(3) for r in other.next_batch()] != epoch0


def test_stream_batch_crosses_epoch_boundary():
    stream = PromptStream(_records(7), 5, seed=0)
    first, second = stream.next_batch(), stream.next_batch()
    assert len(first) == len(second) == 5
    assert len(set(first) | set(second[:2])) == 7  # epoch 0 completed exactly once
    assert stream.state_dict()["epoch"] == 1 and stream.state_dict()["cursor"] == 3


def test_stream_resume_reproduces_the_uninterrupted_run():
    records = load_prompts()
    full = PromptStream(records, 8, seed=3)
    uninterrupted = [full.next_batch() for _ in range(60)]  # > 2 epochs of 196
    head = PromptStream(records, 8, seed=3)
    for _ in range(37):
        head.next_batch()
    state = json.loads(json.dumps(head.state_dict()))  # survives a JSON checkpoint
    resumed = PromptStream(records, 8, seed=999)
    resumed.load_state_dict(state)
    assert [resumed.next_batch() for _ in range(23)] == uninterrupted[37:]


def test_stream_rejects_state_of_other_data():
    state = PromptStream(_records(10), 2, seed=0).state_dict()
    with pytest.raises(DataError, match="different data"):
        PromptStream(_records(11), 2, seed=0).load_state_dict(state)
    changed = [PromptRecord("x", None, "t")] + _records(10)[1:]
    with pytest.raises(DataError, match="different data"):
        PromptStream(changed, 2, seed=0).load_state_dict(state)


def test_benchmark_splits_keep_test_rows_out_of_training(tmp_path):
    """The paper's benchmark files mix train / validation / test rows (columns prompt,
    reference, split): training reads `train` only; the landed loader kept every row."""
    from maestro_megatron.config.schema import DataConfig
    from maestro_megatron.data import describe_splits, load_data_config

    path = tmp_path / "bench.csv"
    rows = ["prompt,reference,split"]
    rows += [f"train question {i},a{i},train" for i in range(6)]
    rows += [f"held-out question {i},b{i},validation" for i in range(2)]
    rows += [f"test question {i},c{i},test" for i in range(3)]
    path.write_text("\n".join(rows) + "\n")
    data = DataConfig(path=str(path))
    train = load_data_config(data)
    assert [r.prompt for r in train] == [f"train question {i}" for i in range(6)]
    stream = PromptStream(train, 4, seed=0)
    seen = {r.prompt for _ in range(10) for r in stream.next_batch()}
    assert seen == {r.prompt for r in train}  # 40 draws: every train row, nothing else
    assert [r.reference for r in load_data_config(data, split="test")] == ["c0", "c1", "c2"]
    assert describe_splits(data) == (f"data: {path}: train 6, validation 2, test 3; "
                                      "using split 'train' (6 rows)")
    assert len(load_data_config(data, split=None)) == 11
    with pytest.raises(DataError, match=r"no rows of split 'dev' .*'train': 6"):
        load_data_config(data, split="dev")


def test_a_file_without_a_split_column_is_used_whole(tmp_path):
    from maestro_megatron.config.schema import DataConfig
    from maestro_megatron.data import describe_splits, load_data_config

    path = tmp_path / "plain.jsonl"
    path.write_text('{"prompt": "p1", "reference": "  "}\n{"prompt": "p2", "reference": ""}\n')
    data = DataConfig(path=str(path))
    records = load_data_config(data)
    assert [r.prompt for r in records] == ["p1", "p2"]
    assert [r.reference for r in records] == [None, None]  # whitespace is no reference
    assert describe_splits(data) == f"data: {path}: 2 rows, all used (no split column)"
