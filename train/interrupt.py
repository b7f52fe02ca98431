"""Stopping a training run cleanly on Ctrl-C (SIGINT).

Inside `stop_on_interrupt()`, a first SIGINT only asks the loop to stop: it finishes the step it
is in, saves a checkpoint when the run saves checkpoints (`train.save_every` > 0), and raises
`Interrupted`, which the command line prints as one line (exit status 130). Re-running the same
command resumes from that checkpoint. A second SIGINT stops at once (KeyboardInterrupt).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Interrupted(RuntimeError):
    """The run stopped on request; the message says at which step and what was saved."""


class StopRequest:
    def __init__(self):
        self.requested = False

    def __bool__(self) -> bool:
        return self.requested


@contextmanager
def stop_on_interrupt() -> Iterator[StopRequest]:
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield request
        return

    def handle(signum, frame):
        if request.requested:
            raise KeyboardInterrupt
        request.requested = True
        print("\nstopping after this step (Ctrl-C again to stop at once)", flush=True)

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)


def stopped(step: int, saved) -> Interrupted:
    where = f"checkpoint {saved} saved; re-run the same command to resume" if saved else \
        "no checkpoint saved (train.save_every is 0)"
    return Interrupted(f"interrupted at step {step}: {where}")
