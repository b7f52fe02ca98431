"""The environment API for multi-turn GRPO, and where environment names resolve.

An environment is as small as a reward function: a class (or any callable returning an object)
built once per trajectory with the recipe's `environment.params`, with two methods:

    reset(row) -> messages            the conversation the policy answers first (row: a PromptRow)
    step(messages, completion) -> (new messages or None, reward, done, info)

`messages` is the conversation so far, ending with the policy's latest turn (an assistant
message whose content is `completion`). `new messages` are the environment's next turns (user
or tool messages, transformers' chat-template convention); `reward` is this turn's reward (the
trajectory's reward is the sum over its turns: a final pass plus any per-turn penalty);
`done` ends the trajectory. `info` is free-form; numeric entries are averaged into the step's
metrics as env/<key>. The runner (envs/trajectories.py) enforces `max_turns`.

Names resolve as rewards do (rewards/registry.py): `@register_environment`, the built-ins below,
'package.module:Class', 'path/to/file.py:Class', or an entry point in `deepalign.environments`.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Protocol

from rewards.registry import UnknownRewardError, from_path

ENTRY_POINT_GROUP = "deepalign.environments"
BUILTINS = {
    "code_feedback": "envs.code_feedback:CodeFeedback",
    "python_tool": "envs.python_tool:PythonTool",
}
_REGISTERED: dict[str, Callable[..., Any]] = {}

StepResult = tuple[list[dict] | None, float, bool, dict]


class Environment(Protocol):
    def reset(self, row) -> list[dict]:
        """The first conversation for `row` (its prompt and columns: tests, answer, ...)."""

    def step(self, messages: list[dict], completion: str) -> StepResult:
        """(the environment's new messages or None, this turn's reward, done, info)."""


class UnknownEnvironmentError(ValueError):
    """An environment name that no registry, import path or entry point provides."""


def register_environment(name: str) -> Callable:
    """Decorator: make an environment class available to recipes by `name`."""

    def wrap(factory):
        if name in BUILTINS or (name in _REGISTERED and _REGISTERED[name] is not factory):
            raise ValueError(f"environment {name!r} is already registered")
        _REGISTERED[name] = factory
        return factory

    return wrap


def registered_environments() -> list[str]:
    return sorted({*BUILTINS, *_REGISTERED})


def resolve_environment(name: str) -> Callable[..., Environment]:
    """The factory `name` stands for (called once per trajectory with the recipe's params)."""
    try:
        if name in _REGISTERED:
            return _REGISTERED[name]
        if name in BUILTINS:
            return from_path(name, BUILTINS[name], "environment")
        if ":" in name:
            return from_path(name, name, "environment")
    except UnknownRewardError as exc:
        raise UnknownEnvironmentError(str(exc)) from exc
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.load()
    raise UnknownEnvironmentError(
        f"unknown environment {name!r}; registered: {', '.join(registered_environments())}; or use "
        f"'package.module:Class', 'path/to/file.py:Class' or the entry-point group '{ENTRY_POINT_GROUP}'")


def environment_factory(name: str, params: dict | None = None) -> Callable[[], Environment]:
    """A no-argument factory of fresh environments; fails now (not mid-run) when the params do not bind
    or the object lacks reset / step."""
    factory, params = resolve_environment(name), dict(params or {})
    try:
        probe = factory(**params)
    except TypeError as exc:
        raise UnknownEnvironmentError(f"environment {name!r}: params {sorted(params)} do not fit: {exc}") from exc
    missing = [m for m in ("reset", "step") if not callable(getattr(probe, m, None))]
    if missing:
        raise UnknownEnvironmentError(f"environment {name!r}: {type(probe).__name__} has no {' or '.join(missing)}")
    return lambda: factory(**params)
