"""Model FLOPs and the machine's matmul peak, for the learners' MFU (model FLOPs utilisation).

Model FLOPs follow PaLM's appendix B: a token's forward pass costs 2 FLOPs per activated matmul
weight plus its attention, 2 * layers * heads * (qk_dim + v_dim) * (positions it attends to);
backward costs twice the forward. Activated weights are every matrix but the input embedding
(a lookup; a tied output head counts once, as the matmul it is), with a MoE layer's routed experts
counted at top_k / n_routed_experts of their size (the shared experts and the router in full), so
DeepSeek-V2 counts its ~21B activated parameters, not 236B. Attention counts the causal positions
only (a token at position t attends to t + 1), not the padded square. Departures from PaLM: the
peak is measured on this machine (the best of a few dense matmuls of the training dtype at the
process's thread count), not read from a datasheet, since CPUs have none worth quoting; set
`log.peak_tflops` to use a datasheet figure instead. With LoRA the counts still charge the frozen
weights' gradient matmuls (the convention), so MFU reads high.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from policy.logprobs import distinct_prompts  # the learner's own deduplication of prompts


@dataclass(frozen=True)
class FlopSpec:
    """What a token's forward pass costs: activated matmul weights and the attention shape."""

    activated_params: int
    layers: int
    heads: int
    qk_dim: int
    v_dim: int

    def forward(self, lengths: list[tuple[int, int]]) -> float:
        """Forward FLOPs over sequences given as (tokens before them in the cache, tokens run): a
        prompt is (0, P); completions scored over a shared prompt's cache are (P, C)."""
        attention_per_position = 2 * self.layers * self.heads * (self.qk_dim + self.v_dim)
        total = 0.0
        for before, run in lengths:
            attended = run * before + run * (run + 1) // 2  # sum over the run of the positions each attends to
            total += 2.0 * self.activated_params * run + attention_per_position * attended
        return total


def scored_rows_flops(spec: FlopSpec, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      completion_width: int) -> float:
    """Forward FLOPs of scoring prompt + completion rows ((N, P + C), mask True = a real token) as
    the learner does (policy/logprobs.py): each distinct prompt once, then each row's completion
    over its prompt's cache."""
    p = input_ids.shape[1] - completion_width
    prompt, completion = attention_mask[:, :p].sum(1), attention_mask[:, p:].sum(1)
    runs = [(0, int(prompt[r])) for r in distinct_prompts(input_ids, attention_mask, p)[1].tolist()]
    runs += [(int(a), int(b)) for a, b in zip(prompt.tolist(), completion.tolist(), strict=True)]
    return spec.forward(runs)


def packed_rows_flops(spec: FlopSpec, sequence_ids: torch.Tensor) -> float:
    """Forward FLOPs of packed SFT rows: sequence_ids (B, T), each document's index in its row (it
    attends within itself), -1 = padding (not counted)."""
    runs = []
    for row in sequence_ids:
        real = row[row >= 0]
        runs += [(0, int(n)) for n in torch.bincount(real).tolist() if n] if real.numel() else []
    return spec.forward(runs)


def flop_spec(model) -> FlopSpec:
    """The FlopSpec of a Hugging Face causal LM (ours, DeepSeek-V2, Llama, ...)."""
    c = model.config
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embed
    top_k, routed = getattr(c, "num_experts_per_tok", None), getattr(c, "n_routed_experts", None)
    total = 0
    for name, p in model.named_parameters():
        if p.dim() < 2 or p is embed or "lora_" in name:
            continue
        n = p.numel()
        if routed and top_k and ".mlp.experts." in name:  # routed experts: only top_k of them run per token
            n = n * top_k // routed
        total += n
    if tied:
        total += embed.numel()
    heads = c.num_attention_heads
    if getattr(c, "qk_nope_head_dim", None):  # MLA: per head, nope + rope dims for q.k, v_head_dim for values
        qk, v = c.qk_nope_head_dim + c.qk_rope_head_dim, c.v_head_dim
    else:
        qk = v = getattr(c, "head_dim", None) or c.hidden_size // heads
    return FlopSpec(total, c.num_hidden_layers, heads, qk, v)


_PEAKS: dict[tuple, float] = {}


def measured_peak_flops(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> float:
    """FLOP/s of the best of a few square matmuls of `dtype` on `device` at the current thread count
    (cached per process)."""
    key = (dtype, str(device), torch.get_num_threads())
    if key not in _PEAKS:
        n = 2048 if str(device) == "cpu" else 8192
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        best = float("inf")
        for _ in range(6):
            if str(device) != "cpu":
                torch.cuda.synchronize()
            start = time.perf_counter()
            a @ b
            if str(device) != "cpu":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        _PEAKS[key] = 2.0 * n ** 3 / best
    return _PEAKS[key]


def mfu_metrics(flops: float, seconds: float, peak: float, prefix: str) -> dict[str, float]:
    """{<prefix>tflops: achieved TFLOP/s, <prefix>mfu: the fraction of `peak` (FLOP/s)}."""
    achieved = flops / max(seconds, 1e-9)
    return {f"{prefix}tflops": achieved / 1e12, f"{prefix}mfu": achieved / peak}
