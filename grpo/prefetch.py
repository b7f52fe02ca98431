"""One-step off-policy GRPO (`algorithm.max_staleness: 1`): the next step's groups are sampled
while the learners train on this step's.

The driver hands `Prefetch.start` the sampling of step s + 1 before it trains step s; sampling
runs in a thread (its work is Ray calls, engine decoding and sandboxed rewards, all of which
release the GIL), so rollout workers generate with weights version s while the learners update to
s + 1. Before the weights sync the driver waits for it (`wait`): an engine never changes weights
mid-generation, so every sample of a batch comes from one version, the one its Rollout carries.
Step s + 1 then trains on samples one version old; the clipped ratio is taken against the
learner's own log-probs before the update (the proximal policy) and the truncated importance
weight corrects from the behaviour policy the engine sampled with (decoupled PPO, as AReaL; the
learner already does both, so `max_staleness: 1` needs `algorithm.tis_cap`). Prompts and seeds
are those of the synchronous run; only the weights that sampled them differ.

Not built: staleness k > 1 and partial rollouts (a weight update mid-generation), which need an
engine that can take weights between decode steps.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from grpo.groups import Groups, Timer


class Prefetch:
    """At most one step's sampling in flight."""

    def __init__(self):
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grpo-prefetch")
        self.pending: tuple[Future, Timer, int] | None = None  # (future, its timer, prompt position at start)

    def start(self, sample: Callable[[Timer], Groups], position: int) -> None:
        """Run sample(timer) in the background; `position` is the prompt order's position before it
        (a checkpoint taken meanwhile resumes from there, so the step in flight is sampled again)."""
        if self.pending is not None:
            raise RuntimeError("a step's sampling is already in flight")
        timer = Timer()
        self.pending = (self.pool.submit(sample, timer), timer, position)

    @property
    def resume_position(self) -> int | None:
        return None if self.pending is None else self.pending[2]

    def wait(self) -> tuple[float, float]:
        """Block until the sampling in flight is done (its errors raise here): (seconds waited, seconds
        the sampling took)."""
        if self.pending is None:
            return 0.0, 0.0
        waited = Timer()
        self.pending[0].result()
        return waited.elapsed(), sum(self.pending[1].seconds.values())

    def take(self) -> tuple[Groups, Timer] | None:
        """The sampled groups and their timer, or None when nothing was started."""
        if self.pending is None:
            return None
        future, timer, _ = self.pending
        self.pending = None
        return future.result(), timer

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def async_metrics(staleness: int, dropped: int, waited: float, sampling_seconds: float) -> dict[str, float]:
    """async/staleness: versions between the batch's sampler and the learner it trains (0 or 1);
    async/dropped_stale: samples dropped as older than the bound; async/wait_s: how long the
    learner, done, waited for the next step's sampling (`sampling_seconds` long); async/overlap: the
    share of that sampling hidden behind the learner (1 = all of it)."""
    overlap = 1.0 - waited / sampling_seconds if sampling_seconds > 0 else 0.0
    return {"async/staleness": float(staleness), "async/dropped_stale": float(dropped), "async/wait_s": waited,
            "async/overlap": min(max(overlap, 0.0), 1.0)}
