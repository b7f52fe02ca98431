"""Recipes: plain YAML validated against typed dataclasses, with dotted `key=value` overrides.

Owns: `load_recipe(path, schema, overrides)` and `RecipeError`. Every problem is one line that
names the file and the key: a missing file, invalid YAML, a key given twice, an unknown key (with
the valid keys), a wrong type (with the expected type), a missing required key, a value that a
section's own checks (`__post_init__`) refuse, a bad override.

Supported field types: bool, int, float (ints accepted), str, T | None, list[T], dict[str, T],
Literal[...], and nested dataclasses. A list of sections whose dataclass has an `alias` field
(the rewards of a GRPO recipe) may also be written as a mapping from alias to section, and an
override may pick an item of such a list by its alias or name as well as by its index
(`rewards.helpful.params.path=...`, `rewards.0.weight=0.5`).
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


def _mapping_without_duplicates(loader: _RecipeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_RecipeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _load_yaml(text: str):
    return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506  (a SafeLoader subclass)


def load_yaml_file(path: str | Path) -> dict:
    """A recipe file's mapping; a missing file or invalid YAML is a one-line RecipeError."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        data = _load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None)
        raise RecipeError(f"{path}: invalid YAML{line}" + (f": {problem}" if problem else "")) from exc
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys, got {type(data).__name__}")
    return data


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
    if key.isdigit() and int(key) < len(items):
        return int(key)
    for field_name in ("alias", "name", "function"):  # function: `module:function` names by their function
        named = [i for i, item in enumerate(items) if isinstance(item, dict) and (
            item.get(field_name) == key if field_name != "function" else
            not item.get("alias") and str(item.get("name", "")).rpartition(":")[2] == key)]
        if len(named) == 1:
            return named[0]
    names = [item.get("alias") or item.get("name") for item in items if isinstance(item, dict)]
    by_name = f" (or name an item: {', '.join(str(n) for n in names if n)})" if any(names) else ""
    raise RecipeError(f"override {text!r}: '{parent}' is a list of {len(items)}; "
                      f"index it with 0-{len(items) - 1}, got {key!r}{by_name}")


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


YAML_FALSE, YAML_TRUE = ("off", "no", "false"), ("on", "yes", "true")


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
        if isinstance(value, bool):  # YAML 1.1 reads off / no / on / yes as booleans: take the word meant
            value = next((w for w in (YAML_FALSE if value is False else YAML_TRUE) if w in args), value)
        if value not in args:
            raise RecipeError(f"{where}: key '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        item = args[0] if args else Any
        if isinstance(value, dict) and dataclasses.is_dataclass(item) and "alias" in {f.name for f in
                                                                                       dataclasses.fields(item)}:
            value = _aliased_items(value, key, where)
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


def _aliased_items(value: dict, key: str, where: str) -> list:
    """{alias: section} -> [section with its alias], in the mapping's order."""
    items = []
    for alias, section in value.items():
        if not isinstance(section, dict):
            raise RecipeError(f"{where}: key '{key}.{alias}' is a section, got {type(section).__name__} ({section!r})")
        if section.get("alias", alias) != alias:
            raise RecipeError(f"{where}: key '{key}.{alias}' names alias {section['alias']!r}; drop one of the two")
        items.append({**section, "alias": str(alias)})
    return items


def _section_default(field: dataclasses.Field, tp: Any) -> dict | None:
    """A section's own default values (its default_factory's, as a mapping), or None."""
    if dataclasses.is_dataclass(tp) and field.default_factory is not dataclasses.MISSING:
        return dataclasses.asdict(field.default_factory())
    return None


def _build(schema: type[T], data: dict, prefix: str, where: str, base: dict | None = None) -> T:
    """schema(**data), each value converted and checked. base: the section's defaults where they
    differ from its class's (a recipe kind's `optim` defaults, say): keys the recipe leaves out
    keep those, not the class defaults."""
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    for key in data:
        if key not in fields:
            raise RecipeError(
                f"{where}: unknown key '{prefix}{key}'; valid keys: {', '.join(prefix + k for k in fields)}"
            )
    kwargs = {}
    for name, field in fields.items():
        tp = hints[name]
        default = base[name] if base is not None and name in base else _section_default(field, tp)
        if name in data and dataclasses.is_dataclass(tp) and isinstance(data[name], dict) and \
                isinstance(default, dict):
            kwargs[name] = _build(tp, data[name], f"{prefix}{name}.", where, default)
        elif name in data:
            kwargs[name] = _convert(data[name], tp, prefix + name, where)
        elif base is not None and name in base:
            kwargs[name] = _convert(base[name], tp, prefix + name, where)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise RecipeError(f"{where}: missing required key '{prefix}{name}'")
    try:
        return schema(**kwargs)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, RecipeError):
            raise
        message = str(exc)
        if message.split(" ", 1)[0].split(".", 1)[0] in fields:  # "lr must be ..." -> "optim.lr must be ..."
            raise RecipeError(f"{where}: {prefix}{message}") from exc
        section = prefix.rstrip(".")
        raise RecipeError(f"{where}: {f'section {section!r}: ' if section else ''}{message}") from exc


def recipe_from_dict(schema: type[T], data: dict, where: str = "<recipe>", overrides: list[str] = ()) -> T:
    return _build(schema, apply_overrides(dict(data), list(overrides)), "", where)


def load_recipe(path: str | Path, schema: type[T], overrides: list[str] = ()) -> T:
    """Read YAML at path, apply dotted overrides, validate into schema."""
    return recipe_from_dict(schema, load_yaml_file(path), str(path), overrides)
