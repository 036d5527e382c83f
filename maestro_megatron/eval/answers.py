"""Answer extraction and the judge-free metrics of one sample (pure string functions).

- `extract_answer`: the first ``<answer>...</answer>`` span (the recipe's pattern), else
  the whole response, stripped: a response without the tags is still scored, and the
  format rate says how often the tags were there.
- `exact_match`: normalised string equality (SQuAD-style: lower case, no punctuation,
  no articles, single spaces), and numeric equality when both sides are numbers
  ("12.0" == "12", "1,000" == "1000").
- `option_letter`: multiple-choice answers (ToMBench, EmoBench): the letter the answer
  names ("B", "(B)", "B. text", "The answer is B") or the option whose text it repeats,
  compared with the reference's letter (the reference itself, or the option of the
  prompt whose text equals the reference). None when either side names no option.
"""

from __future__ import annotations

import re
import string

from maestro_megatron.scorers.base import ANSWER_PATTERN

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_OPTION_LINE = re.compile(r"^\s*\(?([A-J])[.)]\s+(.+?)\s*$", re.MULTILINE)
_LETTER_ONLY = re.compile(r"^\(?([A-J])\)?[.):]?$", re.IGNORECASE)
_LETTER_LEAD = re.compile(r"^\(?([A-J])[.):]\s", re.IGNORECASE)
_LETTER_PHRASE = re.compile(r"\b(?:answer|option|choice)\s*(?:is|:)?\s*\(?((?-i:[A-J]))\b\)?",
                            re.IGNORECASE)


def extract_answer(response: str, pattern: str = ANSWER_PATTERN) -> str:
    """The first answer span of `response` (group 1 of `pattern`), else all of it."""
    match = re.search(pattern, response, flags=re.DOTALL)
    return (match.group(1) if match else response).strip()


def has_answer_span(response: str, pattern: str = ANSWER_PATTERN) -> bool:
    return re.search(pattern, response, flags=re.DOTALL) is not None


def normalize(text: str) -> str:
    """Lower case, punctuation and articles removed, whitespace collapsed."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _as_number(text: str) -> float | None:
    cleaned = text.strip().replace(",", "").rstrip(".")
    if _NUMBER.fullmatch(cleaned):
        return float(cleaned)
    return None


def exact_match(answer: str, reference: str | None) -> bool | None:
    """Normalised match of answer and reference; None without a reference."""
    if reference is None or not reference.strip():
        return None
    a, r = _as_number(answer), _as_number(reference)
    if a is not None and r is not None:
        return a == r
    return normalize(answer) == normalize(reference)


def prompt_options(prompt: str) -> dict[str, str]:
    """The options listed in a prompt, one per line as "A. text" or "(A) text"."""
    return {m.group(1): m.group(2) for m in _OPTION_LINE.finditer(prompt)}


def answer_letter(answer: str, options: dict[str, str] | None = None) -> str | None:
    """The option letter an answer names, else the option whose text it equals."""
    text = answer.strip()
    for pattern in (_LETTER_ONLY, _LETTER_LEAD):
        match = pattern.match(text)
        if match:
            return match.group(1).upper()
    phrases = {m.group(1).upper() for m in _LETTER_PHRASE.finditer(text)}
    if len(phrases) == 1:  # two different letters named: no guess
        return phrases.pop()
    if options:
        wanted = normalize(text)
        hits = [letter for letter, option in options.items() if normalize(option) == wanted]
        if len(hits) == 1:
            return hits[0]
    return None


def option_match(answer: str, reference: str | None, prompt: str) -> bool | None:
    """Letter of the answer == letter of the reference; None when the reference names no
    option of the prompt (e.g. EmoBench's two-part emotion + cause reference)."""
    if reference is None:
        return None
    options = prompt_options(prompt)
    want = answer_letter(reference, options)
    if want is None:
        return None
    return answer_letter(answer, options) == want
