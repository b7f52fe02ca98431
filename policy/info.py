"""Parameter and KV-cache figures of a policy, counted on the meta device (no memory used).

activated_params follows the paper's count: every parameter a token computes with. Per MoE
layer only K_r of the N_r routed experts count; shared experts, attention, norms and the output
head count; the input embedding table does not (a lookup, not a matmul) unless it is tied to the
output head. This reproduces the published figures: V2 20.9B (paper 21B), V2-Lite 2.45B (2.4B).

KV cache per token per layer: DeepSeek-V2 caches kv_lora_rank + qk_rope_head_dim elements
(reference §1.4); the MHA equivalent is 2 * n_h * d_h with d_h = qk_nope_head_dim. Other causal
LMs cache 2 * n_kv_heads * head_dim.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM


def _meta_model(config):
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def policy_figures(config) -> dict[str, int | float]:
    """The figures `deepalign policy info` prints, in order."""
    model = _meta_model(config)
    total = sum(p.numel() for p in model.parameters())
    inactive = 0
    layers = config.num_hidden_layers
    if config.model_type == "deepseek_v2":
        for layer in model.model.layers:
            experts = getattr(layer.mlp, "experts", None)
            if experts is not None:
                routed = experts.gate_up_proj.numel() + experts.down_proj.numel()
                inactive += routed * (1 - config.num_experts_per_tok / config.n_routed_experts)
        kv_per_layer = config.kv_lora_rank + config.qk_rope_head_dim
        mha_per_layer = 2 * config.num_attention_heads * config.qk_nope_head_dim
    else:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        kv_per_layer = 2 * kv_heads * head_dim
        mha_per_layer = 2 * heads * head_dim
    if not getattr(config, "tie_word_embeddings", False):
        inactive += model.get_input_embeddings().weight.numel()
    return {
        "model_type": config.model_type,
        "total_params": total,
        "activated_params": int(total - inactive),
        "kv_cache_elements_per_token_per_layer": kv_per_layer,
        "kv_cache_elements_per_token": kv_per_layer * layers,
        "mha_kv_cache_elements_per_token": mha_per_layer * layers,
        "kv_cache_vs_mha": round(kv_per_layer / mha_per_layer, 4),
    }


def human(n: float) -> str:
    """2.36e11 -> '236.0B'."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)
