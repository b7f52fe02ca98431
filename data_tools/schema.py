"""The record schema for chat data and RL prompts, and its validation.

Chat record (SFT): `messages` (list of {"role": system|user|assistant, "content": str}, at least
one assistant turn), or TRL's `prompt` / `completion` pair (strings, or lists of messages), plus
`source` (str) and optional `id`.
Prompt record (RL), TRL's prompt-only formats: `prompt` as a string (standard) or as a list of
messages (conversational, optional system turn); every other column is kept under its own name
for reward functions (`answer`, `tests`, `entry_point`, `category`, a user's `solution`, ...).
`data.columns` renames: {solution: answer} also gives the `answer` column as `solution`.

A row that breaks the schema raises `BadRowError` naming the file and row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant")
# `refusal` (rewards/rules.py) wants a refusal for safety / harmful prompts and none for the rest
CATEGORIES = ("helpful", "safety", "math", "code", "harmful", "benign")


class BadRowError(ValueError):
    """A malformed input row; the message names file and row and the reason."""


@dataclass
class ChatRecord:
    messages: list[dict[str, str]]
    source: str
    id: str | None = None


@dataclass
class PromptRecord:
    """prompt: a string (TRL's standard format) or a list of messages (conversational, optional
    system turn); columns: every other column of the row under its own name, as it was stored."""

    prompt: str | list[dict[str, str]]
    source: str
    columns: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"prompt": self.prompt, **self.columns}


def _check_messages(messages: list, where: str, key: str) -> None:
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES or not isinstance(msg.get("content"), str):
            raise BadRowError(
                f"{where}: {key}[{i}] must be {{'role': one of {list(ROLES)}, 'content': str}}, got {msg!r:.80}"
            )


def _pair_messages(row: dict, where: str) -> list:
    """TRL's prompt/completion pair as messages: conversational halves are joined; plain strings
    become one user turn and one assistant turn (rendered with the chat template, like every chat)."""
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, str) and isinstance(completion, str):
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    if isinstance(prompt, list) and isinstance(completion, list):
        return prompt + completion
    raise BadRowError(f"{where}: 'prompt' and 'completion' must both be strings or both lists of messages")


def parse_chat(row: object, where: str, default_source: str = "") -> ChatRecord:
    """Validate one raw row as a ChatRecord: `messages`, or TRL's `prompt` / `completion` pair
    (loss on the completion only); `where` is 'file:row' for the error message."""
    if not isinstance(row, dict):
        raise BadRowError(f"{where}: expected an object with 'messages', got {type(row).__name__}")
    if "messages" not in row and "prompt" in row and "completion" in row:
        messages = _pair_messages(row, where)
    else:
        messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRowError(f"{where}: 'messages' must be a non-empty list (or give 'prompt' and 'completion'); "
                          f"columns found: {', '.join(map(str, row)) or 'none'}")
    _check_messages(messages, where, "messages")
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRowError(f"{where}: no assistant message to train on")
    source = row.get("source", default_source)
    if not isinstance(source, str) or not source:
        raise BadRowError(f"{where}: 'source' must be a non-empty string")
    rid = row.get("id")
    return ChatRecord([{"role": m["role"], "content": m["content"]} for m in messages], source,
                      None if rid is None else str(rid))


def rename_columns(row: dict, columns: dict[str, str], where: str) -> dict:
    """The row with `columns` ({name: dataset column}, `data.columns`) applied: each dataset column
    is also found under its new name (a reward reads `solution` where the file says `answer`)."""
    out = dict(row)
    for name, column in columns.items():
        if column not in row:
            raise BadRowError(f"{where}: data.columns maps {name!r} to column {column!r}, which is not there; "
                              f"columns found: {', '.join(map(str, row)) or 'none'}")
        out[name] = row[column]
    return out


def parse_prompt(row: object, where: str, default_source: str = "",
                 columns: dict[str, str] | None = None) -> PromptRecord:
    """Validate one raw row as a PromptRecord; `columns` renames first (see `rename_columns`)."""
    if not isinstance(row, dict):
        raise BadRowError(f"{where}: expected an object with 'prompt', got {type(row).__name__}")
    if columns:
        row = rename_columns(row, columns, where)
    if "prompt" not in row:
        raise BadRowError(f"{where}: no 'prompt' column; columns found: {', '.join(map(str, row)) or 'none'} "
                          "(data.columns: {prompt: <column>} names another one)")
    prompt = row["prompt"]
    if isinstance(prompt, list):
        if not prompt:
            raise BadRowError(f"{where}: 'prompt' is an empty list of messages")
        _check_messages(prompt, where, "prompt")
        if not any(m["role"] == "user" for m in prompt):
            raise BadRowError(f"{where}: 'prompt' has no user message")
        prompt = [{"role": m["role"], "content": m["content"]} for m in prompt]
    elif not isinstance(prompt, str) or not prompt.strip():
        raise BadRowError(f"{where}: 'prompt' must be a non-empty string or a list of messages, "
                          f"got {type(prompt).__name__} {prompt!r:.40}")
    category = row.get("category")
    if category is not None and category not in CATEGORIES:
        raise BadRowError(f"{where}: 'category' must be one of {list(CATEGORIES)}, got {category!r}")
    source = row.get("source", default_source)
    if not isinstance(source, str) or not source:
        raise BadRowError(f"{where}: 'source' must be a non-empty string")
    return PromptRecord(prompt, source, {k: v for k, v in row.items() if k != "prompt"})
