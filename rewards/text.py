"""The text a reward reads from TRL-format prompts and completions (strings, or lists of chat
messages), shared by the built-in rewards."""

from __future__ import annotations


def completion_text(completion) -> str:
    """The text of a completion: a string, or the assistant content of a list of messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict) and m.get("role") != "user")
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return str(completion)


def prompt_text(prompt) -> str:
    """The last user message of a prompt (string or list of messages)."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    return users[-1] if users else ""


def completions_for(prompts: list, texts: list[str]) -> list:
    """TRL's rule: a conversational prompt's completion is a list with one assistant message, a
    string prompt's a string."""
    return [text if isinstance(p, str) else [{"role": "assistant", "content": text}]
            for p, text in zip(prompts, texts, strict=True)]
