"""Grouped-query attention (Llama) -> Multi-head Latent Attention (DeepSeek-V2), one layer's weights.

Owns the attention half of `deepalign policy convert` (policy/convert.py calls it per layer with
calibration statistics). Method, after TransMLA (Meng et al. 2025) and MHA2MLA (Ji et al. 2025):

1. RoPE layout. Llama rotates dims (i, i + D/2) with frequency i; DeepSeek-V2 rotates adjacent
   pairs (2i, 2i + 1). Permuting the rows of W_q and W_k gives the same dot products (exact).
2. RoRoPE. DeepSeek-V2 has ONE RoPE key shared by all heads, Llama has G. For each frequency i an
   orthogonal G x G mix of the key heads commutes with the rotation (it acts on the head axis, RoPE
   on the pair axis), so we take the PCA of the G keys' i-th pairs on calibration data: the first
   principal "head" becomes the shared RoPE key (exact); the other G - 1 carry the rest of the key
   energy and lose their rotation (the one approximation of the attention; its share of the key
   energy is reported). Each query head gets the matching mix of its group's coefficients.
3. Joint latent. The G - 1 unrotated keys and the G values (320 numbers per token on SmolLM2) are a
   linear map A h of the attention input, which the 512-wide latent holds without loss.
4. The latent's RMSNorm (kv_a_layernorm, which transformers and vLLM apply before caching) would
   rescale each token's keys and values by 1/rms(latent). Our addition to the papers' method: the
   latent is whitened so that its norm is (almost) the norm of the normalised input h^ = h / gamma,
   which RMSNorm makes constant: the used rows span A's row space with equal weight and the spare
   rows span the directions of h^ that carry most of the remaining energy. With
   kv_lora_rank >= hidden_size the norm is exactly constant; on SmolLM2 (576 > 512) the unmeasured
   64 directions hold a small, reported share. The spare rows are live (their up-projection starts
   at zero), so the heal and RL can use them.
5. Softmax scale: DeepSeek-V2 divides by sqrt(nope + rope); the queries are scaled to keep Llama's
   1 / sqrt(D).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class AttentionShape:
    heads: int  # query heads
    kv_heads: int  # G
    head_dim: int  # D (= qk_rope_head_dim = v_head_dim of the converted model)
    kv_lora_rank: int

    @property
    def nope_dim(self) -> int:
        """qk_nope_head_dim: the G - 1 unrotated key heads (MQA has none: one zero-weight head keeps the shape)."""
        return max(self.kv_heads - 1, 1) * self.head_dim


def pair_layout(head_dim: int) -> torch.Tensor:
    """Row order that turns Llama's half-split RoPE dims into DeepSeek's adjacent pairs."""
    half = head_dim // 2
    return torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).reshape(-1)


def rope_pca(keys: torch.Tensor) -> torch.Tensor:
    """keys (T, G, D) pre-RoPE in pair layout -> U (D/2, G, G): per frequency, orthonormal columns
    sorted by the key energy they carry (column 0 = the shared RoPE key)."""
    t, g, d = keys.shape
    pairs = keys.double().reshape(t, g, d // 2, 2).permute(2, 0, 3, 1).reshape(d // 2, 2 * t, g)
    cov = pairs.transpose(1, 2) @ pairs  # (D/2, G, G)
    values, vectors = torch.linalg.eigh(cov)  # ascending
    return vectors.flip(-1)


def _mix_heads(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """w (G, D/2, 2, d) per-head pair rows; u (D/2, G, G) -> rotated heads (G, D/2, 2, d)."""
    return torch.einsum("gicd,igj->jicd", w, u)


@dataclass
class MLAWeights:
    q_proj: torch.Tensor  # (heads * (nope + D), d)
    kv_a_proj_with_mqa: torch.Tensor  # (kv_lora_rank + D, d)
    kv_b_proj: torch.Tensor  # (heads * (nope + D), kv_lora_rank)
    unrotated_key_share: float  # share of the key energy that lost its rotation
    unmeasured_share: float  # mean share of |h^|^2 outside the latent (the norm's approximation)


def convert_attention(
    wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, gamma: torch.Tensor, h_hat: torch.Tensor,
    shape: AttentionShape,
) -> MLAWeights:
    """One layer. wq (H*D, d), wk / wv (G*D, d): Llama's projections; gamma (d,): its input norm's
    weight; h_hat (T, d): calibration inputs of that norm divided by their rms (the h^ above)."""
    H, G, D, r = shape.heads, shape.kv_heads, shape.head_dim, shape.kv_lora_rank
    d = wq.shape[1]
    wq, wk, wv, gamma, h_hat = (x.double() for x in (wq, wk, wv, gamma, h_hat))
    perm = pair_layout(D)
    wq_p = wq.view(H, D, d)[:, perm].view(H, D // 2, 2, d)
    wk_p = wk.view(G, D, d)[:, perm].view(G, D // 2, 2, d)
    keys = torch.einsum("gicd,td->tgic", wk_p, h_hat * gamma).reshape(-1, G, D)
    u = rope_pca(keys)
    wk_mixed = _mix_heads(wk_p, u)  # (G, D/2, 2, d): head 0 = shared RoPE key
    energy = torch.einsum("jicd,td->jict", wk_mixed, h_hat * gamma).pow(2).sum((1, 2, 3))
    unrotated = float(energy[1:].sum() / energy.sum()) if G > 1 else 0.0

    # queries: head h of group g sees rotated key head j with coefficient u[i, g, j]
    group = torch.arange(H) // (H // G)
    coeff = u[:, group, :].permute(1, 2, 0)  # (H, G_rot, D/2)
    q_mixed = wq_p.unsqueeze(1) * coeff[..., None, None]  # (H, G_rot, D/2, 2, d)
    q_scale = math.sqrt((shape.nope_dim + D) / D)
    q_rope = q_mixed[:, 0].reshape(H, D, d)
    q_nope = q_mixed[:, 1:].reshape(H, (G - 1) * D, d) if G > 1 else wq.new_zeros(H, D, d)
    q_proj = torch.cat([q_nope, q_rope], dim=1).reshape(-1, d) * q_scale

    # the latent: A h = [unrotated keys; values] (rank <= kv_lora_rank), whitened in h^ space
    a = torch.cat([wk_mixed[1:].reshape(-1, d), wv], dim=0) if G > 1 else wv
    if a.shape[0] > r:
        raise ValueError(f"kv_lora_rank {r} cannot hold the {a.shape[0]} unrotated key and value dims exactly")
    m = a * gamma  # A diag(gamma): acts on h^
    u_m, s_m, vt_m = torch.linalg.svd(m, full_matrices=False)
    keep = s_m > s_m.max() * 1e-9
    u_m, s_m, vt_m = u_m[:, keep], s_m[keep], vt_m[keep]
    used = int(keep.sum())
    spare = _spare_directions(h_hat, vt_m, min(r, d) - used)
    basis = torch.cat([vt_m, spare], dim=0)  # (<= r, d) orthonormal rows in h^ space
    lam = r / d  # |x|^2 = lam |basis h^|^2 ~ lam * d, so rms(x) ~ 1 and kv_a_layernorm (weight 1) ~ identity
    w_dkv = torch.zeros(r, d, dtype=torch.float64)
    w_dkv[: basis.shape[0]] = math.sqrt(lam) * basis / torch.where(gamma == 0, torch.ones_like(gamma), gamma)
    covered = (h_hat @ basis.T).pow(2).sum(1) / h_hat.pow(2).sum(1)
    up = torch.zeros(a.shape[0], r, dtype=torch.float64)
    up[:, :used] = (u_m * s_m) / math.sqrt(lam)  # A h = up @ x
    k_up, v_up = (up[: (G - 1) * D], up[(G - 1) * D:]) if G > 1 else (up.new_zeros(D, r), up)
    v_heads = v_up.view(G, D, r)[group]  # (H, D, r)
    kv_b = torch.cat([k_up.expand(H, -1, -1), v_heads], dim=1).reshape(-1, r)
    kv_a = torch.cat([w_dkv, wk_mixed[0].reshape(D, d)], dim=0)
    return MLAWeights(q_proj.float(), kv_a.float(), kv_b.float(), unrotated, float(1 - covered.mean()))


def _spare_directions(h_hat: torch.Tensor, used: torch.Tensor, n: int) -> torch.Tensor:
    """n orthonormal directions orthogonal to `used` that carry most of h^'s remaining energy."""
    if n <= 0:
        return used.new_zeros(0, used.shape[1])
    rest = h_hat - (h_hat @ used.T) @ used
    _, _, vt = torch.linalg.svd(rest, full_matrices=False)
    spare = vt[:n]
    spare = spare - (spare @ used.T) @ used  # numerically orthogonal to the used rows
    q, _ = torch.linalg.qr(spare.T)
    return q.T[:n]
