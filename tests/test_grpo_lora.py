"""LoRA GRPO on the tiny DeepSeek-V2 policy, adapters on attention and on the routed experts: the
reference is the base (adapters disabled, no second copy), only adapters train, the engine holds
base + BA (peft's own merge as the reference), a run resumes exactly, and two FSDP2 learners on
Ray give one learner's result."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from grpo.batch import GRPOBatch
from grpo.driver import run
from grpo.workers import LearnerWorker
from policy.load import load_policy
from policy.logprobs import completion_logprobs
from policy.lora import adapters_disabled
from tests.test_grpo_driver import _recipe

LORA = {"enabled": True, "r": 4, "alpha": 8, "routed_experts": True}


def _batch(seed: int = 0) -> GRPOBatch:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 200, (4, 9), generator=gen)
    return GRPOBatch(ids, torch.ones(4, 9, dtype=torch.bool), torch.ones(4, 4, dtype=torch.bool),
                     torch.tensor([1.0, -1.0, 0.5, -0.5]), torch.zeros(4, 4))


def _logp(model, batch):
    model.eval()
    with torch.no_grad():
        return completion_logprobs(model, batch.input_ids, batch.attention_mask, 4, share_prompts=False)[0]


def test_lora_learner_reference_is_the_base_and_the_engine_gets_base_plus_ba(tmp_path):
    learner = LearnerWorker(_recipe(tmp_path, lora=LORA, optim={"lr": 1e-2}))
    assert learner.reference is None and learner.shared_reference  # no second copy of the weights
    assert "LoRA r=4" in learner.describe()
    base = load_policy("tiny")[0]
    base.set_attn_implementation("eager")  # the learner's kernel on CPU
    for step in range(3):
        learner.train_step(_batch(step))
    learner.model.eval()
    # only the adapters moved: every base tensor, the experts' included, is the base's
    state = {k: v for k, v in learner.model.state_dict().items() if ".lora_" not in k}
    base_state = base.state_dict()
    for key, value in state.items():
        name = key.removeprefix("base_model.model.").replace(".base_layer", "")
        assert torch.equal(value, base_state[name]), name
    batch = _batch(9)
    with adapters_disabled(learner.model):
        reference = _logp(learner.model, batch)
    # the same weights through peft's wrapped modules: bitwise on AVX2 CPUs, within 1e-4 on AMX ones (oneDNN
    # picks other GEMM kernels for the wrapped shapes)
    assert (reference - _logp(base, batch)).abs().max() < 1e-3
    assert (_logp(learner.model, batch) - reference).abs().max() > 1e-2  # the adapters did learn
    # what the engines get: base + (alpha / r) B A, checked against peft's merge_and_unload
    merged = learner.full_state_dict()
    peft_merged = copy.deepcopy(learner.model).merge_and_unload().state_dict()
    assert merged.keys() == base_state.keys() == peft_merged.keys()
    for name in merged:
        torch.testing.assert_close(merged[name], peft_merged[name], rtol=1e-6, atol=1e-7, msg=name)
    assert not torch.equal(merged["model.layers.1.mlp.experts.gate_up_proj"],
                           base_state["model.layers.1.mlp.experts.gate_up_proj"])
    learner.start_engine()  # hybrid: a plain copy of the base; the sync loads the merged weights
    assert learner.sync_engine(1) < 1e-4
    engine_state = learner.engine.model.state_dict()
    assert all(torch.equal(engine_state[k], merged[k]) for k in merged)


def _adapter(folder):
    return load_file(folder / "adapter" / "adapter_model.safetensors")


def test_lora_grpo_resume_is_exact(tmp_path):
    lora = {"lora": LORA, "optim": {"lr": 1e-2}}
    straight = run(_recipe(tmp_path, "a", **lora))
    run(_recipe(tmp_path, "b", train={"steps": 2, "save_every": 1}, **lora))
    resumed = run(_recipe(tmp_path, "b", train={"steps": 3, "save_every": 1}, **lora))
    a, b = _adapter(straight), _adapter(resumed)
    assert a.keys() == b.keys() and any("experts" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((straight / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["target_parameters"]
    merged, base = load_policy(str(straight))[0].state_dict(), load_policy("tiny")[0].state_dict()
    assert not torch.equal(merged["model.layers.0.self_attn.o_proj.weight"],
                           base["model.layers.0.self_attn.o_proj.weight"])


pytest.importorskip("ray")  # the local_ray fixture is tests/conftest.py's


def test_lora_with_two_fsdp2_learners_equals_one(tmp_path, local_ray, capfd):
    common = {"lora": LORA, "optim": {"lr": 1e-2}, "train": {"steps": 2, "threads": 1}}
    one = run(_recipe(tmp_path, "one", **common))
    two = run(_recipe(tmp_path, "two", ray={"enabled": True, "learners": 2}, **common))
    assert "learners: 2 processes, FSDP2, LoRA r=4" in capfd.readouterr().out  # experts adapted: no EP
    a, b = _adapter(one), _adapter(two)
    assert a.keys() == b.keys()
    moved = 0
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-4, msg=key)  # Adam: near-0 grads
        moved += int(a[key].abs().max() > 0 and "lora_B" in key)
    assert moved > len(a) // 4  # B starts at zero: the comparison is over trained adapters
