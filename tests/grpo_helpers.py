"""Reward functions the GRPO fault tests plug in by `tests.grpo_helpers:name`."""

import os
import signal
from pathlib import Path


def length_reward(prompts, completions, **_):
    """Longer completions score higher."""
    return [float(len(c)) / 10 for c in completions]


def digits_reward(prompts, completions, **_):
    """The fraction of characters that are ASCII digits: an untrained byte-level policy writes a
    few (10 of 256 bytes), and any policy can learn to write more in a few steps."""
    return [sum(ch in "0123456789" for ch in c) / max(len(c), 1) for c in completions]


def broken_reward(prompts, completions, **_):
    if len(completions) > 1:
        raise ValueError("batch failed")
    if "+" in prompts[0]:
        raise ValueError("cannot score this one")
    return [0.0]


def kill_rollout_once(prompts, completions, marker=None, **_):
    """SIGKILLs rollout worker 0's process the first time it is called on a generated batch (marker: a
    file path; the driver's pre-flight call, one empty completion, is not one)."""
    if completions != [""] and not Path(marker).exists():
        import gc

        import ray

        from grpo.cluster import Cluster

        Path(marker).write_text("killed")
        # this run's cluster (an earlier test's may still be in memory): the one whose recipe has this marker
        cluster = next(o for o in gc.get_objects() if _is(o, Cluster) and any(
            r.params.get("marker") == marker for r in o.recipe.rewards))
        os.kill(ray.get(cluster.rollout[0].actor.pid.remote()), signal.SIGKILL)
    return [float(len(c)) / 10 for c in completions]


def _is(obj, cls) -> bool:
    try:
        return isinstance(obj, cls)
    except ReferenceError:  # a weak proxy whose referent is gone
        return False


SEEN: list[dict] = []


def record_columns(prompts, completions, **columns):
    """Scores 0 and keeps what it was called with (tests read SEEN; ray.enabled false only)."""
    SEEN.append({"prompts": prompts, "completions": completions, **columns})
    return [0.0] * len(completions)
