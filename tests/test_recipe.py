"""Recipe loading: typed dataclasses, dotted overrides, one-line errors that name the key."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from policy.config import PolicyDemoRecipe
from train.recipe import RecipeError, load_recipe, parse_override, recipe_from_dict


@dataclass
class Inner:
    rate: float = 0.1
    steps: int = 3
    mode: Literal["a", "b"] = "a"


@dataclass
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)
    limit: int | None = None


def test_valid_recipe_with_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\ninner:\n  rate: 1\n  mode: b\ntags: [p, q]\n")
    recipe = load_recipe(path, Outer, ["inner.steps=7", "limit=null", "tags=[z]"])
    assert recipe == Outer(name="x", inner=Inner(rate=1.0, steps=7, mode="b"), tags=["z"], limit=None)
    assert isinstance(recipe.inner.rate, float)


@dataclass
class Item:
    name: str = ""
    params: dict[str, str] = field(default_factory=dict)


@dataclass
class WithItems:
    items: list[Item] = field(default_factory=list)


def test_overrides_index_lists(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("items:\n  - name: a\n    params: {path: old}\n  - name: b\n")
    recipe = load_recipe(path, WithItems, ["items.0.params.path=new", "items.1.name=c"])
    assert recipe == WithItems(items=[Item("a", {"path": "new"}), Item("c")])
    with pytest.raises(RecipeError, match=r"'items' is a list of 2; index it with 0-1, got '2'"):
        load_recipe(path, WithItems, ["items.2.name=x"])
    with pytest.raises(RecipeError, match=r"'items' is a list of 2; index it with 0-1, got 'name'"):
        load_recipe(path, WithItems, ["items.name=x"])


def test_unknown_key_lists_valid_keys(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("name: x\ninner:\n  rte: 1\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path, Outer)
    msg = str(err.value)
    assert msg == f"{path}: unknown key 'inner.rte'; valid keys: inner.rate, inner.steps, inner.mode"
    assert "\n" not in msg


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": 3}, "key 'name' expects a string, got int (3)"),
        ({"name": "x", "inner": {"steps": 1.5}}, "key 'inner.steps' expects an integer, got float (1.5)"),
        ({"name": "x", "inner": {"steps": True}}, "key 'inner.steps' expects an integer, got bool (True)"),
        ({"name": "x", "inner": {"mode": "c"}}, "key 'inner.mode' must be one of ['a', 'b'], got 'c'"),
        ({"name": "x", "inner": 5}, "key 'inner' is a section, got int (5)"),
        ({"name": "x", "tags": "p"}, "key 'tags' expects a list, got str ('p')"),
        ({"name": "x", "limit": "many"}, "key 'limit' expects int | None, got str ('many')"),
        ({}, "missing required key 'name'"),
    ],
)
def test_type_errors_name_the_key(data, message):
    with pytest.raises(RecipeError, match=None) as err:
        recipe_from_dict(Outer, data, "r.yaml")
    assert str(err.value) == f"r.yaml: {message}"


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match="nope.yaml: recipe file not found"):
        load_recipe(tmp_path / "nope.yaml", Outer)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ninner: [1, 2\n")
    with pytest.raises(RecipeError, match=r"bad.yaml: invalid YAML at line \d"):
        load_recipe(bad, Outer)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n")
    with pytest.raises(RecipeError, match="a recipe is a mapping"):
        load_recipe(listy, Outer)


def test_override_parsing():
    assert parse_override("a.b.c=1e-3") == (["a", "b", "c"], 1e-3)
    assert parse_override("lr=5e-6") == (["lr"], 5e-6)
    assert parse_override("x=true") == (["x"], True)
    assert parse_override("x=hello world") == (["x"], "hello world")
    with pytest.raises(RecipeError, match="expected dotted.key=value"):
        parse_override("novalue")
    with pytest.raises(RecipeError, match="'name' is not a section"):
        recipe_from_dict(Outer, {"name": "x"}, "r", ["name.sub=1"])


def test_policy_recipe_moe_overrides_and_option_validation():
    recipe = recipe_from_dict(PolicyDemoRecipe, {}, "r", ["policy.moe.token_dropping=false"])
    assert recipe.policy.moe.to_dict() == {"token_dropping": False}
    with pytest.raises(RecipeError, match="key 'policy.moe.capacity_factor' expects float | None"):
        recipe_from_dict(PolicyDemoRecipe, {}, "r", ["policy.moe.capacity_factor=lots"])
    with pytest.raises(RecipeError, match="key 'policy.dtype' must be one of"):
        recipe_from_dict(PolicyDemoRecipe, {}, "r", ["policy.dtype=fp8"])


def test_a_key_given_twice_is_an_error(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("name: x\ninner:\n  rate: 1\n  rate: 2\n")
    with pytest.raises(RecipeError, match=r"twice.yaml: invalid YAML at line 4: key 'rate' is given twice"):
        load_recipe(path, Outer)


def test_rewards_by_alias_in_the_recipe_and_in_overrides(tmp_path):
    from grpo.config import GRPORecipe

    path = tmp_path / "grpo.yaml"
    path.write_text("rewards:\n  helpful: {name: reward_model, params: {path: a}}\n"
                    "  rule: {name: refusal, weight: 0.5}\n")
    recipe = load_recipe(path, GRPORecipe, ["rewards.helpful.params.path=b"])
    assert [(r.alias, r.name, r.weight, r.params) for r in recipe.rewards] == [
        ("helpful", "reward_model", 1.0, {"path": "b"}), ("rule", "refusal", 0.5, {})]
    path.write_text("rewards:\n  - {name: reward_model, alias: helpful, params: {path: a}}\n  - {name: refusal}\n")
    recipe = load_recipe(path, GRPORecipe, ["rewards.helpful.params.path=c", "rewards.refusal.weight=2"])
    assert [(r.label, r.weight, r.params) for r in recipe.rewards] == [("helpful", 1.0, {"path": "c"}),
                                                                        ("refusal", 2.0, {})]
    with pytest.raises(RecipeError, match=r"got 'nope' \(or name an item: helpful, refusal\)"):
        load_recipe(path, GRPORecipe, ["rewards.nope.weight=1"])


def test_yaml_booleans_read_as_the_word_a_literal_key_means():
    """YAML 1.1 reads `off` / `no` as False: `algorithm.routing_replay=off` and `mixed_precision: no`
    failed before; a bool with no matching word is still an error."""
    from grpo.config import GRPORecipe

    recipe = recipe_from_dict(GRPORecipe, {"train": {"mixed_precision": False}}, "r",
                              ["algorithm.routing_replay=off"])
    assert recipe.algorithm.routing_replay == "off" and recipe.train.mixed_precision == "no"
    with pytest.raises(RecipeError, match="must be one of"):
        recipe_from_dict(GRPORecipe, {}, "r", ["algorithm.mismatch=yes"])
