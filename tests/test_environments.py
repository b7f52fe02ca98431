"""Multi-turn environments: the trajectory's tokens are exactly the engine's plus the rendered
environment turns (the loss mask covers the model's only), scripted rewards give hand-computed
advantages, the turn budget holds, the registry resolves like the rewards', and the built-in
environments' verdicts come from the sandboxed harness (programs that try to win without being
right get 0 and feedback)."""

from __future__ import annotations

import pytest
import torch

from data_tools.prompts import PromptRow
from envs.api import UnknownEnvironmentError, environment_factory
from envs.code_feedback import CodeFeedback
from envs.python_tool import PythonTool, tool_code
from envs.trajectories import render_turn, run_trajectories, trajectory_metrics
from grpo.advantages import group_advantages
from grpo.batch import build_batch
from policy.load import load_tokenizer
from rollout.engine import Rollout, SamplingConfig

TOK = load_tokenizer("tiny")
EOS = TOK.eos_token_id


class ScriptedEngine:
    """Answers every context with the next scripted token list (ending with EOS unless told);
    records the contexts it was fed."""

    def __init__(self, answers: list[list[int]], finish: str = "stop"):
        self.answers, self.finish, self.calls = answers, finish, []

    def generate(self, prompts, n, sampling, seed=0):
        self.calls.append(([list(p) for p in prompts], n))
        ids = [self.answers[(len(self.calls) - 1) % len(self.answers)] for _ in prompts for _ in range(n)]
        return Rollout([list(p) for p in prompts for _ in range(n)], ids,
                       [[-0.5] * len(c) for c in ids], [self.finish] * len(ids),
                       [TOK.decode(c, skip_special_tokens=True) for c in ids])


class Countdown:
    """Replies "again" until its turn budget; turn t's reward is t (so 1 + 2 + ... is the total)."""

    def __init__(self, stop_after: int = 2):
        self.stop_after, self.turn = stop_after, 0

    def reset(self, row):
        return [{"role": "user", "content": row.prompt}]

    def step(self, messages, completion):
        self.turn += 1
        done = self.turn >= self.stop_after
        return (None if done else [{"role": "user", "content": "again"}]), float(self.turn), done, {"seen": 1}


def _answer(text: str) -> list[int]:
    return TOK(text, add_special_tokens=False)["input_ids"] + [EOS]


def test_a_trajectory_is_the_engines_tokens_plus_the_rendered_turns_and_only_the_model_is_trained():
    a1, a2 = _answer("12"), _answer("13")
    engine = ScriptedEngine([a1, a2])
    rows = [PromptRow("What is 5 + 7?", {})]
    rollout, rewards, infos = run_trajectories(engine.generate, TOK, rows, lambda: Countdown(2), 2,
                                                 SamplingConfig(max_new_tokens=8), seed=3, max_turns=5)
    prompt = TOK.apply_chat_template([{"role": "user", "content": "What is 5 + 7?"}], add_generation_prompt=True,
                                     tokenize=True, return_dict=True)["input_ids"]
    conversation = [{"role": "user", "content": "What is 5 + 7?"}, {"role": "assistant", "content": "12"}]
    env_turn = render_turn(TOK, conversation, [{"role": "user", "content": "again"}], ended_with_eos=True)
    for j in range(2):
        assert rollout.prompt_ids[j] == prompt
        assert rollout.completion_ids[j] == a1 + env_turn + a2  # nothing re-tokenised
        assert rollout.loss_mask[j] == [True] * len(a1) + [False] * len(env_turn) + [True] * len(a2)
        assert rollout.logprobs[j] == [-0.5] * len(a1) + [0.0] * len(env_turn) + [-0.5] * len(a2)
    # the first turn samples G per prompt in one call; the second is fed exactly the tokens so far
    assert engine.calls[0] == ([prompt], 2)
    assert engine.calls[1] == ([prompt + a1 + env_turn] * 2, 1)
    # the text of those tokens is what the chat template renders for the whole conversation
    full = conversation + [{"role": "user", "content": "again"}]
    assert TOK.decode(prompt + a1 + env_turn) == TOK.apply_chat_template(full, add_generation_prompt=True,
                                                                         tokenize=False)
    metrics = trajectory_metrics(infos)
    assert rewards.tolist() == [[3.0, 3.0]] and metrics["env/turns"] == 2.0 and metrics["env/seen"] == 1.0
    fraction = (len(a1) + len(a2)) / (len(a1) + len(env_turn) + len(a2))
    assert metrics["env/model_token_fraction"] == pytest.approx(fraction)
    batch = build_batch(rollout, torch.zeros(2), TOK.pad_token_id)
    assert batch.completion_mask[0].tolist()[: len(rollout.loss_mask[0])] == rollout.loss_mask[0]
    assert rollout.new_tokens == 2 * (len(a1) + len(a2))


def test_an_answer_cut_by_a_stop_string_gets_the_end_token_from_the_environment_turn():
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "call"}]
    with_eos = render_turn(TOK, conversation, [{"role": "tool", "content": "42"}], ended_with_eos=True)
    without = render_turn(TOK, conversation, [{"role": "tool", "content": "42"}], ended_with_eos=False)
    assert without == [EOS] + with_eos and with_eos[0] != EOS


def test_scripted_rewards_give_hand_computed_advantages_and_the_turn_budget_holds():
    """Rows 0 and 1 stop after 1 and 3 turns (rewards 1 and 1+2+3 = 6), row 2 is cut by max_turns 2
    (1 + 2 = 3); group-normalised advantages by hand: group (1, 1) -> 0, etc."""
    stops = iter([1, 1, 3, 3, 9, 9])
    engine = ScriptedEngine([_answer("x")])
    rows = [PromptRow(f"q{i}", {}) for i in range(3)]
    rollout, rewards, _ = run_trajectories(engine.generate, TOK, rows, lambda: Countdown(next(stops)), 2,
                                           SamplingConfig(max_new_tokens=4), seed=0, max_turns=2)
    assert rewards.tolist() == [[1.0, 1.0], [3.0, 3.0], [3.0, 3.0]]
    assert group_advantages(rewards).abs().max() == 0.0  # equal rewards in each group: no signal
    mixed = torch.tensor([[1.0, 3.0], [6.0, 0.0]])  # std of (1, 3) is sqrt(2); of (6, 0), sqrt(18)
    expected = [[-1 / 2**0.5, 1 / 2**0.5], [3 / 18**0.5, -3 / 18**0.5]]
    assert torch.allclose(group_advantages(mixed, eps=0.0), torch.tensor(expected))
    turns = [sum(1 for k in range(len(m)) if m[k] and (k == 0 or not m[k - 1])) for m in rollout.loss_mask]
    assert turns == [1, 1, 2, 2, 2, 2]


def test_an_answer_cut_by_the_token_budget_ends_its_trajectory():
    engine = ScriptedEngine([[5, 6, 7]], finish="length")
    rollout, rewards, infos = run_trajectories(engine.generate, TOK, [PromptRow("q", {})], lambda: Countdown(5), 1,
                                                 SamplingConfig(max_new_tokens=3), seed=0, max_turns=4)
    assert rollout.completion_ids == [[5, 6, 7]] and rewards.tolist() == [[1.0]] and len(engine.calls) == 1


def test_environments_resolve_like_rewards(tmp_path):
    module = tmp_path / "my_env.py"
    module.write_text("class Echo:\n    def __init__(self, word='hi'):\n        self.word = word\n"
                      "    def reset(self, row):\n        return [{'role': 'user', 'content': self.word}]\n"
                      "    def step(self, messages, completion):\n        return None, 1.0, True, {}\n")
    make = environment_factory(f"{module}:Echo", {"word": "yo"})
    assert make().reset(None) == [{"role": "user", "content": "yo"}]
    with pytest.raises(UnknownEnvironmentError, match="unknown environment 'nope'; registered: code_feedback"):
        environment_factory("nope")
    with pytest.raises(UnknownEnvironmentError, match="params .*'colour'.* do not fit"):
        environment_factory(f"{module}:Echo", {"colour": 1})
    half = tmp_path / "half_env.py"
    half.write_text("class Half:\n    def reset(self, row):\n        return []\n")
    with pytest.raises(UnknownEnvironmentError, match="Half has no step"):
        environment_factory(f"{half}:Half")


ROW = PromptRow("Write a Python function add(a, b) that returns their sum.",
                {"tests": "assert add(1, 2) == 3\nassert add(-1, 1) == 0", "entry_point": "add"})
WRONG = "```python\ndef add(a, b):\n    return a - b\n```"
RIGHT = "```python\ndef add(a, b):\n    return a + b\n```"
CHEATS = ["```python\nimport sys\nsys.exit(0)\n```",
          "```python\nimport os\nprint('1 2 passed')\nos._exit(0)\n```",
          "```python\ndef add(a, b):\n    raise SystemExit(0)\n```",
          "```python\nclass add:\n    def __init__(self, *a):\n        pass\n    def __eq__(self, other):\n"
          "        return True\n```"]


def test_code_feedback_shows_the_failing_test_and_rewards_only_a_passing_program():
    env = CodeFeedback(turn_penalty=0.1)
    messages = env.reset(ROW) + [{"role": "assistant", "content": WRONG}]
    new, reward, done, info = env.step(messages, WRONG)
    assert not done and reward == -0.1 and info["passed"] == 0.0
    assert "assert add(1, 2) == 3" in new[0]["content"] and new[0]["role"] == "user"
    new, reward, done, info = env.step(messages + new + [{"role": "assistant", "content": RIGHT}], RIGHT)
    assert (new, reward, done, info["passed"], info["passed_after_feedback"]) == (None, 1.0, True, 1.0, 1.0)
    for cheat in CHEATS:
        new, reward, done, info = _fresh_step(cheat)
        assert (reward, done, info["passed"]) == (0.0, False, 0.0), cheat
        assert new and "did not pass" in new[0]["content"]


def _fresh_step(completion: str):
    env = CodeFeedback()
    return env.step(env.reset(ROW) + [{"role": "assistant", "content": completion}], completion)


def test_code_feedback_hidden_tests_count_but_are_never_shown():
    row = PromptRow(ROW.prompt, {**ROW.columns, "hidden_tests": "assert add(10**20, 1) == 10**20 + 1\n"
                                                               "assert add(2, 2) == 4 and 'secret' != 'shown'"})
    special = "```python\ndef add(a, b):\n    return {(1, 2): 3, (-1, 1): 0}[(a, b)]\n```"  # wins the shown tests only
    env = CodeFeedback()
    new, reward, done, _ = env.step(env.reset(row) + [{"role": "assistant", "content": special}], special)
    assert reward == 0.0 and not done and "hidden test" in new[0]["content"] and "secret" not in new[0]["content"]
    env = CodeFeedback()
    assert env.step(env.reset(row), RIGHT)[1:3] == (1.0, True)


def test_python_tool_runs_the_call_in_the_sandbox_and_scores_only_the_final_answer():
    row = PromptRow("What is 6 * 7?", {"answer": "42"})
    env = PythonTool()
    messages = env.reset(row)
    call = '<tool_call>{"name": "python", "arguments": {"code": "print(6 * 7)"}}</tool_call>'
    messages.append({"role": "assistant", "content": call})
    new, reward, done, info = env.step(messages, call)
    assert new == [{"role": "tool", "name": "python", "content": "42\n"}] and reward == 0.0 and not done
    assert messages[-1]["tool_calls"][0]["function"]["arguments"] == {"code": "print(6 * 7)"}
    assert info["tool_success"] == 1.0 and info["tool_calls"] == 1.0
    assert env.step(messages, "The answer is 41.")[1:3] == (0.0, True)
    assert env.step(messages, "The answer is 42.")[1:3] == (1.0, True)
    # the tool is sandboxed: no network, no host files; a failing call returns its error line
    ok, out = PythonTool().run("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)")
    assert not ok and "Error" in out
    ok, out = PythonTool().run("print(open('/etc/shadow').read())")
    assert not ok
    assert tool_code("```python\nprint(1)\n```") == "print(1)\n"
    assert tool_code("<tool_call>{bad json</tool_call>") is None


def test_a_grpo_run_drives_code_feedback_through_the_cli(tmp_path, capsys):
    """`deepalign grpo` with `environment: code_feedback` on builtin:code: trajectories of up to 2
    turns train (the learner sees the loss mask) and the held-out evaluation reports the pass rate
    and turns; a recipe that also lists rewards fails. Stop strings end the random tiny policy's
    answers early (an answer cut by the token budget ends its trajectory), so second turns happen."""
    import json
    import string

    from deepalign.cli import main

    small = ["policy.name=tiny", "ray.enabled=false", "train.steps=2", "data.source=builtin:code",
             "data.num_prompts=20", "data.eval_prompts=2", "algorithm.prompts_per_step=2", "algorithm.group_size=2",
             "rollout.sampling.max_new_tokens=12", f"rollout.sampling.stop=[{', '.join(string.ascii_lowercase)}]",
             "log.progress=false", "log.tensorboard=false", "train.threads=1",
             "rewards=[]", "environment.name=code_feedback", "environment.max_turns=2",
             "environment.params={turn_penalty: 0.25}", f"train.output_dir={tmp_path / 'run'}"]
    assert main(["grpo", "recipes/demo/grpo_stage1.yaml", *small]) == 0
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trained = [s for s in steps if "env/turns" in s]
    assert len(trained) == 2 and all(1.0 <= s["env/turns"] <= 2.0 for s in trained)
    assert max(s["env/turns"] for s in trained) > 1.0 and min(s["env/model_token_fraction"] for s in trained) < 1.0
    # a random tiny policy never passes: every trajectory fails both turns, -0.25 each
    assert all(s["reward/mean"] == pytest.approx(-0.25 * s["env/turns"]) for s in trained)
    end = json.loads((tmp_path / "run" / "eval.json").read_text())["end"]
    assert end["eval/env/passed"] == 0.0 and 1.0 <= end["eval/env/turns"] <= 2.0
    assert main(["grpo", "recipes/demo/grpo_stage1.yaml", *[a for a in small if a != "rewards=[]"]]) != 0
    assert "environment 'code_feedback' gives the trajectory's reward; set rewards: []" in capsys.readouterr().err


def test_the_learner_scores_a_local_engine_trajectory_as_the_engine_sampled_it():
    """Token in, token out on the real engine: re-scoring each whole trajectory (prompt, answers and
    environment turns) with the model gives the engine's log-probs at every model token, turn 2
    included (the engine continued from exactly those ids)."""
    import string

    from policy.load import load_policy
    from policy.logprobs import sequence_logprobs
    from rollout.local import LocalEngine

    model, tokenizer = load_policy("tiny")
    engine = LocalEngine(load_policy("tiny")[0], tokenizer)
    sampling = SamplingConfig(max_new_tokens=10, stop=list(string.ascii_lowercase))
    rollout, _, infos = run_trajectories(engine.generate, tokenizer, [PromptRow("What is 2 + 2?", {})] * 2,
                                           lambda: Countdown(3), 2, sampling, seed=5, max_turns=3)
    assert trajectory_metrics(infos)["env/turns"] > 1.5  # most trajectories reach a second answer
    for prompt, ids, mask, logp in zip(rollout.prompt_ids, rollout.completion_ids, rollout.loss_mask,
                                       rollout.logprobs, strict=True):
        scored = sequence_logprobs(model, prompt + ids)[len(prompt) - 1:]
        model_tokens = [k for k, m in enumerate(mask) if m]
        assert torch.allclose(torch.tensor([scored[k] for k in model_tokens]),
                              torch.tensor([logp[k] for k in model_tokens]), atol=1e-4)


def test_builtin_functions_tests_hold_for_right_programs_and_split_by_constant():
    """builtin:functions: right programs pass the row's own tests in the sandbox, an off-by-one
    fails them, and no held-out (function, constant) is trained on."""
    from data_tools.prompts import load_prompts
    from rewards.code_tests import score_programs

    train, held_out = load_prompts("builtin:functions", 300, 30, seed=0)
    assert not {r.prompt for r in train} & {r.prompt for r in held_out} and len({r.prompt for r in held_out}) > 10
    body = {"add": "x + {k}", "subtract": "x - {k}", "times": "x * {k}", "mod": "x % {k}", "above": "x > {k}"}
    rows = list({r.columns["entry_point"].split("_")[0]: r for r in train}.values())  # one row per shape
    assert len(rows) == 5
    for row in rows:
        name = row.columns["entry_point"]
        shape, k = name.split("_")
        right = f"def {name}(x):\n    return {body[shape].format(k=k)}\n"
        wrong = f"def {name}(x):\n    return {body[shape].format(k=int(k) + 1)}\n"
        scores = score_programs([row.prompt] * 2, [right, wrong], [row.columns["tests"]] * 2, [name] * 2)
        assert [s.score for s in scores] == [1.0, 0.0], (row.prompt, scores)


FUNCTIONS2 = {  # right bodies, and wrong ones a policy might write: a boundary or a constant off
    "affine": ("x * {a} + {b}", "x * {a} + {b} + 1"),
    "clip": ("max(-{a}, min({b}, x))", "max({a}, min({b}, x))"),
    "digits": ("sum(int(d) for d in str(abs(x))) * {a} + {b}", "abs(x) % 10 * {a} + {b}"),
    "multiples": ("max(x, 0) // {a} + {b}", "x // {a} + {b}"),
    "parity": ("{a} if x % 2 == 0 else x + {b}", "{a} if x % 2 else x + {b}"),
}


def test_builtin_functions2_tests_pass_right_programs_and_catch_near_misses():
    """builtin:functions2: for every shape a right program passes the row's tests in the sandbox and a
    near miss (one off, a bound's sign, the last digit only, multiples for x < 1, parity flipped) fails them;
    the held-out split shares no (shape, a, b) with training."""
    from data_tools.prompts import load_prompts
    from rewards.code_tests import score_programs

    train, held_out = load_prompts("builtin:functions2", 400, 40, seed=0)
    assert not {r.prompt for r in train} & {r.prompt for r in held_out} and len({r.prompt for r in held_out}) > 30
    rows = list({r.columns["entry_point"].split("_")[0]: r for r in train}.values())
    assert len(rows) == 5
    for row in rows:
        name = row.columns["entry_point"]
        shape, a, b = name.split("_")
        right, wrong = (f"def {name}(x):\n    return {body.format(a=a, b=b)}\n" for body in FUNCTIONS2[shape])
        scores = score_programs([row.prompt] * 2, [right, wrong], [row.columns["tests"]] * 2, [name] * 2)
        assert [s.score for s in scores] == [1.0, 0.0], (row.prompt, scores)
