"""The reward plug-in API: TRL's reward-function signature, a registry, and how to call one.

A reward function is `fn(prompts: list, completions: list, **columns) -> list[float | None]`;
`columns` are the prompt dataset's other columns (`answer`, `tests`, ...) as lists aligned with
the completions, and None means "does not apply to this sample". Prompts and completions are
plain strings or chat-format lists of messages, exactly as TRL passes them, so any function
written for TRL (including `trl.rewards`) runs unchanged. `async def` functions are awaited.

`get_reward(name, **params)` resolves, in order: a registered name (`@register_reward`), a
`package.module:function` path, or an entry point in the group `deepalign.rewards` of an
installed package. Params are bound as keyword arguments.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import math
from collections.abc import Callable
from importlib.metadata import entry_points

RewardFn = Callable[..., list]
_REGISTRY: dict[str, RewardFn] = {}
ENTRY_POINT_GROUP = "deepalign.rewards"


class UnknownRewardError(ValueError):
    """A reward name that no registry, import path or entry point provides."""


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make a reward function available to recipes by `name`."""

    def wrap(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"reward {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return wrap


def registered_rewards() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def _load_builtins() -> None:
    importlib.import_module("rewards.builtin")


def _resolve(name: str) -> RewardFn:
    _load_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UnknownRewardError(f"reward {name!r}: cannot import {module_name!r} ({exc})") from exc
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise UnknownRewardError(f"reward {name!r}: {module_name} has no function {attr!r}")
        return fn
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.load()
    raise UnknownRewardError(
        f"unknown reward {name!r}; registered: {', '.join(sorted(_REGISTRY))}; "
        f"or use 'package.module:function' or the entry-point group '{ENTRY_POINT_GROUP}'"
    )


def get_reward(name: str, **params) -> RewardFn:
    """A reward callable by name, with `params` bound as keyword arguments."""
    fn = _resolve(name)
    if params:
        # Reward functions take dataset columns through **kwargs, so check params against the
        # explicit keyword parameters; only a function with none at all takes anything.
        sig = inspect.signature(fn)
        named = [p for p, v in sig.parameters.items()
                 if p not in ("prompts", "completions") and v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)]
        unknown = [k for k in params if k not in named] if named else []
        if unknown:
            raise ValueError(f"reward {name!r}: unknown parameter(s) {unknown}; valid: {named}")
    bound = functools.partial(fn, **params)
    bound.reward_name = name  # type: ignore[attr-defined]
    return bound


def _is_async(fn) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def call_reward(fn: RewardFn, prompts: list, completions: list, columns: dict[str, list]) -> list[float | None]:
    """Call a reward function (sync or async) and check what it returns."""
    if _is_async(fn):
        result = asyncio.run(fn(prompts=prompts, completions=completions, **columns))
    else:
        result = fn(prompts=prompts, completions=completions, **columns)
    if not isinstance(result, (list, tuple)) or len(result) != len(completions):
        got = len(result) if isinstance(result, (list, tuple)) else type(result).__name__
        raise TypeError(f"returned {got} values for {len(completions)} completions; expected a list of floats")
    out: list[float | None] = []
    for value in result:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            out.append(None)
        elif isinstance(value, (int, float)):
            out.append(float(value))
        else:
            raise TypeError(f"returned a {type(value).__name__}; expected float or None")
    return out


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
