"""A training run that survives faults, or stops with one line that says why: broken checkpoints,
a full disk, torn metrics, rewards that hang or return NaN, bad recipes, and Ctrl-C."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from deepalign.cli import main
from grpo.driver import run
from rewards import combine
from rewards.combine import RewardComponent, RewardError
from tests.test_grpo_driver import _recipe
from train.checkpoint import CheckpointError, list_checkpoints

REPO = Path(__file__).resolve().parents[1]


def _steps(folder: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    run(_recipe(tmp_path, "r", train={"steps": 3, "save_every": 1, "keep_checkpoints": 3}))
    assert [p.name for p in list_checkpoints(tmp_path / "r")] == ["step-0000001", "step-0000002"]
    weights = tmp_path / "r" / "step-0000002" / "model.safetensors"
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    (tmp_path / "r" / "final").rename(tmp_path / "r" / "old-final")
    capsys.readouterr()
    run(_recipe(tmp_path, "r", train={"steps": 3, "save_every": 1, "keep_checkpoints": 3}))
    out = capsys.readouterr().out
    assert f"skipping checkpoint {tmp_path / 'r' / 'step-0000002'}: model.safetensors is truncated" in out
    assert f"resumed from {tmp_path / 'r' / 'step-0000001'} at step 1" in out
    assert _steps(tmp_path / "r") == [1, 2, 3]


def test_a_full_disk_is_one_line_and_leaves_no_temp_folder(tmp_path, monkeypatch, capsys):
    import train.checkpoint as ckpt

    def full(model, tokenizer, folder, info):
        (folder / "model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    out_dir = tmp_path / "full"
    (out_dir / ".tmp-step-0000009").mkdir(parents=True)  # left by a run killed while saving
    monkeypatch.setattr(ckpt, "save_hf_weights", full)
    recipe = tmp_path / "full.yaml"
    recipe.write_text(yaml.safe_dump({"train": {"output_dir": str(out_dir), "max_steps": 2, "save_every": 1,
                                                "threads": 1}, "data": {"num_examples": 40, "max_length": 64},
                                      "log": {"progress": False, "tensorboard": False}}))
    assert main(["sft", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{out_dir}: cannot write checkpoint step-0000001 (no space left on device;" in err and "MiB free)" in err
    assert list(out_dir.glob(".tmp-*")) == []  # neither the failed save's nor the killed run's
    with pytest.raises(CheckpointError, match="the final model"):
        ckpt.save_final(out_dir, None, None, ckpt.DistInfo())


def test_metrics_of_a_run_killed_before_its_first_checkpoint_are_not_repeated(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text('{"step": 1, "reward/mean": 0.0}\n{"step": 2, "reward/mean": 0.0}\n{"st')
    run(_recipe(tmp_path, "r", train={"steps": 2}))
    assert _steps(folder) == [1, 2]


def test_a_hanging_reward_stops_the_process(tmp_path):
    script = ("import time\nfrom rewards import combine\nfrom rewards.combine import RewardComponent\n"
              "def hang(prompts, completions, **k):\n    time.sleep(3600)\n"
              "try:\n    combine(RewardComponent('hang', hang, 1.0, timeout=0.5))(prompts=['p'] * 3, "
              "completions=['a', 'b', 'c'])\nexcept Exception as exc:\n    print(type(exc).__name__, exc)\n")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert time.monotonic() - start < 20  # the hung reward's thread does not keep the process alive
    assert proc.stdout.strip() == ("RewardError reward 'hang' failed on the batch of samples 0-2: TimeoutError: "
                                   "timed out after 0.5s")


def test_non_finite_rewards_name_the_reward_and_the_sample():
    def nan_at_1(prompts, completions, **kw):
        return [1.0, float("nan"), None]

    def inf_at_0(prompts, completions, **kw):
        return [float("inf"), 1.0, 1.0]

    with pytest.raises(RewardError, match=r"reward 'nan' returned nan for sample 1 \(rewards must be finite"):
        combine(("nan", nan_at_1, 1.0))(prompts=["p"] * 3, completions=["a", "b", "c"])
    with pytest.raises(RewardError, match="reward 'inf' returned inf for sample 0"):
        combine(("inf", inf_at_0, 1.0))(prompts=["p"] * 3, completions=["a", "b", "c"])
    zeroed = combine(RewardComponent("nan", nan_at_1, 2.0), ("inf", inf_at_0, 1.0), on_error="zero")(
        prompts=["p"] * 3, completions=["a", "b", "c"])
    assert zeroed.total == [2.0, 1.0, 1.0] and zeroed.errors == {"nan": 1, "inf": 1}
    assert zeroed.components["nan"] == [1.0, 0.0, None]  # None still means "does not apply"


@pytest.mark.parametrize("override, message", [
    ("data.num_prompts=0", "data.num_prompts must be at least 1, got 0"),
    ("optim.lr=-1", "optim.lr must be a positive number, got -1.0"),
    ("rollout.sampling.temperature=-1", "rollout.sampling.temperature must be a number >= 0 (0 = greedy), got -1.0"),
    ("rollout.sampling.top_p=7", "rollout.sampling.top_p must be in (0, 1], got 7.0"),
    ("train.output_dir=/proc/deepalign-out", "train.output_dir: cannot write to /proc/deepalign-out"),
])
def test_bad_recipe_values_are_one_line_errors(override, message, capsys):
    assert main(["grpo", "recipes/demo/grpo_stage1.yaml", "policy.name=tiny", override]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_an_output_dir_that_is_a_file_and_a_key_given_twice(tmp_path, capsys):
    file = tmp_path / "taken"
    file.write_text("x")
    assert main(["grpo", "recipes/demo/grpo_stage1.yaml", "policy.name=tiny", f"train.output_dir={file}"]) == 2
    assert f"train.output_dir: {file} is a file, not a folder" in capsys.readouterr().err
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  steps: 2\n  steps: 3\n")
    assert main(["grpo", str(twice)]) == 2
    assert "key 'steps' is given twice" in capsys.readouterr().err


def test_prompts_longer_than_the_context_are_left_out_and_reported(tmp_path, capsys):
    from grpo.stage import prompt_sets

    rows = [{"prompt": f"What is {i} + 2?", "answer": str(i + 2)} for i in range(12)] + \
        [{"prompt": "x " * 1200, "answer": "1"}] * 2
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = _recipe(tmp_path, data={"source": str(data), "num_prompts": 11, "eval_prompts": 3},
                     rollout={"sampling": {"max_new_tokens": 64}})
    train, held_out, _ = prompt_sets(recipe)
    assert all(len(ids) <= 2048 - 64 for ids in train.ids + held_out.ids)
    assert len(train.rows) + len(held_out.rows) == 12
    assert "longer than 1984 tokens (the policy's context 2048 minus rollout.sampling.max_new_tokens)" in \
        capsys.readouterr().out


def test_ctrl_c_stops_after_the_step_saves_and_resumes(tmp_path):
    recipe = tmp_path / "grpo.yaml"
    recipe.write_text(yaml.safe_dump({
        "policy": {"name": "tiny"}, "data": {"num_prompts": 40, "eval_prompts": 2, "max_digits": 1},
        "rewards": [{"name": "tests.grpo_helpers:length_reward"}],
        "algorithm": {"group_size": 2, "prompts_per_step": 2}, "rollout": {"sampling": {"max_new_tokens": 4}},
        "ray": {"enabled": False}, "log": {"progress": False, "tensorboard": False},
        "train": {"output_dir": str(tmp_path / "run"), "steps": 500, "save_every": 100, "threads": 1}}))
    cmd = [sys.executable, "-m", "deepalign.cli", "grpo", str(recipe)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    saved = list_checkpoints(tmp_path / "run")
    assert len(saved) == 1 and f"deepalign: interrupted at step {int(saved[0].name[5:])}: checkpoint {saved[0]} " \
        "saved; re-run the same command to resume" in err
    step = int(saved[0].name[5:])
    done = subprocess.run(cmd + [f"train.steps={step + 1}"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ})
    assert done.returncode == 0 and f"resumed from {saved[0]} at step {step}" in done.stdout
    assert _steps(tmp_path / "run") == list(range(1, step + 2))
