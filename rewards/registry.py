"""Where reward names resolve: the built-in table, rewards registered in code, import paths and
entry points.

`resolve(name)` tries, in order: a registered name (`@register_reward`, or a built-in: these are
imported on first use, so `math-verify` loads only for `math_accuracy`), a
`package.module:function` path, a `path/to/file.py:function` path (the file is imported as a
module; no PYTHONPATH needed), and an entry point in the group `deepalign.rewards`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

RewardFn = Callable[..., list]
ENTRY_POINT_GROUP = "deepalign.rewards"
BUILTINS = {
    "math_accuracy": "rewards.math_accuracy:math_accuracy",
    "code_tests": "rewards.code_tests:code_tests",
    "format": "rewards.rules:format_reward",
    "soft_overlong_penalty": "rewards.rules:soft_overlong_penalty",
    "repetition_penalty": "rewards.rules:repetition_penalty",
    "language_consistency": "rewards.rules:language_consistency",
    "refusal": "rewards.rules:refusal",
    "reward_model": "rewards.reward_model:reward_model",
}
_REGISTERED: dict[str, RewardFn] = {}


class UnknownRewardError(ValueError):
    """A reward name that no registry, import path or entry point provides."""


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make a reward function available to recipes by `name`."""

    def wrap(fn: RewardFn) -> RewardFn:
        if name in BUILTINS or (name in _REGISTERED and _REGISTERED[name] is not fn):
            raise ValueError(f"reward {name!r} is already registered")
        _REGISTERED[name] = fn
        return fn

    return wrap


def registered_rewards() -> list[str]:
    return sorted({*BUILTINS, *_REGISTERED})


def _import_file(path: Path, name: str, kind: str = "reward"):
    module_name = f"deepalign_user_rewards.{path.stem}_{abs(hash(str(path.resolve())))}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UnknownRewardError(f"{kind} {name!r}: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise UnknownRewardError(f"{kind} {name!r}: importing {path} failed ({type(exc).__name__}: {exc})") from exc
    return module


def from_path(name: str, target: str, kind: str = "reward") -> Callable:
    """The callable `target` names ('package.module:attr' or 'path/to/file.py:attr'); errors say `kind`."""
    module_name, _, attr = target.rpartition(":")
    if module_name.endswith(".py"):
        path = Path(module_name).expanduser()
        if not path.is_file():
            raise UnknownRewardError(f"{kind} {name!r}: no such file {path}")
        module = _import_file(path, name, kind)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UnknownRewardError(f"{kind} {name!r}: cannot import {module_name!r} ({exc})") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UnknownRewardError(f"{kind} {name!r}: {module_name} has no callable {attr!r}")
    return fn


def resolve(name: str) -> RewardFn:
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in BUILTINS:
        return from_path(name, BUILTINS[name])
    if ":" in name:
        return from_path(name, name)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.load()
    raise UnknownRewardError(
        f"unknown reward {name!r}; registered: {', '.join(registered_rewards())}; "
        f"or use 'package.module:function', 'path/to/file.py:function' or the entry-point group "
        f"'{ENTRY_POINT_GROUP}'"
    )
