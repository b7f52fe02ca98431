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

Single-token absorbed steps (the rollout engine's decode loop) take a lean path, `_DecodeLayer`:
at construction and on `refresh()` (after a weight update) each layer's weights are fused once
([W_DQ; W_DKV; W_KR] as one matmul, W_UK and W_UV as contiguous per-head blocks, gate and up
as one matmul; large matrices in oneDNN's packed layout, policy/packed_linear.py), and a step is
a handful of large operators: one `baddbmm` scores a query [q~ | q^R] against the cached
[c^KV | k^R] with the mask as its additive term, one `bmm` reads the latent out, norms are
`F.rms_norm`, and MoE layers run every routed and shared expert in two matmuls
(`_stack_experts`).
Same numbers as the general path (tests hold decode logits to transformers' forward at 1e-5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from policy.moe import DeepSeekMoE
from policy.packed_linear import PackedLinear
from policy.routing import select_experts


@dataclass
class LatentKVCache:
    """kv: (L, B, S, d_c + d_r): per slot the post-norm c^KV followed by the post-RoPE k^R (the
    576-element entry of the released models), stored together so one matmul scores a query
    against both; valid: (B, S) bool, True = a real token is stored there; length: slots filled."""

    kv: torch.Tensor
    valid: torch.Tensor
    kv_lora_rank: int
    length: int = 0

    @classmethod
    def allocate(cls, config, batch: int, max_len: int, dtype: torch.dtype, device) -> LatentKVCache:
        width = config.kv_lora_rank + config.qk_rope_head_dim
        return cls(
            kv=torch.zeros(config.num_hidden_layers, batch, max_len, width, dtype=dtype, device=device),
            valid=torch.zeros(batch, max_len, dtype=torch.bool, device=device),
            kv_lora_rank=config.kv_lora_rank,
        )

    @property
    def latent(self) -> torch.Tensor:
        """(L, B, S, d_c) view: c^KV."""
        return self.kv[..., : self.kv_lora_rank]

    @property
    def rope_key(self) -> torch.Tensor:
        """(L, B, S, d_r) view: k^R."""
        return self.kv[..., self.kv_lora_rank :]

    @property
    def capacity(self) -> int:
        return self.kv.shape[2]

    def bytes_used(self) -> int:
        """Bytes of cache holding the tokens stored so far (all rows)."""
        return self.kv[:, :, :1].numel() * self.kv.element_size() * self.length

    def select(self, rows: torch.Tensor) -> LatentKVCache:
        return LatentKVCache(self.kv[:, rows], self.valid[rows], self.kv_lora_rank, self.length)

    def repeat_rows(self, n: int) -> LatentKVCache:
        return LatentKVCache(self.kv.repeat_interleave(n, 1), self.valid.repeat_interleave(n, 0), self.kv_lora_rank,
                             self.length)


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


@dataclass
class _DecodeLayer:
    """One layer's weights for the single-token absorbed step, fused from the model's parameters."""

    attn: nn.Module
    mlp: nn.Module
    norm_in: nn.Module
    norm_post: nn.Module
    w_a: PackedLinear  # rows [W_DQ; W_DKV; W_KR] (or [W_DKV; W_KR] when queries are not compressed)
    w_q: PackedLinear  # W_UQ (after the q_a norm), or W_Q when queries are not compressed
    w_uk: torch.Tensor  # (H, d_nope, d_c)
    w_uv: torch.Tensor  # (H, d_c, d_v)
    w_o: PackedLinear
    gate_up: PackedLinear | None = None  # a dense MLP's [W_gate; W_up]
    down: PackedLinear | None = None  # a dense MLP's W_down
    router: torch.Tensor | None = None  # DeepSeekMoE gate weight in fp32 (routing runs in fp32)
    experts_in: PackedLinear | None = None  # ((E + S) * 2I, D): each expert's [W_gate; W_up], shared ones last
    experts_out: PackedLinear | None = None  # (D, (E + S) * I): every expert's W_down side by side
    always_on: torch.Tensor | None = None  # (E + S,) fp32: 0 for routed experts, 1 for shared ones

    @classmethod
    def build(cls, layer: nn.Module) -> _DecodeLayer:
        a, mlp = layer.self_attn, layer.mlp
        down = [a.q_a_proj.weight] if a.q_lora_rank is not None else []
        w_kv_b = a.kv_b_proj.weight.view(a.num_heads, a.qk_nope_head_dim + a.v_head_dim, a.kv_lora_rank)
        w = cls(
            attn=a, mlp=mlp, norm_in=layer.input_layernorm, norm_post=layer.post_attention_layernorm,
            w_a=PackedLinear(torch.cat(down + [a.kv_a_proj_with_mqa.weight])),
            w_q=PackedLinear.of(a.q_b_proj if a.q_lora_rank is not None else a.q_proj),
            w_uk=w_kv_b[:, : a.qk_nope_head_dim].contiguous(),
            w_uv=w_kv_b[:, a.qk_nope_head_dim :].transpose(1, 2).contiguous(),
            w_o=PackedLinear.of(a.o_proj),
        )
        if isinstance(mlp, DeepSeekMoE):
            w.router = mlp.gate.weight.float()
            experts_in, experts_out, w.always_on = _stack_experts(mlp)
            w.experts_in, w.experts_out = PackedLinear(experts_in), PackedLinear(experts_out.t())
        elif hasattr(mlp, "gate_proj") and mlp.gate_proj.bias is None:
            w.gate_up = PackedLinear(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]))
            w.down = PackedLinear.of(mlp.down_proj)
        return w


def _stack_experts(moe: DeepSeekMoE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Routed and shared experts as two matrices, so a decode step runs every expert in two matmuls.

    The shared MLP (width S * I, no bias) is split into S experts of width I: its units are
    independent until W_down sums them, so it is the same function. They get a fixed weight 1."""
    gate_up, down = moe.experts.gate_up_proj, moe.experts.down_proj  # (E, 2I, D), (E, D, I)
    n_routed, width, hidden = gate_up.shape[0], down.shape[2], gate_up.shape[2]
    shared = moe.shared_experts
    n_shared = shared.gate_proj.weight.shape[0] // width
    shared_in = torch.cat([shared.gate_proj.weight.view(n_shared, width, hidden),
                           shared.up_proj.weight.view(n_shared, width, hidden)], dim=1)
    shared_out = shared.down_proj.weight.t().reshape(n_shared, width, hidden)
    experts_in = torch.cat([gate_up, shared_in]).reshape(-1, hidden)
    experts_out = torch.cat([down.transpose(1, 2), shared_out]).reshape(-1, hidden)
    always_on = torch.cat([torch.zeros(n_routed), torch.ones(n_shared)]).to(gate_up.device)
    return experts_in, experts_out, always_on


def rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's RMSNorm module through `F.rms_norm` (one call; the module's forward is seven)."""
    return F.rms_norm(x, x.shape[-1:], norm.weight, norm.variance_epsilon)


def _absorbed_step(w: _DecodeLayer, x: torch.Tensor, freqs_cis: torch.Tensor, kv: torch.Tensor,
                   bias: torch.Tensor, slot: int) -> torch.Tensor:
    """x (B, D) one new token per row -> the layer's attention output (B, D); writes its cache slot.
    kv: this layer's (B, S_max, d_c + d_r) cache; bias (B, 1, slot + 1) additive mask."""
    a = w.attn
    b = x.shape[0]
    n_heads, d_nope, d_rope, d_c = a.num_heads, a.qk_nope_head_dim, a.qk_rope_head_dim, a.kv_lora_rank
    h = rms_norm(w.norm_in, x)
    down = w.w_a(h)
    if a.q_lora_rank is not None:
        q_a, c_kv, k_rope = down.split([a.q_lora_rank, d_c, d_rope], dim=-1)
        q = w.w_q(rms_norm(a.q_a_layernorm, q_a))
    else:
        c_kv, k_rope = down.split([d_c, d_rope], dim=-1)
        q = w.w_q(h)
    q_nope, q_rope = q.view(b, n_heads, d_nope + d_rope).split([d_nope, d_rope], dim=-1)
    rope = apply_rope(torch.cat([q_rope, k_rope.unsqueeze(1)], dim=1), freqs_cis)  # heads and the key at once
    kv[:, slot, :d_c] = rms_norm(a.kv_a_layernorm, c_kv)
    kv[:, slot, d_c:] = rope[:, n_heads]
    keys = kv[:, : slot + 1]  # (B, S, d_c + d_r)
    query = torch.cat([torch.bmm(q_nope.transpose(0, 1), w.w_uk).transpose(0, 1), rope[:, :n_heads]], dim=-1)
    scores = torch.baddbmm(bias, query, keys.transpose(1, 2), alpha=a.scaling)  # (B, H, S)
    probs = scores.softmax(dim=-1, dtype=torch.float32).to(x.dtype)
    latent = torch.bmm(probs, keys)[..., :d_c]  # (B, H, d_c); the k^R columns ride along unused
    out = torch.bmm(latent.transpose(0, 1), w.w_uv).transpose(0, 1).reshape(b, -1)
    return w.w_o(out)


def _mlp_step(w: _DecodeLayer, x: torch.Tensor) -> torch.Tensor:
    h = rms_norm(w.norm_post, x)
    mlp = w.mlp
    if w.gate_up is not None:
        gate, up = w.gate_up(h).chunk(2, dim=-1)
        return w.down(mlp.act_fn(gate) * up)
    if w.router is None:
        return mlp(h)
    # every routed and shared expert on every row: with a few rows per step most experts are hit
    # anyway, and two matmuls beat grouped matmuls over groups of one or two tokens
    scores = F.linear(h.float(), w.router).softmax(dim=-1)
    weights, indices = select_experts(scores, mlp.top_k, mlp.n_group, mlp.topk_group)
    if mlp.routing_sink is not None:  # the engine records its routing (routing replay)
        mlp.routing_sink.append(indices)
    mix = w.always_on.expand(h.shape[0], -1).scatter_add(1, indices, weights * mlp.routed_scaling_factor)
    gate, up = w.experts_in(h).view(h.shape[0], mix.shape[1], -1).chunk(2, dim=-1)
    mixed = mlp.experts.act_fn(gate) * up * mix.unsqueeze(-1).to(h.dtype)  # (B, E + S, I)
    return w.experts_out(mixed.flatten(1))


class MLADecoder:
    """Prefill and decode steps of a DeepSeek-V2 causal LM over a LatentKVCache."""

    copies_cache = True  # its cache has repeat_rows / select

    def __init__(self, model: nn.Module, absorbed: bool = True):
        if getattr(model.config, "model_type", None) != "deepseek_v2":
            raise ValueError(f"MLADecoder needs a deepseek_v2 model, got {model.config.model_type!r}")
        self.model = model
        self.absorbed = absorbed
        self.refresh()

    def refresh(self) -> None:
        """(Re)build the single-token step's fused weights from the model's current parameters."""
        with torch.no_grad():
            self.layers = [_DecodeLayer.build(layer) for layer in self.model.model.layers] if self.absorbed else None
            self.head = PackedLinear.of(self.model.lm_head)

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

        x = model.model.embed_tokens(input_ids)
        freqs_cis = model.model.rotary_emb(x, positions)
        if t == 1 and self.layers is not None:
            x = self._step(x[:, 0], freqs_cis, cache).unsqueeze(1)
        else:
            for moe in getattr(model, "moe_layers", lambda: [])():
                moe.context = None  # eval routing: no dropping, default per-row context
            allowed = attention_mask(cache, cache.length, t)  # the same for every layer
            for i, layer in enumerate(model.model.layers):
                x = x + mla_attention(layer.self_attn, layer.input_layernorm(x), freqs_cis, cache, i, self.absorbed,
                                      allowed)
                x = x + layer.mlp(layer.post_attention_layernorm(x))
        cache.length += t
        if last_only:
            x = x[:, -1:]
        return self.head(rms_norm(model.model.norm, x))

    def _step(self, x: torch.Tensor, freqs_cis: torch.Tensor, cache: LatentKVCache) -> torch.Tensor:
        slot = cache.length
        seen = cache.valid[:, : slot + 1]
        bias = torch.zeros(seen.shape, dtype=x.dtype, device=x.device).masked_fill_(~seen, torch.finfo(x.dtype).min)
        bias = bias.unsqueeze(1)  # (B, 1, S), shared by every head and layer
        for i, w in enumerate(self.layers):
            x = x + _absorbed_step(w, x, freqs_cis, cache.kv[i], bias, slot)
            x = x + _mlp_step(w, x)
        return x
