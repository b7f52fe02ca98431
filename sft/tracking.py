"""Metrics to TensorBoard (and wandb when installed and asked for), and a rich progress bar.

Only the main process logs. Shared by SFT, reward-model training and GRPO.
"""

from __future__ import annotations

from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Tracker:
    def __init__(self, log_dir: Path, total_steps: int, description: str, enabled: bool = True,
                 tensorboard: bool = True, wandb_project: str | None = None, progress: bool = True,
                 config: dict | None = None):
        self.enabled = enabled
        self.writer = None
        self.wandb = None
        self.progress = None
        if not enabled:
            return
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir))
        if wandb_project:
            try:
                import wandb
            except ImportError:
                print("log.wandb_project is set but wandb is not installed; logging to TensorBoard only")
            else:
                self.wandb = wandb.init(project=wandb_project, config=config or {}, dir=str(log_dir))
        if progress:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            )
            self.task = self.progress.add_task(description, total=total_steps, status="")
            self.progress.start()

    def advance(self, step: int, status: str = "") -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step, status=status)

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
