"""Log-probabilities of completions under a causal LM: what the GRPO learner trains on and what
`compare` measures KL with.

Rows are laid out as [left-padded prompt | right-padded completion] (`prompt_completion_rows`);
the completion block starts at the same column in every row, so its log-probs are the last C
positions of the logits. Masks follow the project's convention: True = the token counts.

`completion_logprobs` runs each distinct prompt of the batch once when prompts repeat (a GRPO
group's G samples share one) and repeats its KV cache to the rows that share it: the same numbers
as one forward over whole rows, on fewer tokens. MoE balance losses then cover the completion
tokens only (the prompt's tokens are routed the same in every row and run once). Token dropping
is off: dropped tokens would make two scorings of the same sample disagree. The vocabulary-wide
log-softmax and entropy run fused (policy/token_logprob.py).
"""

from __future__ import annotations

import torch

from policy.compat import cache_of, with_cache
from policy.load import base_model
from policy.model import DeepseekV2Policy
from policy.token_logprob import token_logprobs


def prompt_completion_rows(prompts: list[list[int]], completions: list[list[int]],
                           pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids (N, P + C), attention_mask (N, P + C) bool, completion_mask (N, C) bool)."""
    p = max(len(x) for x in prompts)
    c = max(1, max(len(x) for x in completions))
    n = len(prompts)
    ids = torch.full((n, p + c), pad_id, dtype=torch.long)
    attention = torch.zeros(n, p + c, dtype=torch.bool)
    completion_mask = torch.zeros(n, c, dtype=torch.bool)
    for j, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        ids[j, p - len(prompt) : p] = torch.tensor(prompt)
        attention[j, p - len(prompt) : p] = True
        if completion:
            ids[j, p : p + len(completion)] = torch.tensor(completion)
            attention[j, p : p + len(completion)] = True
            completion_mask[j, : len(completion)] = True
    return ids, attention, completion_mask


def completion_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_width: int,
                        temperature: float = 1.0, entropy: bool = False,
                        share_prompts: bool = True) -> tuple[torch.Tensor, object]:
    """(N, C) log pi(completion token) under logits / temperature, and the model output (for MoE
    balance losses); with entropy=True the output gains `token_entropy` (N, C), the policy's
    entropy at each position. Tensors must be on the model's device.

    share_prompts: rows with the same prompt run that prompt once (`_shared_prompt_logits`); the
    output is then the completion forward's. share_prompts=False gives the whole rows' forward."""
    ids, attention, c = input_ids, attention_mask, completion_width
    positions = (attention.long().cumsum(1) - 1).clamp(min=0)
    kwargs = {"token_dropping": False} if isinstance(base_model(model), DeepseekV2Policy) else {}
    found = _shared_prompt_logits(model, ids, attention, positions, c, kwargs) if share_prompts else None
    if found is None:
        out = model(input_ids=ids, attention_mask=attention.long(), position_ids=positions, use_cache=False,
                    logits_to_keep=c + 1, **kwargs)
        pieces = [out.logits[:, :-1]]
    else:
        pieces, out = found
    targets = ids[:, -c:]
    parts, start = [], 0
    for logits in pieces:  # the first completion token's logits and the rest's, never concatenated (N, C, V)
        parts.append(token_logprobs(logits, targets[:, start : start + logits.shape[1]], temperature, entropy))
        start += logits.shape[1]
    logp = torch.cat([p[0] for p in parts], dim=1)
    if entropy:
        out.token_entropy = torch.cat([p[1] for p in parts], dim=1)
    return logp, out


def distinct_prompts(ids: torch.Tensor, attention: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inverse (N,): each row's distinct prompt, first (U,): the first row holding each) of the
    left-padded prompt block, the first p columns (padding ignored)."""
    n = ids.shape[0]
    key = ids[:, :p].masked_fill(~attention[:, :p], -1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    rows = torch.arange(n, device=ids.device)
    first = torch.full((int(inverse.max()) + 1,), n, device=ids.device).scatter_reduce(0, inverse, rows, "amin")
    return inverse, first


def _shared_prompt_logits(model, ids, attention, positions, c: int, kwargs) -> tuple[list, object] | None:
    """The logits predicting the completion tokens, running each distinct prompt once: [(N, 1, V) for
    the first token, (N, C - 1, V) for the rest] (kept apart: a (N, C, V) copy costs seconds on CPU).

    The prompt block (left-padded, first P columns) is deduplicated; one forward over the U distinct
    prompts fills a KV cache (transformers' `DynamicCache`, differentiable) and gives the logits at
    their last position (which predict the first completion token); the cache is indexed out to the N
    rows and one forward over the first C - 1 completion tokens gives the rest. None when no prompt
    repeats (nothing to save) or C < 2."""
    n, width = ids.shape
    p = width - c
    if c < 2 or p < 1:
        return None
    inverse, first = distinct_prompts(ids, attention, p)
    if len(first) == n:
        return None
    prompt = model(input_ids=ids[first, :p], attention_mask=attention[first, :p].long(),
                   position_ids=positions[first, :p], use_cache=True, logits_to_keep=1, **kwargs)
    cache = cache_of(prompt)
    _select_cache_rows(cache, inverse)
    rest = model(input_ids=ids[:, p : p + c - 1], attention_mask=attention[:, : p + c - 1].long(),
                 position_ids=positions[:, p : p + c - 1], use_cache=True, **with_cache(cache), **kwargs)
    return [prompt.logits.index_select(0, inverse), rest.logits], rest


def _select_cache_rows(cache, rows: torch.Tensor) -> None:
    """transformers' `cache.batch_select_indices(rows)`, with index_select: the same rows, and a
    backward that sums the G copies' gradients in a fixed order (advanced indexing's accumulating
    backward varies with the CPU threads, so runs of the same recipe drifted apart)."""
    for layer in cache.layers:
        if layer.get_seq_length() > 0:
            layer.keys, layer.values = layer.keys.index_select(0, rows), layer.values.index_select(0, rows)


def probe_tokens(vocab_size: int, length: int = 24, seed: int = 20261202) -> list[int]:
    """A fixed token sequence that learner and engines score to show they hold the same weights."""
    return torch.randint(0, vocab_size, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


@torch.no_grad()
def sequence_logprobs(model, tokens: list[int]) -> list[float]:
    """log p(tokens[i] | tokens[:i]) for i >= 1 under the model's own forward, in fp32."""
    device = next(model.parameters()).device
    ids = torch.tensor([tokens], device=device)
    was_training = model.training
    model.eval()
    logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
    model.train(was_training)
    return logits.log_softmax(-1).gather(1, ids[0, 1:].unsqueeze(1)).squeeze(1).cpu().tolist()
