"""Decoding Llama-family causal LMs (Llama, Mistral, Qwen2: SmolLM2 among them) over a
preallocated KV cache, for the rollout engine.

transformers' `generate` grows a dynamic cache and rebuilds masks and positions every step; this
decoder reuses the model's own modules (norms, rotary embedding, weights) but runs a lean step:
one fused QKV matmul and one fused gate/up matmul per layer (built from the model's weights at
load and on every weight update), keys and values written in place into (L, B, H_kv, S, D)
buffers, and PyTorch's scaled-dot-product attention with grouped-query heads. Rows may be
left-padded (`valid`); positions count only real tokens. Tests hold its logits equal to the
model's own forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED = ("llama", "mistral", "qwen2")


@dataclass
class KVCache:
    """keys/values: (L, B, H_kv, S, D); valid: (B, S) True = a real token is stored there."""

    keys: torch.Tensor
    values: torch.Tensor
    valid: torch.Tensor
    length: int = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    def select(self, rows: torch.Tensor) -> KVCache:
        return KVCache(self.keys[:, rows], self.values[:, rows], self.valid[rows], self.length)

    def repeat_rows(self, n: int) -> KVCache:
        return KVCache(self.keys.repeat_interleave(n, 1), self.values.repeat_interleave(n, 1),
                       self.valid.repeat_interleave(n, 0), self.length)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class LlamaDecoder:
    """Prefill and decode steps of a Llama-family model over a KVCache."""

    def __init__(self, model: nn.Module):
        cfg = model.config
        if cfg.model_type not in SUPPORTED:
            raise ValueError(f"LlamaDecoder supports {SUPPORTED}, got {cfg.model_type!r}")
        self.model = model
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.refresh()

    def refresh(self) -> None:
        """(Re)build the fused weights from the model's current parameters."""
        self.fused = []
        with torch.no_grad():
            for layer in self.model.model.layers:
                a, m = layer.self_attn, layer.mlp
                qkv_w = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
                biases = [p.bias for p in (a.q_proj, a.k_proj, a.v_proj)]
                qkv_b = torch.cat(biases) if all(b is not None for b in biases) else None
                gate_up = torch.cat([m.gate_proj.weight, m.up_proj.weight])
                self.fused.append((qkv_w, qkv_b, gate_up))

    def allocate(self, batch: int, max_len: int) -> KVCache:
        w = self.model.model.embed_tokens.weight
        shape = (len(self.model.model.layers), batch, self.n_kv, max_len, self.head_dim)
        return KVCache(torch.zeros(shape, dtype=w.dtype, device=w.device),
                       torch.zeros(shape, dtype=w.dtype, device=w.device),
                       torch.zeros(batch, max_len, dtype=torch.bool, device=w.device))

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, cache: KVCache, valid: torch.Tensor | None = None,
                last_only: bool = False) -> torch.Tensor:
        """Run T new tokens per row (B, T); logits (B, T, V), or (B, 1, V) if last_only."""
        model = self.model
        b, t = input_ids.shape
        start = cache.length
        if start + t > cache.capacity:
            raise ValueError(f"KV cache holds {cache.capacity} tokens; {start + t} requested")
        if valid is None:
            valid = torch.ones(b, t, dtype=torch.bool, device=input_ids.device)
        seen = cache.valid[:, :start].sum(1, keepdim=True)
        positions = (seen + valid.long().cumsum(1) - 1).clamp(min=0)
        cache.valid[:, start : start + t] = valid
        keys_valid = cache.valid[:, : start + t]
        causal = torch.arange(start + t, device=input_ids.device).unsqueeze(0) <= (
            start + torch.arange(t, device=input_ids.device)).unsqueeze(1)
        allowed = (causal.unsqueeze(0) & keys_valid.unsqueeze(1)).unsqueeze(1)  # (B, 1, T, S)
        allowed = allowed | ~allowed.any(-1, keepdim=True)  # padded query rows: attend anywhere, no NaN

        x = model.model.embed_tokens(input_ids)
        cos, sin = model.model.rotary_emb(x, positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, D)
        h, kv, d = self.n_heads, self.n_kv, self.head_dim
        for i, layer in enumerate(model.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            qkv_w, qkv_b, gate_up = self.fused[i]
            qkv = F.linear(layer.input_layernorm(x), qkv_w, qkv_b)
            q, k, v = qkv.split([h * d, kv * d, kv * d], dim=-1)
            q = q.view(b, t, h, d).transpose(1, 2)
            k = k.view(b, t, kv, d).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            cache.keys[i, :, :, start : start + t] = k
            cache.values[i, :, :, start : start + t] = v.view(b, t, kv, d).transpose(1, 2)
            keys, values = cache.keys[i, :, :, : start + t], cache.values[i, :, :, : start + t]
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed, enable_gqa=kv != h)
            x = x + attn.o_proj(out.transpose(1, 2).reshape(b, t, h * d))
            gate, up = F.linear(layer.post_attention_layernorm(x), gate_up).chunk(2, dim=-1)
            x = x + mlp.down_proj(mlp.act_fn(gate) * up)
        cache.length += t
        if last_only:
            x = x[:, -1:]
        return model.lm_head(model.model.norm(x))
