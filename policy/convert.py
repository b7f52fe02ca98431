"""Dense Llama-family model (SmolLM2) -> the DeepSeek-V2 architecture, weights only.

Owns the model half of `deepalign policy convert` (the command's steps live in convert/run.py):
the target `DeepseekV2Config` (`ConvertShape`: the shapes to convert to), calibration (inputs of
every attention and FFN on the dense model's own chats), each layer's conversion (attention -> MLA:
policy/convert_mla.py; FFN -> DeepSeekMoE: policy/convert_moe.py; the first
`first_k_dense_replace` FFNs stay dense) and the converted `DeepseekV2Policy`.

The conversion is deterministic: the PCA, SVD, k-means and least squares run in float64 / fixed
order. Embeddings and the LM head are untied in the converted model (vLLM's DeepSeek-V2 loader
reads a separate lm_head).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DeepseekV2Config

from policy.convert_mla import AttentionShape, convert_attention
from policy.convert_moe import MoEShape, convert_ffn
from policy.model import DeepseekV2Policy
from policy.moe import MoEOptions


@dataclass
class ConvertShape:
    """The converted model's shapes. kv_lora_rank 512 + qk_rope_head_dim 64 (= the dense head_dim)
    is the latent vLLM's CPU MLA backend serves. The dense FFN's intermediate_size must equal
    (n_shared_experts + n_routed_experts) * moe_intermediate_size; the first
    `first_k_dense_replace` layers keep their dense FFN."""

    kv_lora_rank: int = 512
    moe_intermediate_size: int = 128
    n_shared_experts: int = 4
    n_routed_experts: int = 8
    num_experts_per_tok: int = 4
    first_k_dense_replace: int = 1
    router_logit_std: float = 0.1
    expert_balance_alpha: float = 0.001



def deepseek_config(dense_config, shape: ConvertShape) -> DeepseekV2Config:
    c = dense_config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    attn = AttentionShape(c.num_attention_heads, c.num_key_value_heads, head_dim, shape.kv_lora_rank)
    rope = dict(getattr(c, "rope_parameters", None) or {"rope_type": "default", "rope_theta": c.rope_theta})
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope_type {rope['rope_type']!r}: only plain RoPE converts (the decoupled key takes it "
                         "as is)")
    return DeepseekV2Config(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        moe_intermediate_size=shape.moe_intermediate_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, num_key_value_heads=c.num_attention_heads,
        q_lora_rank=None, kv_lora_rank=shape.kv_lora_rank, qk_nope_head_dim=attn.nope_dim,
        qk_rope_head_dim=head_dim, v_head_dim=head_dim, n_routed_experts=shape.n_routed_experts,
        n_shared_experts=shape.n_shared_experts, num_experts_per_tok=shape.num_experts_per_tok,
        first_k_dense_replace=shape.first_k_dense_replace, topk_method="greedy", n_group=1, topk_group=1,
        routed_scaling_factor=float(shape.n_routed_experts), norm_topk_prob=False,
        max_position_embeddings=c.max_position_embeddings, rope_parameters=rope, rms_norm_eps=c.rms_norm_eps,
        hidden_act=c.hidden_act, tie_word_embeddings=False, bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id, pad_token_id=getattr(c, "pad_token_id", None), attention_bias=False,
    )


@torch.no_grad()
def calibrate(model, rows: list[list[int]], max_tokens: int) -> list[dict[str, torch.Tensor]]:
    """Per layer: `h_hat` (T, d), the attention norm's input over its rms, and `ffn_in` (T, d), the
    FFN's input, over up to max_tokens tokens of the rows (each row run on its own: no padding)."""
    layers = model.model.layers
    store = [{"h_hat": [], "ffn_in": []} for _ in layers]
    hooks = []
    for i, layer in enumerate(layers):
        eps = layer.input_layernorm.variance_epsilon
        hooks.append(layer.input_layernorm.register_forward_hook(
            lambda m, args, out, i=i, eps=eps: store[i]["h_hat"].append(
                (args[0] * torch.rsqrt(args[0].pow(2).mean(-1, keepdim=True) + eps))[0].float())))
        hooks.append(layer.mlp.register_forward_hook(
            lambda m, args, out, i=i: store[i]["ffn_in"].append(args[0][0].float())))
    taken = 0
    try:
        for ids in rows:
            if taken >= max_tokens:
                break
            model(torch.tensor([ids[: max_tokens - taken]]))
            taken += min(len(ids), max_tokens - taken)
    finally:
        for h in hooks:
            h.remove()
    return [{k: torch.cat(v) for k, v in s.items()} for s in store]


def _layer_weights(dense_layer, stats, attn: AttentionShape, moe: MoEShape | None, seed: int) -> tuple[dict, dict]:
    a = dense_layer.self_attn
    mla = convert_attention(a.q_proj.weight, a.k_proj.weight, a.v_proj.weight,
                            dense_layer.input_layernorm.weight, stats["h_hat"], attn)
    w = {"self_attn.q_proj.weight": mla.q_proj, "self_attn.kv_a_proj_with_mqa.weight": mla.kv_a_proj_with_mqa,
         "self_attn.kv_a_layernorm.weight": torch.ones(attn.kv_lora_rank),
         "self_attn.kv_b_proj.weight": mla.kv_b_proj, "self_attn.o_proj.weight": a.o_proj.weight,
         "input_layernorm.weight": dense_layer.input_layernorm.weight,
         "post_attention_layernorm.weight": dense_layer.post_attention_layernorm.weight}
    report = {"unrotated_key_share": mla.unrotated_key_share, "latent_norm_unmeasured_share": mla.unmeasured_share}
    mlp = dense_layer.mlp
    if moe is None:
        w.update({f"mlp.{n}.weight": getattr(mlp, n).weight for n in ("gate_proj", "up_proj", "down_proj")})
        return w, report
    ffn = convert_ffn(mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight, stats["ffn_in"], moe, seed)
    w.update({"mlp.gate.weight": ffn.router, "mlp.experts.gate_up_proj": ffn.gate_up_proj,
              "mlp.experts.down_proj": ffn.down_proj, "mlp.shared_experts.gate_proj.weight": ffn.shared_gate,
              "mlp.shared_experts.up_proj.weight": ffn.shared_up,
              "mlp.shared_experts.down_proj.weight": ffn.shared_down})
    report.update({"moe_relative_error": ffn.relative_error, "router_recall": ffn.router_recall})
    return w, report


@torch.no_grad()
def convert_model(dense, rows: list[list[int]], shape: ConvertShape, calibration_tokens: int = 8192,
                  seed: int = 0, progress=None) -> tuple[DeepseekV2Policy, list[dict]]:
    """The converted DeepseekV2Policy (fp32, eval mode) and a per-layer report."""
    config = deepseek_config(dense.config, shape)
    stats = calibrate(dense, rows, calibration_tokens)
    attn = AttentionShape(config.num_attention_heads, dense.config.num_key_value_heads, config.v_head_dim,
                          shape.kv_lora_rank)
    moe = MoEShape(shape.moe_intermediate_size, shape.n_shared_experts, shape.n_routed_experts,
                   shape.num_experts_per_tok, shape.router_logit_std)
    state = {"model.embed_tokens.weight": dense.model.embed_tokens.weight,
             "model.norm.weight": dense.model.norm.weight, "lm_head.weight": dense.lm_head.weight.clone()}
    reports = []
    for i, layer in enumerate(dense.model.layers):
        w, report = _layer_weights(layer, stats[i], attn, moe if i >= shape.first_k_dense_replace else None, seed + i)
        state.update({f"model.layers.{i}.{k}": v for k, v in w.items()})
        reports.append(report)
        if progress is not None:
            progress(i + 1)
    torch.manual_seed(seed)
    model = DeepseekV2Policy(config, MoEOptions(expert_balance_alpha=shape.expert_balance_alpha))
    model.load_state_dict({k: v.detach().float().contiguous() for k, v in state.items()}, strict=True)
    return model.eval(), reports
