"""Recipes: plain YAML validated against typed dataclasses, with dotted `key=value` overrides.

Owns: `load_recipe(path, schema, overrides)` and `RecipeError`. Every problem is one line that
names the file and the key: a missing file, invalid YAML, an unknown key (with the valid keys),
a wrong type (with the expected type), a missing required key, a bad override.

Supported field types: bool, int, float (ints accepted), str, T | None, list[T], dict[str, T],
Literal[...], and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


class RecipeError(ValueError):
    """A recipe could not be loaded; the message is one line naming the file and key."""


class _RecipeLoader(yaml.SafeLoader):
    """YAML 1.1 reads `5e-6` as a string; recipes are full of learning rates, so read it as a float."""


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _load_yaml(text: str):
    return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506  (a SafeLoader subclass)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'policy.moe.token_dropping=false' -> (['policy', 'moe', 'token_dropping'], False)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise RecipeError(f"override {text!r}: expected dotted.key=value")
    try:
        value = _load_yaml(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set each dotted key; a number indexes a list ('rewards.1.weight=0.3')."""
    for text in overrides:
        keys, value = parse_override(text)
        node, parent = data, ""
        for k in keys[:-1]:
            if isinstance(node, list):
                node, parent = node[_list_index(node, k, parent, text)], k
                continue
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            if not isinstance(child, dict | list):
                raise RecipeError(f"override {text!r}: '{k}' is not a section")
            node, parent = child, k
        if isinstance(node, list):
            node[_list_index(node, keys[-1], parent, text)] = value
        else:
            node[keys[-1]] = value
    return data


def _list_index(items: list, key: str, parent: str, text: str) -> int:
    if not key.isdigit() or int(key) >= len(items):
        raise RecipeError(f"override {text!r}: '{parent}' is a list of {len(items)}; "
                          f"index it with 0-{len(items) - 1}, got {key!r}")
    return int(key)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key, where)
            except RecipeError as exc:
                errors.append(exc)
        raise RecipeError(f"{where}: key '{key}' expects {_type_name(tp)}, got {type(value).__name__} ({value!r})")
    if origin is Literal:
        if value not in args:
            raise RecipeError(f"{where}: key '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where}: key '{key}' expects a list, got {type(value).__name__} ({value!r})")
        return [_convert(v, args[0] if args else Any, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: key '{key}' expects a mapping, got {type(value).__name__} ({value!r})")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _convert(v, vt, f"{key}.{k}", where) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: key '{key}' is a section, got {type(value).__name__} ({value!r})")
        return _build(tp, value, f"{key}.", where)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where}: key '{key}' expects true/false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where}: key '{key}' expects a number, got {type(value).__name__} ({value!r})")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where}: key '{key}' expects an integer, got {type(value).__name__} ({value!r})")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where}: key '{key}' expects a string, got {type(value).__name__} ({value!r})")
        return value
    raise RecipeError(f"{where}: key '{key}' has an unsupported type {_type_name(tp)}")


def _build(schema: type[T], data: dict, prefix: str, where: str) -> T:
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    for key in data:
        if key not in fields:
            raise RecipeError(
                f"{where}: unknown key '{prefix}{key}'; valid keys: {', '.join(prefix + k for k in fields)}"
            )
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], prefix + name, where)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise RecipeError(f"{where}: missing required key '{prefix}{name}'")
    try:
        return schema(**kwargs)
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"{where}: section '{prefix.rstrip('.') or schema.__name__}': {exc}") from exc


def recipe_from_dict(schema: type[T], data: dict, where: str = "<recipe>", overrides: list[str] = ()) -> T:
    return _build(schema, apply_overrides(dict(data), list(overrides)), "", where)


def load_recipe(path: str | Path, schema: type[T], overrides: list[str] = ()) -> T:
    """Read YAML at path, apply dotted overrides, validate into schema."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        data = _load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}: invalid YAML{line}") from exc
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys, got {type(data).__name__}")
    return recipe_from_dict(schema, data, str(path), overrides)
