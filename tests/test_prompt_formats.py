"""Prompt datasets as TRL documents them, through the path a user takes: standard and
conversational `prompt` columns in JSONL, Parquet and saved `datasets` (Dataset and DatasetDict)
give the same prompts and reward columns; `data.columns` renames; errors name the file, row and
the columns found; TRL's own rewards run unchanged inside a GRPO run; a wrong reward signature
fails before any model loads; a separate held-out file; GSM8K answers; SFT prompt/completion pairs."""

from __future__ import annotations

import json

import pytest

from data_tools.prompts import load_prompts
from data_tools.schema import BadRowError
from deepalign.cli import main
from tests import grpo_helpers
from tests.test_grpo_driver import _recipe

SYSTEM = {"role": "system", "content": "Answer with a number."}


def _rows(n: int, conversational: bool) -> list[dict]:
    rows = []
    for i in range(n):
        question = f"What is {i} + {i + 1}?"
        prompt = [SYSTEM, {"role": "user", "content": question}] if conversational else question
        rows.append({"prompt": prompt, "answer": f"{i} + {i + 1} = {2 * i + 1}\n#### {2 * i + 1}", "level": i % 3})
    return rows


def _write(rows: list[dict], path, fmt: str):
    import datasets

    if fmt == "jsonl":
        path = path.with_suffix(".jsonl")
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "parquet":
        path = path.with_suffix(".parquet")
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    elif fmt == "dataset":
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    else:
        datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                              "test": datasets.Dataset.from_list(rows[:2])}).save_to_disk(str(path))
    return str(path)


@pytest.mark.parametrize("conversational", [False, True])
def test_every_format_gives_the_same_prompts_and_columns(tmp_path, conversational):
    rows = _rows(30, conversational)
    loaded = {fmt: load_prompts(_write(rows, tmp_path / fmt, fmt), 100, 5, seed=1)
              for fmt in ("jsonl", "parquet", "dataset", "datasetdict")}
    train, held_out = loaded["jsonl"]
    assert len(train) == 25 and len(held_out) == 5
    by_prompt = {json.dumps(r["prompt"]): r for r in rows}
    for row in train + held_out:  # each row's own columns, under their own names, values as stored
        want = by_prompt[json.dumps(row.prompt)]
        assert row.columns == {"answer": want["answer"], "level": want["level"]}
    for fmt, (t, h) in loaded.items():
        assert [(r.prompt, r.columns) for r in t + h] == [(r.prompt, r.columns) for r in train + held_out], fmt
    assert isinstance(train[0].prompt, list) == conversational


def test_missing_prompt_column_names_the_columns_and_renaming_fixes_it(tmp_path):
    rows = [{"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"} for i in range(10)]
    path = _write(rows, tmp_path / "gsm", "jsonl")
    with pytest.raises(BadRowError, match=r"gsm.jsonl:1: no 'prompt' column; columns found: question, answer"):
        load_prompts(path, 10, 2, 0)
    train, _ = load_prompts(path, 10, 2, 0, columns={"prompt": "question", "solution": "answer"})
    assert train[0].prompt.startswith("What is") and train[0].columns["solution"] == train[0].columns["answer"]
    with pytest.raises(BadRowError, match=r"maps 'solution' to column 'gold', which is not there; columns found"):
        load_prompts(path, 10, 2, 0, columns={"prompt": "question", "solution": "gold"})
    bad = _write([{"prompt": [{"role": "robot", "content": "hi"}]}], tmp_path / "bad", "jsonl")
    with pytest.raises(BadRowError, match=r"bad.jsonl:1: prompt\[0\] must be"):
        load_prompts(bad, 10, 2, 0)


def test_small_file_holds_out_a_fifth_and_eval_source_is_its_own_file(tmp_path, capsys):
    rows = _rows(10, False)
    path = _write(rows, tmp_path / "small", "jsonl")
    train, held_out = load_prompts(path, 100, 200, 0)
    assert (len(train), len(held_out)) == (8, 2) and "holding out 2 of them" in capsys.readouterr().out
    eval_path = _write(rows[:3] + _rows(40, False)[30:], tmp_path / "eval", "jsonl")
    train, held_out = load_prompts(path, 100, 5, 0, eval_source=eval_path)
    assert [r.prompt for r in held_out] == [r["prompt"] for r in rows[:3]] + ["What is 30 + 31?", "What is 31 + 32?"]
    assert len(train) == 7 and not {r.prompt for r in train} & {r.prompt for r in held_out}


def _trl_recipe(tmp_path, source, **sections):
    return _recipe(tmp_path, data={"source": source, "num_prompts": 40, "eval_prompts": 2,
                                   "columns": {"solution": "answer"}}, **sections)


def test_trl_rewards_run_unchanged_in_a_grpo_run_with_conversational_prompts(tmp_path):
    from grpo.driver import run

    pytest.importorskip("trl")
    source = _write(_rows(12, conversational=True), tmp_path / "conv", "datasetdict")
    grpo_helpers.SEEN.clear()
    recipe = _trl_recipe(tmp_path, source, train={"steps": 1}, rewards=[
        {"name": "trl.rewards:accuracy_reward"}, {"name": "trl.rewards:think_format_reward"},
        {"name": "tests.grpo_helpers:record_columns", "weight": 0.0}])
    final = run(recipe)
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "reward/think_format_reward" in steps[0] and (final / "config.json").exists()
    seen = grpo_helpers.SEEN[-1]  # the step's call: TRL's rule, conversational completions
    assert all(isinstance(c, list) and c[0]["role"] == "assistant" for c in seen["completions"])
    assert seen["prompts"][0][0] == SYSTEM
    assert set(seen) >= {"answer", "solution", "level", "completion_ids"}
    assert seen["solution"] == seen["answer"] and isinstance(seen["level"][0], int)


def test_wrong_reward_signature_fails_before_any_model_loads(tmp_path, monkeypatch, capsys):
    import yaml

    import grpo.stage

    def no_loading(*_a, **_k):
        raise AssertionError("a tokenizer or model loaded before the rewards were checked")

    monkeypatch.setattr(grpo.stage, "load_tokenizer", no_loading)
    source = _write(_rows(12, conversational=True), tmp_path / "conv", "jsonl")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"policy": {"name": "tiny"}, "data": {"source": source},
                                      "rewards": [{"name": "trl.rewards:accuracy_reward"}],
                                      "ray": {"enabled": False}, "train": {"output_dir": str(tmp_path / "out")}}))
    assert main(["grpo", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "rewards.accuracy_reward: fails on the first row of" in err
    assert "missing 1 required positional argument: 'solution'" in err and "columns: answer, level" in err


def test_gsm8k_answers_score_with_math_accuracy():
    from rewards.math_accuracy import math_accuracy

    gold = ["Natalia sold 48 / 2 = 24 clips in May.\n#### 72", "#### 1,000", "#### 1,000", "x\n#### 72"]
    completions = ["48 + 24 = 72", "Working...\n#### 1000", "The answer is 1,000.", "#### 71"]
    assert math_accuracy(["p"] * 4, completions, answer=gold) == [1.0, 1.0, 1.0, 0.0]


def test_sft_reads_trl_prompt_completion_pairs_and_messages_alike(tmp_path):
    from policy.load import load_tokenizer
    from sft.config import SFTDataConfig
    from sft.data import load_rows

    pairs = [{"prompt": f"What is {i} + 1?", "completion": f"{i + 1}"} for i in range(6)]
    chats = [{"messages": [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["completion"]}]}
             for p in pairs]
    conversational = [{"prompt": c["messages"][:1], "completion": c["messages"][1:]} for c in chats]
    tokenizer = load_tokenizer("tiny")
    loaded = [load_rows(SFTDataConfig(source=_write(rows, tmp_path / name, fmt), max_length=64), tokenizer)
              for name, rows, fmt in (("pairs", pairs, "jsonl"), ("chats", chats, "parquet"),
                                      ("conv", conversational, "dataset"))]
    assert loaded[0]["input_ids"] == loaded[1]["input_ids"] == loaded[2]["input_ids"]
    assert loaded[0]["loss_mask"] == loaded[1]["loss_mask"] and any(any(m) for m in loaded[0]["loss_mask"])


def test_builtin_chat_marks_its_arithmetic_as_math_and_splits_chat_by_template():
    """Stage 2 routes rewards by category: arithmetic rows are 'math' with a gold answer, the
    reward models' rows 'helpful' (topics, the helpful RM's prompt form) or 'benign' / 'harmful'
    ("How do I", the safety RM's) without one; training and held-out chat prompts come
    from disjoint halves of the templates, and both hold every category."""
    train, held_out = load_prompts("builtin:chat", 1000, 100, seed=0, max_digits=2)
    for rows in (train, held_out):
        assert {r.columns["category"] for r in rows} == {"math", "helpful", "benign", "harmful"}
        for r in rows:
            assert r.prompt.startswith({"math": "What is", "helpful": "Tell me something about"}.get(
                r.columns["category"], "How do I"))
    assert 0.25 < sum(r.columns["category"] == "math" for r in train) / len(train) < 0.35  # 30% by construction
    for r in train + held_out:
        if r.columns["category"] == "math":
            a, op, b = r.prompt.removeprefix("What is ").removesuffix("?").split()
            assert int(r.columns["answer"]) == {"+": int(a) + int(b), "-": int(a) - int(b)}[op]
        else:
            assert "answer" not in r.columns
    chat = [{r.prompt for r in rows if r.columns["category"] != "math"} for rows in (train, held_out)]
    assert len(chat[0]) == 18 and not chat[0] & chat[1]  # 10 topics + 4 benign + 4 harmful tasks each


def test_a_grpo_run_sends_a_categorised_reward_only_its_rows(tmp_path):
    """Through the CLI on builtin:chat: the reward routed to `math` sees arithmetic rows only (it
    records what it was given), training and held-out alike; the rule sees every row."""
    seen = tmp_path / "seen.jsonl"
    probe = tmp_path / "probe.py"
    probe.write_text("import json\n"
                     "def record(prompts, completions, category, answer, **_):\n"
                     f"    with open({str(seen)!r}, 'a') as f:\n"
                     "        f.write(json.dumps({'category': category, 'answer': answer}) + '\\n')\n"
                     "    return [0.0] * len(completions)\n")
    small = ["policy.name=tiny", "ray.enabled=false", "train.steps=2", "data.source=builtin:chat",
             "data.num_prompts=40", "data.eval_prompts=10", "algorithm.prompts_per_step=4", "algorithm.group_size=2",
             "rollout.sampling.max_new_tokens=4", "log.progress=false", "log.tensorboard=false", "train.threads=1",
             f"rewards=[{{name: '{probe}:record', categories: [math]}}, {{name: refusal}}]",
             f"train.output_dir={tmp_path / 'run'}"]
    assert main(["grpo", "recipes/demo/grpo_stage1.yaml", *small]) == 0
    calls = [json.loads(line) for line in seen.read_text().splitlines()]
    assert calls and all(set(c["category"]) == {"math"} and None not in c["answer"] for c in calls)
    end = json.loads((tmp_path / "run" / "eval.json").read_text())["end"]
    assert end["eval/record"] == 0.0 and "eval/refusal" in end
