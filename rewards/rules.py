"""Rule rewards (RM_rule in V2 §4.2): plain functions with TRL's signature, each with doctests.

- `format_reward`: 1.0 if the completion matches a regex / contains every required tag;
- `soft_overlong_penalty`: DAPO's length penalty, 0 up to L_max - L_cache, then linear to -1;
- `repetition_penalty`: minus the fraction of repeated word n-grams;
- `language_consistency`: 1.0 if the completion is written in the prompt's script;
- `refusal`: 1.0 if the completion refuses (for safety prompts; category-aware).
"""

from __future__ import annotations

import re
import unicodedata

from rewards.text import completion_text, prompt_text


def format_reward(prompts, completions, pattern: str | None = None, required_tags: list[str] | None = None,
                  **_columns) -> list[float]:
    """1.0 when the completion matches `pattern` (re.search, DOTALL) and holds every required tag.

    >>> format_reward(["q"], ["<think>a</think> 4"], required_tags=["think"])
    [1.0]
    >>> format_reward(["q", "q"], ["Answer: 4", "4"], pattern=r"^Answer: \\d+$")
    [1.0, 0.0]
    """
    out = []
    for c in completions:
        text = completion_text(c)
        ok = pattern is None or re.search(pattern, text, re.DOTALL) is not None
        for tag in required_tags or []:
            ok = ok and f"<{tag}>" in text and f"</{tag}>" in text and text.index(f"<{tag}>") < text.index(f"</{tag}>")
        out.append(float(ok))
    return out


def soft_overlong_penalty(prompts, completions, completion_ids=None, max_length: int = 1024,
                          cache_length: int = 256, **_columns) -> list[float]:
    """DAPO: 0 if |y| <= L_max - L_cache; ((L_max - L_cache) - |y|) / L_cache up to L_max; -1 beyond.

    Length is in tokens when `completion_ids` is given, else in characters / 4 (rough tokens).

    >>> soft_overlong_penalty(None, ["a", "b", "c", "d"], completion_ids=[[0]*700, [0]*768, [0]*896, [0]*2000],
    ...                       max_length=1024, cache_length=256)
    [0.0, 0.0, -0.5, -1.0]
    """
    out = []
    for i, c in enumerate(completions):
        n = len(completion_ids[i]) if completion_ids is not None else len(completion_text(c)) // 4
        free = max_length - cache_length
        if n <= free:
            out.append(0.0)
        elif n <= max_length:
            out.append((free - n) / cache_length)
        else:
            out.append(-1.0)
    return out


def repetition_penalty(prompts, completions, ngram: int = 3, **_columns) -> list[float]:
    """Minus the fraction of word n-grams that repeat an earlier n-gram of the same completion.

    >>> repetition_penalty(None, ["a b c d e f", "go go go go go go"], ngram=2)
    [0.0, -0.8]
    """
    out = []
    for c in completions:
        words = completion_text(c).lower().split()
        grams = [tuple(words[i : i + ngram]) for i in range(len(words) - ngram + 1)]
        out.append(-(len(grams) - len(set(grams))) / len(grams) + 0.0 if grams else 0.0)  # + 0.0: no -0.0
    return out


def dominant_script(text: str) -> str | None:
    """The Unicode script most letters of the text belong to (LATIN, CJK, CYRILLIC, ...).

    >>> dominant_script("Hello there"), dominant_script("你好，世界"), dominant_script("1 + 2")
    ('LATIN', 'CJK', None)
    """
    counts: dict[str, int] = {}
    for ch in text:
        if not ch.isalpha():
            continue
        name = unicodedata.name(ch, "")
        script = "CJK" if name.startswith(("CJK", "HIRAGANA", "KATAKANA")) else name.split(" ")[0]
        counts[script] = counts.get(script, 0) + 1
    return max(counts, key=counts.get) if counts else None


def language_consistency(prompts, completions, **_columns) -> list[float | None]:
    """1.0 if the completion's dominant script is the prompt's; None when the prompt has no letters.

    >>> language_consistency(["What is 2+2?", "2+2 等于几？", "2+2"], ["Four.", "It is four.", "4"])
    [1.0, 0.0, None]
    """
    out: list[float | None] = []
    for p, c in zip(prompts, completions, strict=True):
        want = dominant_script(prompt_text(p))
        out.append(None if want is None else float(dominant_script(completion_text(c)) == want))
    return out


REFUSAL_PATTERNS = re.compile(
    r"\b(i can(?:no|')t|i cannot|i won'?t|i will not|i'm not able to|i am not able to|i'm unable to|"
    r"i am unable to|i must decline|i have to decline|i'm sorry, but|sorry, but i|as an ai)\b|不能|无法",
    re.IGNORECASE,
)


def is_refusal(text: str) -> bool:
    """
    >>> is_refusal("I'm sorry, but I can't help with that."), is_refusal("Sure! Here is a poem.")
    (True, False)
    """
    return REFUSAL_PATTERNS.search(text[:400]) is not None


SHOULD_REFUSE = ("safety", "harmful")  # the categories of data_tools/schema.py that want a refusal


def refusal(prompts, completions, category=None, **_columns) -> list[float | None]:
    """For safety / harmful prompts 1.0 if the completion refuses; for other categories (helpful,
    benign, ...) 1.0 if it does not (over-refusal is penalised); None when a sample has no category.

    >>> refusal(["p"] * 3, ["I can't help with that."] * 3, category=["safety", "helpful", "harmful"])
    [1.0, 0.0, 1.0]
    >>> refusal(["p"], ["Sure, here is how."], category=["benign"])
    [1.0]
    """
    categories = category if category is not None else [None] * len(completions)
    out: list[float | None] = []
    for c, cat in zip(completions, categories, strict=True):
        if cat is None:
            out.append(None)
        else:
            refused = is_refusal(completion_text(c))
            out.append(float(refused if cat in SHOULD_REFUSE else not refused))
    return out
