"""Shared fixtures: small DeepSeek-V2 configs and models built on the CPU in fp32."""

from __future__ import annotations

import pytest
import torch
from transformers import DeepseekV2Config

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    """Trainers under test may set their own thread count; every test starts from one thread, so
    numerical tolerances do not depend on which tests ran before on the same worker."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


def small_config(**overrides) -> DeepseekV2Config:
    """A 2-layer MoE + MLA config (one dense layer, one MoE layer) with q compression."""
    args = dict(
        vocab_size=128, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=4, q_lora_rank=48, kv_lora_rank=32,
        qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        n_routed_experts=8, n_shared_experts=2, num_experts_per_tok=2, first_k_dense_replace=1,
        topk_method="group_limited_greedy", n_group=4, topk_group=2, routed_scaling_factor=1.0,
        max_position_embeddings=512, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    args.update(overrides)
    return DeepseekV2Config(**args)


@pytest.fixture
def config() -> DeepseekV2Config:
    return small_config()


@pytest.fixture
def local_ray():
    """A local two-CPU Ray cluster for one test."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()
