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
  Options are listed as "A. text", "A) text" or "A: text" (NOVER's EmoBench). A
  reference with labelled parts ("Emotion: F: Oblivious, Cause: A: ...", EmoBench's
  emotion-understanding questions in NOVER's file) matches only when the answer names
  every part's letter.
- `chrf`: sentence chrF (sacrebleu's CHRF: character 6-grams, beta 2) of the answer
  against the reference, as a fraction 0..1, for translation.
"""

from __future__ import annotations

import functools
import re
import string

from maestro_megatron.scorers.base import ANSWER_PATTERN

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_OPTION_LINE = re.compile(r"^\s*\(?([A-J])[.):]\s+(.+?)\s*$", re.MULTILINE)
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


def exact_match(answer: str, reference: str | None, prompt: str = "") -> bool | None:
    """Normalised match of answer and reference; None without a reference. A reference
    that is an option letter ("B", "(B)"; GeneralThoughts' and WebInstruct's
    multiple-choice rows) is matched as a letter: `option_match` against `prompt`."""
    if reference is None or not reference.strip():
        return None
    letter = _LETTER_REFERENCE.fullmatch(reference.strip())
    if letter:
        return answer_letter(answer, prompt_options(prompt)) == letter.group(1)
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


_LETTER_REFERENCE = re.compile(r"\(?([A-J])\)?[.)]?")
_LABELLED = re.compile(r"\b([A-Za-z]+)\s*:\s*\(?([A-J])\)?(?![A-Za-z])")
_PART = re.compile(r"\b([A-Z][a-z]+)\s*:\s*\(?([A-J])\)?\s*[:.)]", re.MULTILINE)
_BARE_LETTER = re.compile(r"(?<![A-Za-z])\(?([A-J])\)?(?![A-Za-z])")


def reference_parts(reference: str) -> dict[str, str]:
    """{label: letter} of a reference with labelled parts ("Emotion: F: ..., Cause: A:
    ..."), empty for any other reference."""
    parts = {m.group(1).lower(): m.group(2) for m in _PART.finditer(reference)}
    return parts if len(parts) >= 2 else {}


def parts_match(answer: str, parts: dict[str, str]) -> bool:
    """The answer names every part's letter: by label ("Emotion: F ... Cause: A"), else
    as exactly len(parts) bare letters in the parts' order ("F, A")."""
    labelled = {k.lower(): v for k, v in _LABELLED.findall(answer)}
    if all(k in labelled for k in parts):
        return all(labelled[k] == v for k, v in parts.items())
    letters = _BARE_LETTER.findall(answer)
    return letters == list(parts.values())


def option_match(answer: str, reference: str | None, prompt: str) -> bool | None:
    """Letter of the answer == letter of the reference (every letter, for a reference
    with labelled parts); None when the reference names no option of the prompt."""
    if reference is None:
        return None
    parts = reference_parts(reference)
    if parts:
        return parts_match(answer, parts)
    options = prompt_options(prompt)
    want = answer_letter(reference, options)
    if want is None:
        return None
    return answer_letter(answer, options) == want


def chrf(answer: str, reference: str | None) -> float | None:
    """sacrebleu's sentence chrF of `answer` against `reference` as a fraction (its
    0..100 score / 100, so tables print it like the accuracies); None without a
    reference."""
    if reference is None or not reference.strip():
        return None
    return float(_chrf_metric().sentence_score(answer, [reference]).score) / 100


@functools.cache
def _chrf_metric():
    """One sacrebleu CHRF (character 6-grams, beta 2), built on first use."""
    from sacrebleu.metrics import CHRF

    return CHRF()
