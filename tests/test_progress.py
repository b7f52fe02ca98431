"""Progress a user sees: a rich bar's ETA from the mean step time (rich's own stayed at -:--:-- for
steps over 30 s), plain lines with an ETA when stdout is a file, and a GRPO run through the CLI
into a pipe that shows its phases and steps without the noise (Ray's token notice, weight-loading
bars, a bare "1 learner")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from rich.progress import Progress

from train import tracking

REPO = Path(__file__).resolve().parents[1]


def test_eta_is_the_mean_step_time_times_the_steps_left(monkeypatch):
    now = [100.0]
    progress = Progress(get_time=lambda: now[0])
    task = progress.add_task("grpo", total=10, status="")
    progress.reset(task, completed=4, first=4)  # resumed at step 4
    now[0] = 190.0
    progress.update(task, completed=7)  # 3 steps in 90 s: 30 s each, 3 to go
    rendered = tracking._EtaColumn().render(progress.tasks[0])
    assert rendered.plain == "eta 0:01:30"


def test_plain_lines_when_output_is_a_file(monkeypatch, capsys):
    now = [0.0]
    monkeypatch.setattr(tracking.time, "monotonic", lambda: now[0])
    lines = tracking._LineProgress("grpo", 10, every_s=30.0)
    for step, t in ((2, 0.0), (3, 10.0), (4, 40.0)):
        now[0] = t
        lines.update(step, "reward 0.5")
    out = capsys.readouterr().out.splitlines()
    # step 3 came 10 s after the last line: not printed; step 4: 2 steps in 40 s since the first, 6 left
    assert out == ["grpo 2/10 reward 0.5 elapsed 0:00:00 eta -", "grpo 4/10 reward 0.5 elapsed 0:00:40 eta 0:02:00"]


def test_a_grpo_run_into_a_pipe_shows_phases_and_steps_without_noise(tmp_path):
    recipe = tmp_path / "grpo.yaml"
    recipe.write_text(yaml.safe_dump({
        "policy": {"name": "tiny"},
        "data": {"source": "builtin:arithmetic", "num_prompts": 20, "eval_prompts": 4, "max_digits": 1},
        "rewards": [{"name": "math_accuracy"}],
        "algorithm": {"group_size": 2, "prompts_per_step": 2},
        "rollout": {"sampling": {"max_new_tokens": 4}},
        "ray": {"enabled": True, "num_cpus": 2, "placement": "hybrid"},
        "train": {"output_dir": str(tmp_path / "run"), "steps": 2, "threads": 1},
        "log": {"progress_every_s": 0.0, "tensorboard": False}}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "deepalign.cli", "grpo", str(recipe)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out, err = proc.stdout, proc.stderr
    assert "prompts: 20 training, 4 held out" in out and "held-out evaluation before step 1" in out
    assert "learner: 1 process; rollout: in the learner's process (placement hybrid), float32; Ray" in out
    assert "grpo 1/2 reward" in out and "grpo 2/2 reward" in out and "eta" in out
    for noise in ("Token authentication", "Loading weights", "Writing model shards"):
        assert noise not in out + err, noise
    assert "\n1 learner\n" not in "\n" + out
