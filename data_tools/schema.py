"""The record schema for chat data and RL prompts, and its validation.

Chat record (SFT): `messages` (list of {"role": system|user|assistant, "content": str}, at least
one assistant turn), `source` (str), optional `id`.
Prompt record (RL): `prompt` (str), `source`, optional `id`, `answer`, `tests`, `entry_point`,
`category` (helpful | safety | math | code).

A row that breaks the schema raises `BadRowError` naming the file and row.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("system", "user", "assistant")
CATEGORIES = ("helpful", "safety", "math", "code")


class BadRowError(ValueError):
    """A malformed input row; the message names file and row and the reason."""


@dataclass
class ChatRecord:
    messages: list[dict[str, str]]
    source: str
    id: str | None = None


@dataclass
class PromptRecord:
    prompt: str
    source: str
    id: str | None = None
    answer: str | None = None
    tests: str | None = None
    entry_point: str | None = None
    category: str | None = None


def parse_chat(row: object, where: str, default_source: str = "") -> ChatRecord:
    """Validate one raw row as a ChatRecord; `where` is 'file:row' for the error message."""
    if not isinstance(row, dict):
        raise BadRowError(f"{where}: expected an object with 'messages', got {type(row).__name__}")
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRowError(f"{where}: 'messages' must be a non-empty list")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES or not isinstance(msg.get("content"), str):
            raise BadRowError(
                f"{where}: messages[{i}] must be {{'role': one of {list(ROLES)}, 'content': str}}, got {msg!r:.80}"
            )
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRowError(f"{where}: no assistant message to train on")
    source = row.get("source", default_source)
    if not isinstance(source, str) or not source:
        raise BadRowError(f"{where}: 'source' must be a non-empty string")
    rid = row.get("id")
    return ChatRecord([{"role": m["role"], "content": m["content"]} for m in messages], source,
                      None if rid is None else str(rid))


def parse_prompt(row: object, where: str, default_source: str = "") -> PromptRecord:
    """Validate one raw row as a PromptRecord."""
    if not isinstance(row, dict):
        raise BadRowError(f"{where}: expected an object with 'prompt', got {type(row).__name__}")
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRowError(f"{where}: 'prompt' must be a non-empty string")
    category = row.get("category")
    if category is not None and category not in CATEGORIES:
        raise BadRowError(f"{where}: 'category' must be one of {list(CATEGORIES)}, got {category!r}")
    fields = {}
    for key in ("id", "answer", "tests", "entry_point"):
        value = row.get(key)
        if value is not None and not isinstance(value, (str, int, float)):
            raise BadRowError(f"{where}: '{key}' must be a string, got {type(value).__name__}")
        fields[key] = None if value is None else str(value)
    source = row.get("source", default_source)
    if not isinstance(source, str) or not source:
        raise BadRowError(f"{where}: 'source' must be a non-empty string")
    return PromptRecord(prompt=prompt, source=source, category=category, **fields)
