"""The GRPO driver on a local Ray cluster: two learners forming one gloo FSDP2 group (the tiny
policy's routed experts split between them), a rollout worker SIGKILLed mid-run and restarted,
and a clear error when restarts are exhausted."""

import json
import time

import pytest

from grpo.workers import WorkerError
from tests.test_grpo_driver import _recipe

ray = pytest.importorskip("ray")


def test_two_learners_and_a_killed_rollout_worker(tmp_path, local_ray, capfd):
    from grpo.driver import run

    marker = tmp_path / "killed"
    recipe = _recipe(tmp_path, ray={"enabled": True, "learners": 2},
                     rewards=[{"name": "tests.grpo_helpers:kill_rollout_once", "params": {"marker": str(marker)}}],
                     train={"steps": 2, "threads": 1})
    final = run(recipe)
    assert marker.exists() and (final / "config.json").exists()
    out = capfd.readouterr().out
    assert "rollout worker 0 died; restarting it" in out
    assert "learners: 2 processes, FSDP2 + expert parallelism (3 MoE layers, 1/2 of the routed experts each)" in out
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2] and all(s["time/weight_sync_s"] > 0 for s in steps)


def test_dead_worker_without_restarts_stops_with_a_clear_error(tmp_path, local_ray):
    from grpo.driver import run

    recipe = _recipe(tmp_path, ray={"enabled": True}, rollout={"restarts": 0},
                     rewards=[{"name": "tests.grpo_helpers:kill_rollout_once",
                               "params": {"marker": str(tmp_path / "killed")}}],
                     train={"steps": 2, "threads": 1})
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"rollout.generate: worker died .*restarts exhausted"):
        run(recipe)
    assert time.monotonic() - start < 60


class _SlowLoader:
    def load_weights(self, published, version):
        time.sleep(30)
        return version


def test_stalled_weight_sync_times_out_with_a_clear_error(local_ray):
    from grpo.cluster import Worker, wait

    worker = Worker("rollout worker 0", _SlowLoader, (), {"num_cpus": 0})
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"weight sync \(version 3\) timed out after 2s"):
        wait([worker.submit("load_weights", {}, 3)], 2, "weight sync (version 3)")
    assert time.monotonic() - start < 10
    worker.kill()
