"""`math_accuracy`: 1.0 if the completion's final answer equals the `answer` column, else 0.0.

Extraction of the final answer is configurable (split from scoring, as verl and TRL do):
- "boxed": the content of the last \\boxed{...};
- "hashes": what follows the last "####" (GSM8K's answer line);
- "answer_is": what follows the last "answer is" / "answer:" (up to the end of the sentence);
- "last_number": the last number (integers, decimals, fractions a/b, percentages, 1,000);
- "auto": boxed if present, else "####", else "answer is", else the last number.
A gold answer in GSM8K's form (worked solution, then "#### 72") is read as what follows "####".
Equivalence is `math-verify`'s: LaTeX, fractions vs decimals, percentages, sets, intervals,
equations such as x=3 vs 3. A sample with no answer column value is "not applicable" (None).
The equivalence check is rewards/math_equivalence.py's (off the main thread, in a helper process).
"""

from __future__ import annotations

import re

from rewards.math_equivalence import matches
from rewards.text import completion_text

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?\s*%?|-?\.\d+%?")
_ANSWER_IS = re.compile(r"answer(?:\s+is)?\s*[:=]?\s*(.+?)(?:\.(?:\s|$)|\n|$)", re.IGNORECASE)
_HASHES = re.compile(r"####\s*([^\n]+)")
EXTRACTIONS = ("auto", "boxed", "hashes", "answer_is", "last_number")


def last_boxed(text: str) -> str | None:
    r"""Content of the last \boxed{...}, braces balanced.

    >>> last_boxed(r"so \boxed{1} then \boxed{\frac{1}{2}} done")
    '\\frac{1}{2}'
    >>> last_boxed("no box") is None
    True
    """
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def extract_answer(text: str, mode: str = "auto") -> str | None:
    """The final answer string of a completion, or None.

    >>> extract_answer("x = 5, so the answer is 12.")
    '12'
    >>> extract_answer("We get 3/4 of it, i.e. 75%", "last_number")
    '75%'
    >>> extract_answer("48 + 24 = 72 clips.\\n#### 72")
    '72'
    """
    if mode not in EXTRACTIONS:
        raise ValueError(f"extraction must be one of {EXTRACTIONS}, got {mode!r}")
    if mode in ("auto", "boxed"):
        boxed = last_boxed(text)
        if boxed is not None or mode == "boxed":
            return boxed
    if mode in ("auto", "hashes"):
        hashes = _HASHES.findall(text)
        if hashes or mode == "hashes":
            return hashes[-1].strip() if hashes else None
    if mode in ("auto", "answer_is"):
        matches = _ANSWER_IS.findall(text)
        if matches or mode == "answer_is":
            return matches[-1].strip().rstrip(".") if matches else None
    numbers = _NUMBER.findall(text)
    return numbers[-1].strip() if numbers else None


def gold_answer(gold) -> str:
    """The gold answer as a string; GSM8K's "<solution> #### 1,234" gives "1234".

    >>> gold_answer("She sold 48 / 2 = 24 clips in May.\\n#### 72"), gold_answer(5), gold_answer("#### 1,000")
    ('72', '5', '1000')
    """
    text = str(gold)
    hashes = _HASHES.findall(text)
    if hashes:
        text = hashes[-1].strip()
        if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", text):
            text = text.replace(",", "")
    return text


def math_accuracy(prompts, completions, answer=None, extraction: str = "auto", **_columns) -> list[float | None]:
    """TRL-signature reward over the `answer` column."""
    answers = answer if answer is not None else [None] * len(completions)
    scores: list[float | None] = []
    pairs: list[tuple[int, str, str]] = []  # (sample, predicted, gold) where there is an answer to compare
    for completion, gold in zip(completions, answers, strict=True):
        if gold is None or str(gold).strip() == "":
            scores.append(None)
            continue
        predicted = extract_answer(completion_text(completion), extraction)
        scores.append(0.0)
        if predicted is not None:
            pairs.append((len(scores) - 1, predicted, gold_answer(gold)))
    matched = matches([(p, g) for _, p, g in pairs])  # off the main thread: in a helper process
    for (i, _, _), ok in zip(pairs, matched, strict=True):
        scores[i] = float(ok)
    return scores
