"""The vLLM engine against our own on the same checkpoint (GPU + vLLM only; skipped elsewhere)."""

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (GPU-only extra; CPU CI never runs it)")
if not torch.cuda.is_available():
    pytest.skip("vLLM needs a CUDA GPU", allow_module_level=True)


def test_vllm_logprobs_match_the_learner(tmp_path):
    from data_tools.chat import encode_prompts
    from grpo.batch import build_batch
    from policy.load import load_policy
    from policy.logprobs import completion_logprobs
    from rollout.engine import SamplingConfig
    from rollout.vllm_engine import VLLMEngine

    model, tokenizer = load_policy("tiny")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    engine = VLLMEngine(str(tmp_path), dtype="float32")
    prompts = encode_prompts(tokenizer, ["What is 2 + 3?"])
    rollout = engine.generate(prompts, 4, SamplingConfig(max_new_tokens=8), seed=0)
    batch = build_batch(rollout, torch.zeros(4), tokenizer.pad_token_id)
    logp, _ = completion_logprobs(model.cuda(), batch.input_ids.cuda(), batch.attention_mask.cuda(),
                                  batch.completion_width)
    assert torch.allclose(logp.cpu()[batch.completion_mask], batch.rollout_logp[batch.completion_mask], atol=1e-2)
    engine.load_weights(model.state_dict(), 1)
    assert engine.version == 1
