"""Decoding a DeepSeek-V2 model with a preallocated latent KV cache, absorbed or naive.

Owns: `LatentKVCache` (per layer only c^KV after kv_a_layernorm and k^R after RoPE:
kv_lora_rank + qk_rope_head_dim elements per token per layer, 576 for the released models) and
`MLADecoder`, which runs the layers of a transformers `DeepseekV2ForCausalLM` (or our
`DeepseekV2Policy`) over that cache.

Two attention paths over the same cache (reference §1.5):
- absorbed (decode): W_UK is folded into the query (q~ = W_UK^T q^C, 512-d per head), scores
  are q~.c^KV + q^R.k^R, the output is W_UV applied to the probability-weighted latent. The
  cache is never expanded: MQA with one 576-d key and a 512-d value.
- naive (reference): the cache is expanded through kv_b_proj into per-head keys and values,
  which is what transformers does at every decode step.
Both are exact; tests hold them equal within 1e-5 in fp32. Like V3's reference code we never
pre-multiply W_UK^T W_UQ or W_O W_UV.

Rows may be left-padded: `valid` marks real tokens; positions count only real tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LatentKVCache:
    """latent: (L, B, S, d_c) post-norm c^KV; rope_key: (L, B, S, d_r) post-RoPE k^R;
    valid: (B, S) bool, True = a real token is stored there; length: slots filled so far."""

    latent: torch.Tensor
    rope_key: torch.Tensor
    valid: torch.Tensor
    length: int = 0

    @classmethod
    def allocate(cls, config, batch: int, max_len: int, dtype: torch.dtype, device) -> LatentKVCache:
        layers = config.num_hidden_layers
        return cls(
            latent=torch.zeros(layers, batch, max_len, config.kv_lora_rank, dtype=dtype, device=device),
            rope_key=torch.zeros(layers, batch, max_len, config.qk_rope_head_dim, dtype=dtype, device=device),
            valid=torch.zeros(batch, max_len, dtype=torch.bool, device=device),
        )

    @property
    def capacity(self) -> int:
        return self.latent.shape[2]

    def bytes_used(self) -> int:
        """Bytes of cache holding the tokens stored so far (all rows)."""
        per_slot = (self.latent[:, :, :1].numel() + self.rope_key[:, :, :1].numel()) * self.latent.element_size()
        return per_slot * self.length


def apply_rope(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Interleaved-pair RoPE (as transformers/V3): x (..., d_r), freqs_cis broadcastable (..., d_r/2)."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * freqs_cis).flatten(-2).to(x.dtype)


def _queries(attn: nn.Module, h: torch.Tensor) -> torch.Tensor:
    if attn.q_lora_rank is None:
        return attn.q_proj(h)
    return attn.q_b_proj(attn.q_a_layernorm(attn.q_a_proj(h)))


def mla_attention(
    attn: nn.Module,
    h: torch.Tensor,
    freqs_cis: torch.Tensor,
    cache: LatentKVCache,
    layer: int,
    absorbed: bool,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """One MLA block over new tokens h (B, T, d); appends their latents to the cache.

    allowed (B, T, S) bool: which cached keys each new token may attend to (built here if None)."""
    b, t, _ = h.shape
    n_heads, d_nope, d_rope, d_v = attn.num_heads, attn.qk_nope_head_dim, attn.qk_rope_head_dim, attn.v_head_dim
    d_c = attn.kv_lora_rank
    start = cache.length

    q = _queries(attn, h).view(b, t, n_heads, d_nope + d_rope)
    q_nope, q_rope = q.split([d_nope, d_rope], dim=-1)
    c_kv, k_rope = attn.kv_a_proj_with_mqa(h).split([d_c, d_rope], dim=-1)
    c_kv = attn.kv_a_layernorm(c_kv)
    q_rope = apply_rope(q_rope, freqs_cis.unsqueeze(2))
    k_rope = apply_rope(k_rope, freqs_cis)

    cache.latent[layer, :, start : start + t] = c_kv
    cache.rope_key[layer, :, start : start + t] = k_rope
    latent = cache.latent[layer, :, : start + t]  # (B, S, d_c)
    rope_key = cache.rope_key[layer, :, : start + t]  # (B, S, d_r)

    w_kv_b = attn.kv_b_proj.weight.view(n_heads, d_nope + d_v, d_c)
    if absorbed:
        q_latent = torch.einsum("bthd,hdc->bhtc", q_nope, w_kv_b[:, :d_nope])
        scores = torch.einsum("bhtc,bsc->bhts", q_latent, latent)
    else:
        kv = attn.kv_b_proj(latent).view(b, -1, n_heads, d_nope + d_v)
        k_nope, values = kv.split([d_nope, d_v], dim=-1)
        scores = torch.einsum("bthd,bshd->bhts", q_nope, k_nope)
    scores = scores + torch.einsum("bthr,bsr->bhts", q_rope, rope_key)
    scores = scores.float() * attn.scaling

    if allowed is None:
        allowed = attention_mask(cache, start, t)
    scores = scores.masked_fill(~allowed.unsqueeze(1), torch.finfo(scores.dtype).min)
    probs = scores.softmax(dim=-1).to(h.dtype)

    if absorbed:
        out_latent = torch.einsum("bhts,bsc->bthc", probs, latent)
        out = torch.einsum("bthc,hdc->bthd", out_latent, w_kv_b[:, d_nope:])
    else:
        out = torch.einsum("bhts,bshd->bthd", probs, values)
    return attn.o_proj(out.reshape(b, t, n_heads * d_v))


def attention_mask(cache: LatentKVCache, start: int, t: int) -> torch.Tensor:
    """(B, T, S) bool: new token i (at slot start + i) sees valid cached slots up to its own."""
    device = cache.valid.device
    keys = torch.arange(start + t, device=device)
    causal = keys.unsqueeze(0) <= (start + torch.arange(t, device=device)).unsqueeze(1)  # (T, S)
    return causal.unsqueeze(0) & cache.valid[:, : start + t].unsqueeze(1)


class MLADecoder:
    """Prefill and decode steps of a DeepSeek-V2 causal LM over a LatentKVCache."""

    def __init__(self, model: nn.Module, absorbed: bool = True):
        if getattr(model.config, "model_type", None) != "deepseek_v2":
            raise ValueError(f"MLADecoder needs a deepseek_v2 model, got {model.config.model_type!r}")
        self.model = model
        self.absorbed = absorbed

    def allocate(self, batch: int, max_len: int) -> LatentKVCache:
        weight = self.model.model.embed_tokens.weight
        return LatentKVCache.allocate(self.model.config, batch, max_len, weight.dtype, weight.device)

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,
        cache: LatentKVCache,
        valid: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Run T new tokens per row (B, T) and return logits (B, T, V), or (B, 1, V) if last_only.

        valid (B, T) bool marks real tokens (False = left padding); default all real.
        """
        model = self.model
        b, t = input_ids.shape
        if cache.length + t > cache.capacity:
            raise ValueError(f"latent cache holds {cache.capacity} tokens; {cache.length + t} requested")
        if valid is None:
            valid = torch.ones(b, t, dtype=torch.bool, device=input_ids.device)
        seen = cache.valid[:, : cache.length].sum(1, keepdim=True)
        positions = (seen + valid.long().cumsum(1) - 1).clamp(min=0)
        cache.valid[:, cache.length : cache.length + t] = valid

        for moe in getattr(model, "moe_layers", lambda: [])():
            moe.context = None  # eval routing: no dropping, default per-row context
        x = model.model.embed_tokens(input_ids)
        freqs_cis = model.model.rotary_emb(x, positions)
        allowed = attention_mask(cache, cache.length, t)  # the same for every layer
        for i, layer in enumerate(model.model.layers):
            x = x + mla_attention(layer.self_attn, layer.input_layernorm(x), freqs_cis, cache, i, self.absorbed,
                                  allowed)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        cache.length += t
        if last_only:
            x = x[:, -1:]
        return model.lm_head(model.model.norm(x))
