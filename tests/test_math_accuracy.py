"""math_accuracy on a table of equivalent and non-equivalent answers (math-verify underneath)."""

import pytest

from rewards import get_reward
from rewards.math_accuracy import extract_answer

# (completion, gold answer, expected reward)
TABLE = [
    # boxed answers
    (r"So the result is \boxed{42}.", "42", 1.0),
    (r"\boxed{\frac{1}{2}}", "0.5", 1.0),
    (r"\boxed{\frac{3}{4}}", "3/4", 1.0),
    (r"\boxed{0.75}", r"\frac{3}{4}", 1.0),
    (r"\boxed{\dfrac{2}{4}}", "1/2", 1.0),
    (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", 1.0),
    (r"\boxed{x=5}", "5", 1.0),
    (r"\boxed{\{1,2,3\}}", r"\{3,2,1\}", 1.0),
    (r"\boxed{(1,3)}", "(1,3)", 1.0),
    (r"\boxed{\pi}", r"\pi", 1.0),
    (r"\boxed{1000}", "1,000", 1.0),
    (r"\boxed{-7}", "-7", 1.0),
    (r"\boxed{2^{10}}", "1024", 1.0),
    (r"first \boxed{3} then \boxed{4}", "4", 1.0),
    (r"\boxed{\frac{1}{3}}", "0.3333", 0.0),
    (r"\boxed{41}", "42", 0.0),
    (r"\boxed{\frac{1}{2}}", "0.25", 0.0),
    (r"\boxed{\{1,2\}}", r"\{1,2,3\}", 0.0),
    (r"\boxed{-5}", "5", 0.0),
    (r"\boxed{x=4}", "5", 0.0),
    # "the answer is"
    ("Adding them, the answer is 12.", "12", 1.0),
    ("The answer is 3/5.", "0.6", 1.0),
    ("Answer: 7", "7", 1.0),
    ("The final answer is $\\frac{5}{2}$.", "2.5", 1.0),
    ("So the answer is 50%.", "0.5", 1.0),
    ("The answer is 25%.", "1/4", 1.0),
    ("the answer is 1.5", "3/2", 1.0),
    ("The answer is 13.", "12", 0.0),
    ("The answer is 0.6.", "3/4", 0.0),
    ("Answer: 40%", "0.5", 0.0),
    # last number
    ("12 + 30 = 42", "42", 1.0),
    ("12 + 30 = 32", "42", 0.0),
    ("We need 3 boxes of 4, that is 12 items", "12", 1.0),
    ("It costs $1,250 in total", "1250", 1.0),
    ("half of it: 0.50", "1/2", 1.0),
    ("After 3 steps we get 7/8", "0.875", 1.0),
    ("x is -3", "-3", 1.0),
    ("the value is 3.14", "3.14", 1.0),
    ("so 100 - 58 = 42", "42", 1.0),
    ("so 100 - 58 = 52", "42", 0.0),
    ("there are 9 apples", "8", 0.0),
    ("result 2.5", "2.05", 0.0),
    ("the rate is 12%", "0.12", 1.0),
    ("the rate is 12%", "12%", 1.0),
    ("the total is 1,000 dollars", "1000", 1.0),
    ("the total is 1,000 dollars", "100", 0.0),
    ("so x = 2/3", "0.6", 0.0),
    ("it is 7 hours", "7.5", 0.0),
    # no answer at all
    ("I don't know.", "42", 0.0),
    ("", "42", 0.0),
    (r"\boxed{}", "42", 0.0),
    # LaTeX on both sides
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}", 1.0),
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{1}{2}", 0.0),
    (r"\boxed{3x+2}", "2+3x", 1.0),
    (r"\boxed{3x+2}", "3x-2", 0.0),
    (r"\boxed{\sqrt{2}}", "1.41", 0.0),
    (r"\boxed{(1,3)}", "[1,3]", 0.0),
]


def test_table_has_at_least_50_pairs_of_both_kinds():
    assert len(TABLE) >= 50
    assert sum(e == 1.0 for *_, e in TABLE) >= 20 and sum(e == 0.0 for *_, e in TABLE) >= 20


@pytest.mark.parametrize("completion, gold, expected", TABLE)
def test_math_accuracy_table(completion, gold, expected):
    fn = get_reward("math_accuracy")
    assert fn(prompts=["q"], completions=[completion], answer=[gold]) == [expected]


def test_chat_format_completions_and_missing_answers():
    fn = get_reward("math_accuracy")
    chat = [[{"role": "assistant", "content": r"\boxed{4}"}], [{"role": "assistant", "content": "5"}]]
    assert fn(prompts=[[{"role": "user", "content": "2+2?"}]] * 2, completions=chat, answer=["4", None]) == [1.0, None]


@pytest.mark.parametrize(
    "mode, text, expected",
    [("boxed", r"answer is 3, \boxed{4}", "4"), ("boxed", "answer is 3", None),
     ("answer_is", r"\boxed{4}. The answer is 3.", "3"), ("last_number", r"The answer is 3 not 5", "5"),
     ("auto", "The answer is 3 not 5.", "3 not 5")],
)
def test_extraction_rules_are_configurable(mode, text, expected):
    assert extract_answer(text, mode) == expected


def test_extraction_parameter_reaches_the_function():
    fn = get_reward("math_accuracy", extraction="last_number")
    assert fn(prompts=["q"], completions=["The answer is 3, well, 5"], answer=["5"]) == [1.0]
    with pytest.raises(ValueError, match="extraction must be one of"):
        get_reward("math_accuracy", extraction="first")(prompts=["q"], completions=["1"], answer=["1"])


def test_off_the_main_thread_the_table_scores_the_same_and_a_sympy_bomb_still_times_out():
    """math-verify's timeouts need the main thread; from another thread (asynchronous GRPO scores in
    one) the batch goes to a helper process (rewards/math_equivalence.py) and scores exactly the same, a
    crafted tower of powers included (math-verify gives up on it after 5 s: 0, not a hang)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    fn = get_reward("math_accuracy")
    completions = [c for c, _, _ in TABLE] + [r"\boxed{9^{9^{9^{9}}}}"]
    golds = [g for _, g, _ in TABLE] + ["12"]
    with ThreadPoolExecutor(max_workers=1) as pool:
        start = time.perf_counter()
        got = pool.submit(fn, prompts=["q"] * len(golds), completions=completions, answer=golds).result()
        seconds = time.perf_counter() - start
    assert got == [e for *_, e in TABLE] + [0.0]
    assert seconds < 60
