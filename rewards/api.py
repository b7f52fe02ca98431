"""The reward plug-in API: TRL's reward-function signature, a reward by name, and calling one.

A reward function is `fn(prompts: list, completions: list, **columns) -> list[float | None]`;
`columns` are the prompt dataset's other columns (`answer`, `tests`, ...) as lists aligned with
the completions, and None means "does not apply to this sample". Prompts and completions are
plain strings or chat-format lists of messages, exactly as TRL passes them, so any function
written for TRL (including `trl.rewards`) runs unchanged. `async def` functions are awaited.

`get_reward(name, **params)` resolves the name (rewards/registry.py: a registered or built-in
name, `package.module:function`, `path/to/file.py:function`, or an entry point) and binds params
as keyword arguments; `call_reward` calls one and checks what it returns.
"""

from __future__ import annotations

import asyncio
import functools
import inspect

from rewards.registry import RewardFn, resolve


def get_reward(name: str, **params) -> RewardFn:
    """A reward callable by name, with `params` bound as keyword arguments."""
    fn = resolve(name)
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
        if value is None:
            out.append(None)
        elif isinstance(value, (int, float)):
            out.append(float(value))
        else:
            raise TypeError(f"returned a {type(value).__name__}; expected float or None")
    return out
