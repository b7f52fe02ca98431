"""The decoder the rollout engine runs for a model, chosen in one place (`make_decoder`).

Every decoder has `allocate(batch, max_len) -> cache` and `forward(input_ids, cache, valid,
last_only) -> logits`; its cache has `bytes_used()` and, where the cache can be copied cheaply,
`repeat_rows(n)` and `select(rows)` (`copies_cache`).
- DeepSeek-V2: policy/mla_decode.py, absorbed MLA over the 576-per-token latent cache (naive on
  request, the reference path);
- Llama family (Llama, Mistral, Qwen2: SmolLM2): rollout/kv_decode.py over a preallocated cache;
- anything else: the model's own forward over transformers' dynamic cache (`HFDecoder`).
"""

from __future__ import annotations

import torch

from policy.compat import cache_of, with_cache
from policy.mla_decode import MLADecoder
from rollout.kv_decode import SUPPORTED, LlamaDecoder


class _HFCache(dict):
    def bytes_used(self) -> int:
        past = self["past"]
        if past is None:
            return 0
        return sum(t.numel() * t.element_size() for layer in past.layers for t in (layer.keys, layer.values)
                   if isinstance(t, torch.Tensor))


class HFDecoder:
    """Fallback for other architectures: the model's forward with transformers' dynamic cache."""

    copies_cache = False

    def __init__(self, model):
        self.model = model

    def allocate(self, batch: int, max_len: int):
        return _HFCache(past=None, valid=torch.zeros(batch, 0, dtype=torch.bool), length=0)

    @torch.no_grad()
    def forward(self, input_ids, cache, valid=None, last_only=False):
        if valid is None:
            valid = torch.ones_like(input_ids, dtype=torch.bool)
        cache["valid"] = torch.cat([cache["valid"], valid.cpu()], dim=1)
        seen = cache["valid"][:, : cache["length"]].sum(1, keepdim=True)
        positions = (seen + valid.long().cpu().cumsum(1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, attention_mask=cache["valid"].long().to(input_ids.device),
                         position_ids=positions.to(input_ids.device), use_cache=True, **with_cache(cache["past"]),
                         logits_to_keep=1 if last_only else 0)
        cache["past"] = cache_of(out)
        cache["length"] += input_ids.shape[1]
        return out.logits


def make_decoder(model, absorbed: bool = True):
    """(decoder, its name) for the model's architecture."""
    kind = model.config.model_type
    if kind == "deepseek_v2":
        return MLADecoder(model, absorbed), "absorbed-mla" if absorbed else "naive-mla"
    if kind in SUPPORTED:
        return LlamaDecoder(model), "kv-decode"
    return HFDecoder(model), "hf-forward"
