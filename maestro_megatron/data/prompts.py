"""Prompt datasets: JSONL / CSV / JSON files -> `PromptRecord`s, and a resumable stream.

``load_prompts(path, prompt_key=..., reference_key=..., task_key=...)`` reads one record
per row. When a row lacks the configured prompt key, the column sets of the public
releases of the paper's seven benchmarks are tried (``ALIASES``, in this order):

- ``tombench`` (ToMBench; REAL, checked against evaluation code reading its jsonl):
  ``STORY``, ``QUESTION``, ``OPTION-A``..``OPTION-D`` (values prefixed "A. "), answer
  ``ANSWER`` or ``答案\\nANSWER``; Chinese rows ``故事``, ``问题``, ``选项A``..``选项D``.
  Prompt = story + question + options; reference = the answer letter.
- ``emobench_eu`` (EmoBench EU.jsonl; REAL, checked the same way): ``scenario``, ``subject``,
  ``emotion_choices``, ``emotion_label`` (+ ``cause_choices``, ``cause_label``).
  Reference = "<emotion>. <cause>".
- ``emobench_ea`` (EmoBench EA.jsonl; REAL): ``scenario``, ``subject``, ``choices``,
  ``label`` (the text of the right choice), ``question type``.
- ``opus_books`` (Helsinki-NLP/opus_books, the HF ``translation`` feature):
  ``translation: {src: .., tgt: ..}``,
  the first language is the source; prompt "Translate the following ...", reference =
  the target text.
- ``question``: ``question`` + the first of ``reference_answer`` / ``answer`` /
  ``model_answer``, task from ``task`` / ``category`` / ``question_source``: Natural
  Reasoning (``question``, ``reference_answer``), WebInstruct-verified (``question``,
  ``answer``, ``category``), GeneralThought (``question``, ``reference_answer``,
  ``model_answer``, ``question_source``). These three and OPUS-Books follow the
  dataset cards as remembered; they were NOT re-checked against the files offline.
- ``ss_gen`` (SS-GEN; its release's jsonl: ``id, chapter, explanation, title,
  story_content``): ``title`` + ``story_content`` (also ``story`` / ``content`` /
  ``social_story``) (+ ``chapter`` / ``theme``).
- ``instruction``: generic Alpaca-style ``instruction`` (+ ``input``) + ``output`` (also
  a guess for an SS-GEN fine-tuning split).

Every malformed row raises `DataError` naming the file, the 1-based line (CSV: the
line the row starts on; ``.json`` arrays: the item index) and the key.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maestro_megatron.errors import UserError

BUILTIN_PROMPTS = Path(__file__).resolve().parent / "builtin" / "prompts.jsonl"


class DataError(UserError, ValueError):
    """A prompt file problem; the message names the file and the line."""


@dataclass(frozen=True)
class PromptRecord:
    """One prompt. ``reference`` is None when the dataset has no reference answer."""

    prompt: str
    reference: str | None
    task: str
    split: str | None = None
    """The row's split (train / validation / test), None when the file has none."""
    where: str = field(default="", compare=False)
    """"<file>: line N" (or "item N"), for error messages."""


# ---------------------------------------------------------------- benchmark adapters

Row = dict[str, Any]
Adapted = tuple[str, str | None, str | None]  # prompt, reference, task (None: default)

LANGUAGES = {"en": "English", "fr": "French", "de": "German", "es": "Spanish",
             "it": "Italian", "pt": "Portuguese", "ru": "Russian", "nl": "Dutch",
             "fi": "Finnish", "hu": "Hungarian", "no": "Norwegian", "sv": "Swedish",
             "pl": "Polish", "ca": "Catalan", "eo": "Esperanto", "el": "Greek",
             "zh": "Chinese", "ja": "Japanese"}


def _first(row: Row, *keys: str) -> Any:
    for key in keys:
        value = row.get(key)
        if value not in (None, ""):
            return value
    return None


def _options(options: Sequence[str]) -> str:
    letters = "ABCDEFGHIJ"
    return "\n".join(f"{letters[i]}. {text}" for i, text in enumerate(options))


def _tombench(row: Row) -> Adapted | None:
    zh = "STORY" not in row and "故事" in row
    story, question = (row.get("故事"), row.get("问题")) if zh else (row.get("STORY"),
                                                                    row.get("QUESTION"))
    if story is None or question is None:
        return None
    options = []
    for letter in "ABCD":
        text = row.get(f"选项{letter}" if zh else f"OPTION-{letter}")
        if text not in (None, ""):
            text = str(text)
            options.append(text[3:] if text.startswith(f"{letter}. ") else text)
    answer = _first(row, "ANSWER", "答案\nANSWER", "答案")
    prompt = (f"{story}\n\nQuestion: {question}\n{_options(options)}\n"
              "Answer with the letter of the most likely option.")
    return prompt, (str(answer).strip() if answer is not None else None), "tombench"


def _emobench_eu(row: Row) -> Adapted | None:
    keys = ("scenario", "subject", "emotion_choices", "emotion_label")
    if not all(k in row for k in keys):
        return None
    subject = row["subject"]
    prompt = (f"Scenario: {row['scenario']}\n\nWhat emotion would {subject} ultimately "
              f"feel in this situation?\n{_options(row['emotion_choices'])}")
    reference = str(row["emotion_label"])
    if row.get("cause_choices") and row.get("cause_label"):
        prompt += (f"\n\nWhy would {subject} feel this emotion?\n"
                   f"{_options(row['cause_choices'])}")
        reference = f"{reference}. {row['cause_label']}"
    return prompt, reference, "emobench"


def _emobench_ea(row: Row) -> Adapted | None:
    if not all(k in row for k in ("scenario", "subject", "choices", "label")):
        return None
    kind = row.get("question type") or "action"
    prompt = (f"Scenario: {row['scenario']}\n\nIn this scenario, what is the most "
              f"effective {kind} for {row['subject']}?\n{_options(row['choices'])}")
    return prompt, str(row["label"]), "emobench"


def _opus_books(row: Row) -> Adapted | None:
    pair = row.get("translation")
    if not isinstance(pair, dict) or len(pair) != 2:
        return None
    (src, src_text), (tgt, tgt_text) = pair.items()
    prompt = (f"Translate the following {LANGUAGES.get(src, src)} text into "
              f"{LANGUAGES.get(tgt, tgt)}:\n\n{src_text}")
    return prompt, str(tgt_text), "translation"


def _question(row: Row) -> Adapted | None:
    if "question" not in row:
        return None
    reference = _first(row, "reference_answer", "answer", "model_answer")
    task = _first(row, "task", "category", "question_source")
    return (row["question"], None if reference is None else str(reference),
            None if task is None else str(task))


def _ss_gen(row: Row) -> Adapted | None:
    story = _first(row, "story_content", "story", "content", "social_story")
    if "title" not in row or story is None:
        return None
    theme = _first(row, "chapter", "theme")
    prompt = f"Write a Social Story for an autistic child titled \"{row['title']}\"."
    if theme is not None:
        prompt += f" Theme: {theme}."
    return prompt, str(story), "social_story"


def _instruction(row: Row) -> Adapted | None:
    if "instruction" not in row or "output" not in row:
        return None
    prompt = row["instruction"]
    if row.get("input"):
        prompt = f"{prompt}\n\n{row['input']}"
    return prompt, str(row["output"]), None


ALIASES: dict[str, Callable[[Row], Adapted | None]] = {
    "tombench": _tombench,
    "emobench_eu": _emobench_eu,
    "emobench_ea": _emobench_ea,
    "opus_books": _opus_books,
    "question": _question,
    "ss_gen": _ss_gen,
    "instruction": _instruction,
}
"""Adapters tried in order when the configured prompt key is absent from a row."""


# ---------------------------------------------------------------- file readers


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield f"line {lineno}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {lineno}: invalid JSON ({exc.msg})") from exc


def _json_rows(path: Path) -> Iterator[tuple[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(data, list):
        raise DataError(f"{path}: a .json prompt file must hold a list of objects")
    for i, row in enumerate(data, start=1):
        yield f"item {i}", row


def _csv_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        while True:
            start = reader.line_num + 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise DataError(f"{path}: line {start}: invalid CSV ({exc})") from exc
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise DataError(f"{path}: line {start}: {len(values)} fields, the header "
                                f"has {len(header)}")
            yield f"line {start}", dict(zip(header, values))


READERS = {".jsonl": _jsonl_rows, ".json": _json_rows, ".csv": _csv_rows}


def _record(row: Any, where: str, path: Path, keys: tuple[str, str, str, str]
            ) -> PromptRecord:
    prompt_key, reference_key, task_key, split_key = keys
    if not isinstance(row, dict):
        raise DataError(f"{path}: {where}: expected an object, got {type(row).__name__}")
    if prompt_key in row:
        prompt, reference, task = row[prompt_key], row.get(reference_key), None
        key = prompt_key
    else:
        for name, adapter in ALIASES.items():
            adapted = adapter(row)
            if adapted is not None:
                prompt, reference, task = adapted
                key = f"{prompt_key} (via the {name} column set)"
                break
        else:
            raise DataError(f"{path}: {where}: missing prompt key {prompt_key!r} and no known "
                            f"benchmark column set matches (columns: {sorted(row)[:12]})")
    if not isinstance(prompt, str):
        raise DataError(f"{path}: {where}: key {key!r} must be a string, got "
                        f"{type(prompt).__name__}")
    if not prompt.strip():
        raise DataError(f"{path}: {where}: key {key!r} is empty")
    if isinstance(reference, (int, float)) and not isinstance(reference, bool):
        reference = str(reference)
    if reference is not None and not isinstance(reference, str):
        raise DataError(f"{path}: {where}: key {reference_key!r} must be a string or null, "
                        f"got {type(reference).__name__}")
    if row.get(task_key) not in (None, ""):
        task = row[task_key]
    if task is not None and not isinstance(task, str):
        raise DataError(f"{path}: {where}: key {task_key!r} must be a string, got "
                        f"{type(task).__name__}")
    split = row.get(split_key)
    if split is not None and not isinstance(split, str):
        raise DataError(f"{path}: {where}: key {split_key!r} must be a string, got "
                        f"{type(split).__name__}")
    # A reference of only whitespace is no reference (it would score r_ppl on nothing).
    reference = reference if reference is not None and reference.strip() else None
    return PromptRecord(prompt=prompt, reference=reference, task=task or path.stem,
                        split=split.strip() or None if split is not None else None,
                        where=f"{path}: {where}")


def _reader(path: str | Path | None, what: str):
    """(path, row reader) for a data file (None: the built-in set); DataError on an
    unknown extension or a missing file."""
    path = Path(path) if path is not None else BUILTIN_PROMPTS
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unknown {what} extension {path.suffix!r} "
                        f"(expected one of {sorted(READERS)})")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return path, reader


def load_prompts(path: str | Path | None = None, *, prompt_key: str = "prompt",
                 reference_key: str = "reference", task_key: str = "task",
                 split_key: str = "split") -> list[PromptRecord]:
    """Read ``path`` (``.jsonl``, ``.csv`` or a ``.json`` list; None: the built-in set).

    An empty or whitespace-only reference ("", "  ", null) becomes None. ``task``
    defaults to the file stem; ``split`` is the row's ``split_key`` value (or None).
    Raises `DataError` (file + line + key) on the first malformed row, on an empty file
    and on an unknown extension.
    """
    path, reader = _reader(path, "prompt file")
    keys = (prompt_key, reference_key, task_key, split_key)
    records = [_record(row, where, path, keys) for where, row in reader(path)]
    if not records:
        raise DataError(f"{path}: empty file (no prompts)")
    return records


def split_counts(records: Sequence[PromptRecord]) -> dict[str, int]:
    """Rows per split ("-" for rows without one), in first-seen order."""
    counts: dict[str, int] = {}
    for r in records:
        counts[r.split or "-"] = counts.get(r.split or "-", 0) + 1
    return counts


def select_split(records: Sequence[PromptRecord], split: str | None, where: str
                 ) -> list[PromptRecord]:
    """The rows of `split`. A file without a split column (or split None) is used whole;
    a split column without a single `split` row is a DataError naming the counts."""
    if split is None or all(r.split is None for r in records):
        return list(records)
    chosen = [r for r in records if r.split == split]
    if not chosen:
        raise DataError(f"{where}: no rows of split {split!r} (rows per split: "
                        f"{split_counts(records)})")
    return chosen


DEFAULT_SPLIT = object()


def load_data_config(data_cfg, split=DEFAULT_SPLIT) -> list[PromptRecord]:
    """`load_prompts` with a recipe's `DataConfig` (path None: the built-in set), keeping
    the rows of `split` (default: data.split, i.e. "train" for training)."""
    records = load_prompts(data_cfg.path, prompt_key=data_cfg.prompt_key,
                           reference_key=data_cfg.reference_key, task_key=data_cfg.task_key,
                           split_key=data_cfg.split_key)
    wanted = data_cfg.split if split is DEFAULT_SPLIT else split
    return select_split(records, wanted, str(data_cfg.path or BUILTIN_PROMPTS))


def describe_splits(data_cfg, split=DEFAULT_SPLIT) -> str:
    """One log line: the file's rows per split and which rows this run uses."""
    records = load_prompts(data_cfg.path, prompt_key=data_cfg.prompt_key,
                           reference_key=data_cfg.reference_key, task_key=data_cfg.task_key,
                           split_key=data_cfg.split_key)
    wanted = data_cfg.split if split is DEFAULT_SPLIT else split
    name = data_cfg.path or "built-in prompts"
    counts = split_counts(records)
    if wanted is None or list(counts) == ["-"]:
        why = "no split column" if list(counts) == ["-"] else "data.split is null"
        return f"data: {name}: {len(records)} rows, all used ({why})"
    shown = ", ".join(f"{k} {v}" for k, v in counts.items())
    return (f"data: {name}: {shown}; using split {wanted!r} "
            f"({len(select_split(records, wanted, str(name)))} rows)")


def load_builtin_rows(split: str | None = "train") -> list[dict[str, str]]:
    """The built-in rows of `split` (None: all) with their SFT ``response`` targets (for
    the format warm-up). The held-out ``test`` rows are never trained on."""
    return [row for _, row in _jsonl_rows(BUILTIN_PROMPTS)
            if split is None or row.get("split") == split]


def load_sft_rows(path: str | Path | None = None, *, prompt_key: str = "prompt",
                  response_key: str = "response", split: str | None = "train",
                  split_key: str = "split") -> list[dict[str, str]]:
    """Supervised warm-up pairs ``{"prompt": ..., "response": ...}`` (plus ``"task"`` when
    the row has one) from a JSONL / CSV / JSON file (None: the built-in set). Rows whose
    `split_key` names another split than `split` are skipped (rows without one are
    kept; split None keeps all). Errors name the file, line and key."""
    path, reader = _reader(path, "file")
    rows = []
    for where, row in reader(path):
        if not isinstance(row, dict):
            raise DataError(f"{path}: {where}: expected an object, got {type(row).__name__}")
        if split is not None and row.get(split_key) not in (None, "", split):
            continue
        for key in (prompt_key, response_key):
            if key not in row:
                raise DataError(f"{path}: {where}: missing key {key!r}")
            if not isinstance(row[key], str) or not row[key].strip():
                raise DataError(f"{path}: {where}: key {key!r} must be a non-empty string")
        pair = {"prompt": row[prompt_key], "response": row[response_key]}
        if isinstance(row.get("task"), str):
            pair["task"] = row["task"]
        rows.append(pair)
    if not rows:
        raise DataError(f"{path}: no rows" + (f" of split {split!r}" if split else ""))
    return rows


def builtin_texts() -> list[str]:
    """Tokenizer corpus of the tiny recipe: every built-in train prompt, reference and
    response (held-out rows are not seen, as a real tokenizer would not have seen them)."""
    rows = load_builtin_rows()
    return [row[k] for row in rows for k in ("prompt", "reference", "response")]


# ---------------------------------------------------------------- the stream


def fingerprint(records: Sequence[PromptRecord]) -> str:
    """sha256 over the records: a resume must see the same data in the same order."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r.prompt, r.reference, r.task]).encode())
    return h.hexdigest()[:16]


class PromptStream:
    """Endless batches of ``num_prompts`` records, reshuffled every epoch.

    Epoch e visits the records in ``numpy.random.default_rng([seed, e]).permutation``
    order; a batch that crosses the end of an epoch continues with the next epoch's
    order. ``state_dict()`` (epoch, cursor, seed, fingerprint) saved with a checkpoint
    and given back to ``load_state_dict`` resumes exactly where the run stopped.
    """

    def __init__(self, records: Sequence[PromptRecord], num_prompts: int, *, seed: int):
        if not records:
            raise DataError("PromptStream: no records")
        if num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
        self.records = list(records)
        self.num_prompts = num_prompts
        self.seed = seed
        self.epoch = 0
        self.cursor = 0
        self._fingerprint = fingerprint(self.records)
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.records))

    def next_batch(self) -> list[PromptRecord]:
        """The next ``num_prompts`` records (global batch, before any DP sharding)."""
        batch = []
        while len(batch) < self.num_prompts:
            if self.cursor == len(self.records):
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            batch.append(self.records[int(self._order[self.cursor])])
            self.cursor += 1
        return batch

    def __iter__(self) -> Iterator[list[PromptRecord]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed,
                "num_records": len(self.records), "fingerprint": self._fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["fingerprint"] != self._fingerprint or state["num_records"] != len(self.records):
            raise DataError(f"prompt stream state is for different data ({state['num_records']} "
                            f"records, fingerprint {state['fingerprint']}; this stream has "
                            f"{len(self.records)}, {self._fingerprint})")
        if not 0 <= state["cursor"] <= len(self.records):
            raise DataError(f"prompt stream cursor {state['cursor']} out of range")
        self.seed, self.epoch, self.cursor = state["seed"], state["epoch"], state["cursor"]
        self._order = self._permutation(self.epoch)
