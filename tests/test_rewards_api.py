"""The reward plug-in API: registry, import paths, entry points, async, TRL functions, combine."""

import doctest
import sys
import time

import pytest

import rewards.math_accuracy
import rewards.rules
from rewards import RewardError, combine, get_reward, register_reward, registered_rewards
from rewards.registry import UnknownRewardError


def length_reward(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


async def async_reward(prompts, completions, target=None, **kwargs):
    return [float(c == t) for c, t in zip(completions, target, strict=True)]


def flaky_reward(prompts, completions, **kwargs):
    if any("boom" in c for c in completions):
        raise ValueError("cannot score boom")
    return [1.0] * len(completions)


def test_rule_doctests():
    import rewards.math_equivalence

    for module in (rewards.rules, rewards.math_accuracy, rewards.math_equivalence):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_registry_lists_builtins_and_unknown_names_list_them():
    names = registered_rewards()
    assert {"math_accuracy", "code_tests", "format", "soft_overlong_penalty", "repetition_penalty",
            "language_consistency", "refusal"} <= set(names)
    with pytest.raises(UnknownRewardError) as err:
        get_reward("math_acuracy")
    assert "registered: " in str(err.value) and "math_accuracy" in str(err.value)


def test_register_module_path_and_params():
    register_reward("test_length")(length_reward)
    assert get_reward("test_length")(prompts=["p"], completions=["abc"]) == [3.0]
    fn = get_reward("tests.test_rewards_api:length_reward")
    assert fn(prompts=["p", "p"], completions=["a", "abcd"]) == [1.0, 4.0]
    with pytest.raises(UnknownRewardError, match="has no callable 'nope'"):
        get_reward("tests.test_rewards_api:nope")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['extractoin'\]"):
        get_reward("math_accuracy", extractoin="boxed")


def test_entry_point_group(tmp_path, monkeypatch):
    dist = tmp_path / "myrewards-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myrewards\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[deepalign.rewards]\nshouting = myrewards_mod:shouting\n")
    (tmp_path / "myrewards_mod.py").write_text(
        "def shouting(prompts, completions, **kw):\n    return [float(c.isupper()) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = get_reward("shouting")
    assert fn(prompts=["p", "p"], completions=["HEY", "hey"]) == [1.0, 0.0]


def test_async_reward_and_chat_format():
    from rewards import call_reward

    assert call_reward(async_reward, ["p", "p"], ["a", "b"], {"target": ["a", "a"]}) == [1.0, 0.0]
    chat = [[{"role": "assistant", "content": "<think>hm</think>4"}]]
    assert get_reward("format", required_tags=["think"])(prompts=[[{"role": "user", "content": "q"}]],
                                                        completions=chat) == [1.0]


def test_trl_reward_function_runs_unchanged():
    fn = get_reward("trl.rewards:think_format_reward")
    completions = [[{"role": "assistant", "content": "<think>\nLet me see.\n</think>\nIt is 4."}],
                   [{"role": "assistant", "content": "It is 4."}]]
    assert fn(prompts=[[{"role": "user", "content": "2+2?"}]] * 2, completions=completions) == [1.0, 0.0]
    combined = combine(("think", fn, 0.5), ("len", length_reward, 0.0))
    assert combined(prompts=["p", "p"], completions=completions).total == [0.5, 0.0]


def test_combine_weights_none_and_components():
    def maybe(prompts, completions, **kw):
        return [None, 2.0]

    result = combine(("len", length_reward, 0.5), ("maybe", maybe, 3.0))(prompts=["p", "p"], completions=["ab", "abcd"])
    # sample 0: 0.5*2 + (n/a) = 1.0 ; sample 1: 0.5*4 + 3*2 = 8.0
    assert result.total == [1.0, 8.0]
    assert result.components == {"len": [2.0, 4.0], "maybe": [None, 2.0]}
    assert set(result.seconds) == {"len", "maybe"}


def test_a_raising_reward_stops_with_its_name_and_the_sample():
    reward = combine(("flaky", flaky_reward, 1.0))
    with pytest.raises(RewardError, match="reward 'flaky' failed on sample 2: ValueError: cannot score boom"):
        reward(prompts=["p"] * 4, completions=["a", "b", "boom", "c"])
    zeroed = combine(("flaky", flaky_reward, 1.0), on_error="zero")(prompts=["p"] * 4,
                                                                   completions=["a", "boom", "b", "boom"])
    assert zeroed.total == [1.0, 0.0, 1.0, 0.0]
    assert zeroed.errors == {"flaky": 2}  # counted, never silent


def test_timeout_is_an_error():
    def slow(prompts, completions, **kw):
        time.sleep(2)
        return [1.0] * len(completions)

    from rewards.combine import RewardComponent

    reward = combine(RewardComponent("slow", slow, 1.0, timeout=0.2))
    start = time.perf_counter()
    with pytest.raises(RewardError, match="reward 'slow' failed on sample 0: TimeoutError: timed out after 0.2s"):
        reward(prompts=["p"], completions=["a"])
    assert time.perf_counter() - start < 1.5


def test_bad_return_values_are_errors():
    with pytest.raises(RewardError, match="returned 1 values for 2 completions"):
        combine(("short", lambda prompts, completions, **kw: [1.0], 1.0))(prompts=["p", "p"], completions=["a", "b"])
    assert sys.modules["rewards.api"]  # the API module is importable on its own


def test_categories_send_each_component_only_its_rows():
    seen = {}

    def rm(prompts, completions, category, answer, **kw):
        seen.update(prompts=prompts, category=category, answer=answer)
        return [10.0 * len(c) for c in completions]

    from rewards.combine import RewardComponent

    reward = combine(RewardComponent("rm", rm, 0.5, categories=("benign", "harmful")),
                     RewardComponent("math", rewards.math_accuracy.math_accuracy, 2.0, categories=("math",)))
    result = reward(prompts=["1+1?", "tell", "hurt", "2+2?"], completions=["2", "ab", "no", "5"],
                    category=["math", "benign", "harmful", "math"], answer=["2", None, None, "4"])
    # the RM sees rows 1 and 2 only, with their own columns; math scores rows 0 and 3
    assert seen == {"prompts": ["tell", "hurt"], "category": ["benign", "harmful"], "answer": [None, None]}
    assert result.components == {"rm": [None, 20.0, 20.0, None], "math": [1.0, None, None, 0.0]}
    assert result.total == [2.0, 10.0, 10.0, 0.0]  # 2*1 ; 0.5*20 ; 0.5*20 ; 2*0


def test_categories_need_a_category_column_and_errors_name_the_batch_sample():
    from rewards.combine import RewardComponent

    only = combine(RewardComponent("flaky", flaky_reward, 1.0, categories=("benign",)))
    with pytest.raises(RewardError, match="reward 'flaky' scores only categories \\['benign'\\], but the data has no "
                                          "'category' column \\(columns: answer\\)"):
        only(prompts=["p"], completions=["a"], answer=["1"])
    with pytest.raises(RewardError, match="reward 'flaky' failed on sample 3: ValueError: cannot score boom"):
        only(prompts=["p"] * 4, completions=["a", "boom", "b", "boom"], category=["benign", "math", "benign", "benign"])
    assert only(prompts=["p"], completions=["boom"], category=["math"]).components == {"flaky": [None]}  # not sent


def test_reward_spec_categories_are_checked():
    from rewards.config import RewardSpec

    assert RewardSpec(categories=["math"]).categories == ["math"]
    for bad in (["sports"], []):
        with pytest.raises(ValueError, match="categories must be a non-empty list of"):
            RewardSpec(alias="rm", categories=bad)
