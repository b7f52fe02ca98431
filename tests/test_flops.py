"""Model FLOPs for MFU (policy/flops.py), counted by hand from the configs; the per-step figures
reach the GRPO and SFT logs."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from policy.flops import FlopSpec, flop_spec, mfu_metrics, packed_rows_flops, scored_rows_flops
from policy.load import load_policy


def test_the_tiny_deepseek_counts_top_k_of_its_routed_experts():
    c = load_policy("tiny")[0].config
    h, heads = c.hidden_size, c.num_attention_heads
    attention = (h * c.q_lora_rank + c.q_lora_rank * heads * (c.qk_nope_head_dim + c.qk_rope_head_dim)
                 + h * (c.kv_lora_rank + c.qk_rope_head_dim)
                 + c.kv_lora_rank * heads * (c.qk_nope_head_dim + c.v_head_dim) + heads * c.v_head_dim * h)
    dense = 3 * h * c.intermediate_size
    moe = (c.n_routed_experts * h  # the router
           + c.num_experts_per_tok * 3 * h * c.moe_intermediate_size  # 4 of the 16 routed experts
           + 3 * h * c.n_shared_experts * c.moe_intermediate_size)
    layers = c.num_hidden_layers
    expected = layers * attention + dense + (layers - 1) * moe + c.vocab_size * h  # untied head; no input embedding
    spec = flop_spec(load_policy("tiny")[0])
    assert spec == FlopSpec(expected, 4, 4, 48, 32)
    total = sum(p.numel() for p in load_policy("tiny")[0].parameters() if p.dim() >= 2)
    assert spec.activated_params < total - c.vocab_size * h  # the routed experts really were cut


def test_a_tied_llama_counts_its_head_once_and_its_gqa_projections_as_they_are():
    config = LlamaConfig(vocab_size=264, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)
    spec = flop_spec(LlamaForCausalLM(config))
    per_layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 96
    assert spec == FlopSpec(2 * per_layer + 264 * 64, 2, 4, 16, 16)


def test_forward_flops_by_hand():
    spec = FlopSpec(10, layers=2, heads=3, qk_dim=4, v_dim=5)
    # (0, 3): 3 tokens attending to 1, 2, 3 positions; (3, 2): 2 tokens over a 3-token cache attend to 4 and 5
    # 2 * 10 * 5 tokens + 2 * 2 * 3 * 9 per attended position * (6 + 9)
    assert spec.forward([(0, 3), (3, 2)]) == 100 + 108 * 15
    ids = torch.tensor([[0, 7, 8, 1, 2], [0, 7, 8, 3, 0], [5, 6, 9, 4, 4]])
    mask = torch.tensor([[0, 1, 1, 1, 1], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    # prompts: [7, 8] twice (run once) and [5, 6, 9]; completions of 2, 1 and 2 tokens over them
    assert scored_rows_flops(spec, ids, mask, 2) == spec.forward([(0, 2), (0, 3), (2, 2), (2, 1), (3, 2)])
    packed = torch.tensor([[0, 0, 0, 1, 1, -1], [0, 0, 0, 0, 0, 0]])
    assert packed_rows_flops(spec, packed) == spec.forward([(0, 3), (0, 2), (0, 6)])
    assert mfu_metrics(2e12, 2.0, 4e12, "perf/") == {"perf/tflops": 1.0, "perf/mfu": 0.25}


def test_grpo_and_sft_log_the_learners_mfu_every_step(tmp_path):
    from grpo import driver
    from tests.test_grpo_driver import _recipe

    driver.run(_recipe(tmp_path, "grpo", log={"every": 1, "progress": False, "tensorboard": False,
                                              "peak_tflops": 0.5}))
    steps = [json.loads(line) for line in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()
             if '"reward/mean"' in line]
    assert len(steps) == 3
    for s in steps:
        assert 0 < s["perf/learner_mfu"] < 1 and s["perf/learner_mfu"] == pytest.approx(s["perf/learner_tflops"] / 0.5)


def test_sft_logs_mfu_through_the_cli(tmp_path):
    from deepalign.cli import main

    main(["sft", "recipes/demo/sft.yaml", "policy.name=tiny", f"train.output_dir={tmp_path / 'sft'}",
          "train.max_steps=2", "data.num_examples=200", "train.threads=1", "log.every=1", "log.progress=false",
          "log.peak_tflops=0.5", "train.save_final=false"])
    events = tmp_path / "sft" / "tensorboard"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events))
    acc.Reload()
    mfu, tflops = acc.Scalars("perf/mfu"), acc.Scalars("perf/tflops")
    assert len(mfu) == 2 and all(0 < m.value < 1 and m.value == pytest.approx(t.value / 0.5, rel=1e-5)
                                 for m, t in zip(mfu, tflops, strict=True))
