"""Engine-mismatch corrections and router freezing through the learner (the pure functions are
checked by hand in tests/test_grpo_core.py): masked IS and IcePop leave exactly the tokens they
should out of the loss, the mismatch metrics are the hand-computed ones, a frozen router stays put."""

from __future__ import annotations

import pytest
import torch

from grpo.batch import GRPOBatch
from grpo.learner import Learner
from tests.test_grpo_driver import _recipe


def _batch_with_offsets(learner, offsets: torch.Tensor) -> GRPOBatch:
    """A batch whose engine log-probs are the learner's own plus `offsets` (so ratio = exp(-offset))."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 200, (4, 10), generator=gen)
    batch = GRPOBatch(ids, torch.ones(4, 10, dtype=torch.bool), torch.ones(4, 5, dtype=torch.bool),
                      torch.tensor([1.0, -1.0, 0.5, -0.5]), torch.zeros(4, 5))
    batch.rollout_logp = learner.score(batch) + offsets
    return batch


OFFSETS = torch.zeros(4, 5)
OFFSETS[0, 1] = -2.0  # ratio e^2 = 7.4: above a cap of 2 and above IcePop's 5
OFFSETS[1, 3] = -1.0  # ratio e = 2.7: above the cap, inside IcePop's [0.5, 5]
OFFSETS[2, 0] = 1.0  # ratio 1/e = 0.37: below IcePop's 0.5


@pytest.mark.parametrize("mode, masked", [("truncate", 0), ("mask", 2), ("icepop", 2)])
def test_mismatch_corrections_leave_out_the_right_tokens(tmp_path, mode, masked):
    learner = Learner(_recipe(tmp_path, algorithm={"mismatch": mode, "tis_cap": 2.0, "loss": {"beta": 0.0}}))
    metrics = learner.train_step(_batch_with_offsets(learner, OFFSETS))
    assert metrics["mismatch/masked_fraction"] == pytest.approx(masked / 20)
    # KL(engine || learner), k1 on the engine's samples: the mean offset, (-2 - 1 + 1) / 20
    assert metrics["mismatch/kl"] == pytest.approx(-2 / 20, abs=1e-5)


def test_sequence_level_masked_is_drops_whole_sequences(tmp_path):
    learner = Learner(_recipe(tmp_path, algorithm={"mismatch": "mask", "mismatch_level": "sequence", "tis_cap": 2.0,
                                                   "loss": {"beta": 0.0}}))
    metrics = learner.train_step(_batch_with_offsets(learner, OFFSETS))
    # sequence ratios: e^2, e^1, e^-1, 1: the first two exceed 2, their 10 tokens leave the loss
    assert metrics["mismatch/masked_fraction"] == pytest.approx(10 / 20)


def test_a_frozen_router_stays_put_while_the_rest_trains(tmp_path):
    learner = Learner(_recipe(tmp_path, train={"freeze_router": True}, optim={"lr": 1e-2}))
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    learner.train_step(_batch_with_offsets(learner, torch.zeros(4, 5)))
    after = learner.model.state_dict()
    gates = [k for k in before if k.endswith("mlp.gate.weight")]
    assert gates and all(torch.equal(before[k], after[k]) for k in gates)
    assert not torch.equal(before["model.layers.1.mlp.experts.gate_up_proj"],
                           after["model.layers.1.mlp.experts.gate_up_proj"])
