"""Metrics to TensorBoard (and wandb when installed and asked for), `metrics.jsonl`, and progress.

Only the main process logs. Shared by SFT, reward-model training and GRPO.
- `Tracker`: scalars and histograms to TensorBoard / wandb, and progress: a live rich bar on a
  terminal; when output goes to a file or a pipe, one plain line every `log.progress_every_s`
  seconds (step, status, elapsed, ETA), so a log file shows progress too.
- `MetricsFile`: one JSON line per step. A resumed run first drops the lines of steps after its
  checkpoint (they run again), and a torn last line (a process killed mid-write) is dropped
  rather than failing every later resume.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from train.config import LogConfig


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _EtaColumn(ProgressColumn):
    """ETA from the mean time per step since the bar started (rich's own needs two updates within
    30 s, which steps of a minute never give: it stayed at -:--:--)."""

    def render(self, task) -> Text:
        done = task.completed - task.fields.get("first", 0)
        if not task.elapsed or done <= 0 or task.total is None:
            return Text("eta -", style="progress.remaining")
        return Text(f"eta {_clock(task.elapsed / done * (task.total - task.completed))}", style="progress.remaining")


class _LineProgress:
    """Progress as plain lines, for output that is not a terminal."""

    def __init__(self, description: str, total: int, every_s: float):
        self.description, self.total, self.every_s = description, total, every_s
        self.start, self.last, self.first_step = time.monotonic(), -float("inf"), None

    def update(self, step: int, status: str) -> None:
        now = time.monotonic()
        if self.first_step is None:
            self.first_step = step  # a resumed run: the ETA counts only this run's steps
        if now - self.last < self.every_s and step < self.total:
            return
        self.last = now
        done = step - self.first_step
        eta = (now - self.start) / done * (self.total - step) if done > 0 else None
        print(f"{self.description} {step}/{self.total} {status} elapsed {_clock(now - self.start)} "
              f"eta {_clock(eta) if eta is not None else '-'}", flush=True)


class Tracker:
    def __init__(self, log_dir: Path, total_steps: int, description: str, log: LogConfig, enabled: bool = True,
                 config: dict | None = None):
        self.enabled = enabled
        self.writer = None
        self.wandb = None
        self.progress = None
        self.lines = None
        if not enabled:
            return
        if log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir))
        if log.wandb_project:
            try:
                import wandb
            except ImportError:
                print("log.wandb_project is set but wandb is not installed; logging to TensorBoard only")
            else:
                self.wandb = wandb.init(project=log.wandb_project, config=config or {}, dir=str(log_dir))
        if log.progress and sys.stdout.isatty() and not os.environ.get("DEEPALIGN_PLAIN_PROGRESS"):
            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"), TimeElapsedColumn(), _EtaColumn(),
            )
            self.task = self.progress.add_task(description, total=total_steps, status="")
            self.first_step = None
            self.progress.start()
        elif log.progress:
            self.lines = _LineProgress(description, total_steps, log.progress_every_s)

    def advance(self, step: int, status: str = "") -> None:
        if self.progress is not None:
            if self.first_step is None:  # a resumed run: the ETA counts only this run's steps
                self.first_step = step
                self.progress.reset(self.task, completed=step, first=step)
            self.progress.update(self.task, completed=step, status=status)
        elif self.lines is not None:
            self.lines.update(step, status)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def histogram(self, step: int, name: str, values) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_histogram(name, values, step)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


class MetricsFile:
    """`metrics.jsonl`: {"step": s, ...metrics} per line."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def records(self) -> list[dict]:
        """Every whole record; a torn or garbled line (a kill mid-write) is left out."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                out.append(record)
        return out

    def keep_until(self, step: int) -> None:
        """Drop the records of steps after `step` (they are about to run again), torn lines, and repeats
        of a step (runs killed before their first checkpoint ran it more than once: the last one is kept)."""
        if not self.path.exists():
            return
        latest = {r["step"]: r for r in self.records() if r["step"] <= step}
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(latest[s]) + "\n" for s in sorted(latest)))
        os.replace(tmp, self.path)

    def append(self, step: int, metrics: dict[str, float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
