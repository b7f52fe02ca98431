"""Off-policy GRPO with bounded staleness (`algorithm.max_staleness: k`): the next k steps' groups
are sampled while the learners train on this step's.

The driver queues the sampling of steps s + 1 .. s + k (`Prefetch.start`) before it trains step s;
one driver thread runs them in order (their work is Ray calls, engine decoding and sandboxed
rewards, all of which release the GIL), so the rollout workers generate while the learners update.
After each update the driver offers the new weights (grpo/cluster.py `offer`) without waiting: a
worker takes the newest offer before its next rollout, or with `algorithm.partial_rollouts`
before its next decode step (the rest of that rollout decodes with the new weights, each token
tagged with its version). A batch queued at step s starts with weights at least version s, so it
trains at most k versions late; the driver still checks every batch against the bound by its
oldest token and drops (and counts) one that is older. The clipped ratio is taken against the
learner's own log-probs before the update (the proximal policy) and the truncated importance
weight corrects from the behaviour policy the engine sampled with (decoupled PPO, as AReaL; so
`max_staleness` needs `algorithm.tis_cap`). Prompts and seeds are those of the synchronous run;
only the weights that sampled them differ. With placement hybrid (the engine in the learner's
process) and with vLLM workers only k = 1 runs: the driver waits for the step in flight, then
syncs (grpo/cluster.py `offers`).

Departure from AReaL's partial rollouts: the KV cache the old weights wrote is kept, not
recomputed; the behaviour log-probs are the ones the engine sampled with either way.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from grpo.groups import Groups, Timer
from rollout.engine import Rollout


@dataclass
class _Pending:
    future: Future
    timer: Timer
    position: int | None = None  # the prompt order's position when the sampling began (None: not yet)


class Prefetch:
    """At most `depth` steps' sampling queued, run one after another in a driver thread."""

    def __init__(self, depth: int = 1):
        self.depth = depth
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grpo-prefetch")
        self.pending: deque[_Pending] = deque()
        self.lock = threading.Lock()
        self.order = None

    def start(self, sample: Callable[[Timer], Groups], order) -> None:
        """Queue sample(timer); `order` is the PromptOrder it takes its prompts from."""
        if len(self.pending) >= self.depth:
            raise RuntimeError(f"{self.depth} steps' sampling already queued")
        self.order, entry = order, _Pending(None, Timer())

        def job():
            with self.lock:
                entry.position = order.position
            return sample(entry.timer)

        entry.future = self.pool.submit(job)
        self.pending.append(entry)

    @property
    def queued(self) -> int:
        return len(self.pending)

    @property
    def resume_position(self) -> int | None:
        """Where a checkpoint taken now resumes the prompt order: before the oldest queued step
        (which is sampled again), None when nothing is queued."""
        if not self.pending:
            return None
        with self.lock:
            began = self.pending[0].position
            return began if began is not None else self.order.position

    def wait(self) -> tuple[float, float]:
        """Block until every queued sampling is done (errors raise here): (seconds waited, seconds the
        oldest took)."""
        if not self.pending:
            return 0.0, 0.0
        waited = Timer()
        for entry in self.pending:
            entry.future.result()
        return waited.elapsed(), sum(self.pending[0].timer.seconds.values())

    def take(self) -> tuple[Groups, Timer, float] | None:
        """The oldest queued step's groups, its timer and how long this waited for them; None when
        nothing is queued."""
        if not self.pending:
            return None
        entry, waited = self.pending.popleft(), Timer()
        groups = entry.future.result()
        return groups, entry.timer, waited.elapsed()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def async_metrics(rollout: Rollout, step: int, bound: int, dropped: int, waited: float,
                  sampling_seconds: float) -> dict[str, float]:
    """For the batch trained at `step` (versions before it): async/staleness: versions between its
    oldest token's weights and the learner; async/staleness_mean and async/staleness_d<j> (j = 0 ..
    bound): the mean and the histogram, as fractions, of the model tokens' staleness;
    async/partial_samples: the share of samples whose tokens span several versions;
    async/dropped_stale: samples dropped as older than the bound; async/wait_s: how long the learner,
    done, waited for this step's sampling (`sampling_seconds` long); async/overlap: the share of
    that sampling hidden behind the learner (1 = all of it)."""
    ages, partial = [], 0
    for i in range(len(rollout.completion_ids)):
        versions = rollout.versions(i)
        mask = rollout.loss_mask[i] if rollout.loss_mask is not None else [True] * len(versions)
        ages += [step - v for v, m in zip(versions, mask, strict=True) if m]
        partial += len(set(versions)) > 1
    overlap = 1.0 - waited / sampling_seconds if sampling_seconds > 0 else 0.0
    out = {"async/staleness": float(step - rollout.oldest_version),
           "async/staleness_mean": sum(ages) / max(len(ages), 1),
           **{f"async/staleness_d{j}": sum(a == j for a in ages) / max(len(ages), 1) for j in range(bound + 1)},
           "async/partial_samples": partial / max(len(rollout.completion_ids), 1),
           "async/dropped_stale": float(dropped), "async/wait_s": waited, "async/overlap": min(max(overlap, 0.0), 1.0)}
    return out
