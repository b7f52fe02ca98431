"""Routing replay on the tiny DeepSeek-V2 policy (grpo/replay.py, rollout/routing_record.py): the
engine records each sample's experts, the learner replays them at the right positions, and where
the engine routes differently (its router perturbed) replay brings the learner's log-probs to the
engine's while routing afresh does not; R2 replays the learner's own first pass; a GRPO run logs
the per-layer agreement."""

from __future__ import annotations

import json

import pytest
import torch

from data_tools.chat import encode_prompts
from grpo.batch import build_batch
from grpo.driver import run
from grpo.replay import replay_indices
from grpo.workers import LearnerWorker, make_engine
from rollout.engine import SamplingConfig
from tests.test_grpo_driver import _recipe


def test_replay_indices_put_each_completion_row_where_it_predicts():
    routing = torch.tensor([[[[1, 2]], [[3, 4]], [[-1, -1]]]], dtype=torch.int16)  # (N=1, C=3, layers=1, k=2)
    [layer] = replay_indices(routing, width=6)  # prompt columns 0-2, completion 3-5
    # column 2 (the prompt's last token) predicts completion token 0, column 3 token 1, column 4 token 2
    assert layer.tolist() == [[-1, -1], [-1, -1], [1, 2], [3, 4], [-1, -1], [-1, -1]]


def _engine_and_learner(tmp_path, mode, perturb: float, **algorithm):
    recipe = _recipe(tmp_path, algorithm={"routing_replay": mode, "loss": {"beta": 0.0}, **algorithm})
    learner, engine = LearnerWorker(recipe), make_engine(recipe, 0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the engine's routers drift from the learner's: some top-k sets differ
        for moe in engine.model.moe_layers():
            moe.gate.weight.add_(torch.randn(moe.gate.weight.shape, generator=gen) * moe.gate.weight.std() * perturb)
        engine.decoder.refresh()
    prompts = encode_prompts(learner.tokenizer, ["What is 2 + 3?", "What is 4 + 4?", "Say hi."])
    rollout = engine.generate(prompts, 4, SamplingConfig(max_new_tokens=12, temperature=1.0), seed=0)
    return learner, build_batch(rollout, torch.zeros(12), learner.tokenizer.pad_token_id)


def _mismatch(learner, batch):
    learner.agreement.zero_()
    logp = learner._score(learner.model, batch, count=True)
    diff = (logp - batch.rollout_logp)[batch.completion_mask].abs()
    return float(diff.max()), learner._agreement_metrics()


def test_the_engine_records_every_samples_experts(tmp_path):
    learner, batch = _engine_and_learner(tmp_path, "rollout", perturb=0.0)
    layers = len(learner.model.moe_layers())
    assert batch.routing.shape == (12, batch.completion_width, layers, 2 * 2)
    recorded = batch.routing[batch.completion_mask]
    assert recorded.min() >= 0 and recorded.max() < learner.model.config.n_routed_experts
    assert (batch.routing[~batch.completion_mask] == -1).all()
    diff, agreement = _mismatch(learner, batch)
    assert agreement["routing/agreement"] > 0.99 and diff < 1e-4  # same weights: the same experts


def test_replay_brings_the_learner_to_the_engine_where_routing_differs(tmp_path):
    fresh, batch = _engine_and_learner(tmp_path / "a", "off", perturb=0.03)
    replayed, same_batch = _engine_and_learner(tmp_path / "b", "rollout", perturb=0.03)
    assert torch.equal(batch.routing, same_batch.routing)
    off, off_agreement = _mismatch(fresh, batch)
    on, on_agreement = _mismatch(replayed, same_batch)
    assert 0.5 < off_agreement["routing/agreement"] < 0.99  # the perturbed router chose other experts
    assert on_agreement["routing/agreement"] == off_agreement["routing/agreement"]
    assert set(on_agreement) == {"routing/agreement", *(f"routing/agreement_layer{i}" for i in range(3))}
    # what is left with replay is the gate weights' difference; without it, other experts' outputs
    assert on < off / 5, (on, off)


def test_learner_replay_routes_the_updates_by_the_first_pass(tmp_path, monkeypatch):
    from grpo import replay

    learner, batch = _engine_and_learner(tmp_path, "learner", perturb=0.0, mu=2)
    seen = []
    real = replay.replaying

    def spy(model, per_layer, agreement=None, measure_only=False):
        seen.append((per_layer, measure_only))
        return real(model, per_layer, agreement, measure_only)

    monkeypatch.setattr("grpo.learner.replaying", spy)
    batch.advantages = torch.tensor([1.0, -1.0] * 6)
    metrics = learner.train_step(batch)
    forced = [p for p, measure in seen if p is not None and not measure]
    assert len(forced) == 2 * 3  # both updates, each of the 3 micro-batches, routed by the recorded first pass
    for first, second in zip(forced[:3], forced[3:], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert "routing/agreement" in metrics


def test_a_grpo_run_with_replay_logs_agreement_and_mismatch(tmp_path):
    final = run(_recipe(tmp_path, algorithm={"routing_replay": "rollout"}, train={"steps": 2}))
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert (final / "config.json").exists()
    for s in steps:
        assert s["routing/agreement"] == pytest.approx(1.0, abs=0.02) and abs(s["mismatch/kl"]) < 1e-3
        assert {f"routing/agreement_layer{i}" for i in range(3)} <= set(s)
