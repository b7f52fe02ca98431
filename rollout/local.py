"""The embedded rollout engine: batched sampling over a preallocated KV cache, on CPU or one GPU.

- DeepSeek-V2 policies decode with the absorbed-MLA path over the 576-per-token latent cache
  (policy/mla_decode.py); Llama-family models (SmolLM2) with rollout/kv_decode.py; any other
  causal LM through its own forward and transformers' dynamic cache.
- Prefill runs the prompts' common prefix once (a chat template's header and system prompt are
  most of a short prompt: 27 of the 40 tokens of a SmolLM2 arithmetic prompt), then each
  prompt's remainder once, and copies each prompt's cache to its G samples (`_prefill`).
  Vocabulary-size matmuls and every other large weight run from oneDNN's packed layout
  (policy/packed_linear.py).
- Rows stop on EOS or a stop string; finished rows are dropped from the batch (the cache is
  compacted) once a quarter of the active rows have finished, so the batch does not carry dead
  rows to the end.
- MoE layers run every expert on every decode token (policy/mla_decode.py's single-token step):
  with a few tokens per step that one batched matmul beats grouped matmuls over tiny groups;
  prefill runs the policy's grouped experts. The engine owns its model: give it its own copy.
- Sampling: temperature / top-k / top-p, seeded by `SamplingConfig.seed`. The log-probability
  stored per token is under logits / temperature (before top-k / top-p), the distribution the
  learner re-scores.
- `dtype`: the engine may hold its own copy of the weights in another dtype (bfloat16 runs on
  CPUs with AMX); the learner's log-probs then differ slightly, which truncated importance
  sampling corrects.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from policy.generate import left_pad, sample_with_logprob
from policy.mla_decode import MLADecoder
from rollout.engine import Rollout, SamplingConfig
from rollout.kv_decode import SUPPORTED, LlamaDecoder


class _HFDecoder:
    """Fallback for other architectures: the model's forward with transformers' dynamic cache."""

    def __init__(self, model):
        self.model = model

    def allocate(self, batch: int, max_len: int):
        return {"past": None, "valid": torch.zeros(batch, 0, dtype=torch.bool), "length": 0}

    @torch.no_grad()
    def forward(self, input_ids, cache, valid=None, last_only=False):
        if valid is None:
            valid = torch.ones_like(input_ids, dtype=torch.bool)
        cache["valid"] = torch.cat([cache["valid"], valid.cpu()], dim=1)
        seen = cache["valid"][:, : cache["length"]].sum(1, keepdim=True)
        positions = (seen + valid.long().cpu().cumsum(1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, attention_mask=cache["valid"].long().to(input_ids.device),
                         position_ids=positions.to(input_ids.device), cache=cache["past"], use_cache=True,
                         logits_to_keep=1 if last_only else 0)
        cache["past"] = out.cache
        cache["length"] += input_ids.shape[1]
        return out.logits


MIN_SHARED_PREFIX = 4  # tokens; a shorter common prefix is not worth its extra forward


def _common_prefix(rows: list[list[int]]) -> int:
    """Length of the longest common prefix, kept one token short of the shortest row (every row
    needs a token of its own to produce its first logits)."""
    limit = min(len(r) for r in rows) - 1
    first = rows[0]
    for i in range(limit):
        if any(r[i] != first[i] for r in rows):
            return i
    return max(limit, 0)


class LocalEngine:
    """RolloutEngine over an in-memory Hugging Face causal LM (ours or any other)."""

    name = "local"

    def __init__(self, model, tokenizer, dtype: torch.dtype | None = None, absorbed: bool = True):
        self.model = model.to(dtype) if dtype is not None else model
        self.model.eval()
        self.tokenizer = tokenizer
        self.version = 0
        kind = model.config.model_type
        if kind == "deepseek_v2":
            for moe in self.model.moe_layers():  # the engine owns its model: no router statistics
                moe.options = replace(moe.options, router_stats=False)
            self.decoder, self.engine = MLADecoder(self.model, absorbed), "absorbed-mla" if absorbed else "naive-mla"
        elif kind in SUPPORTED:
            self.decoder, self.engine = LlamaDecoder(self.model), "kv-decode"
        else:
            self.decoder, self.engine = _HFDecoder(self.model), "hf-forward"
        self.decoder_copies_cache = not isinstance(self.decoder, _HFDecoder)  # caches with repeat_rows / select
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        dtype = next(self.model.parameters()).dtype
        self.model.load_state_dict({k: v.to(dtype) for k, v in state_dict.items()}, strict=True)
        if hasattr(self.decoder, "refresh"):
            self.decoder.refresh()
        self.version = version

    def _stopped_by_string(self, tokens: list[int], stop: list[str]) -> bool:
        tail = self.tokenizer.decode(tokens[-8:], skip_special_tokens=True)
        return any(s in tail for s in stop)

    def _prefill(self, prompts: list[list[int]], n: int, max_new_tokens: int, device):
        """The cache and next-token logits of every sample row (n per prompt, prompt-major).

        The prompts' common prefix (a chat template's system turn, say) runs once and its cache is
        copied to every prompt; each prompt's remainder runs once, left-padded after the prefix
        (positions count real tokens only, so every row sees the positions of its own prompt); then
        each prompt's cache is copied to its n samples. Without a cheap cache copy (the fallback
        decoder) every sample row is prefilled whole."""
        if not self.decoder_copies_cache:
            ids, valid = left_pad([p for p in prompts for _ in range(n)], self.pad_id)
            cache = self.decoder.allocate(len(prompts) * n, ids.shape[1] + max_new_tokens)
            return cache, self.decoder.forward(ids.to(device), cache, valid.to(device), last_only=True)[:, -1]
        shared = _common_prefix(prompts) if len(prompts) > 1 else 0
        if shared < MIN_SHARED_PREFIX:
            shared = 0
        ids, valid = left_pad([p[shared:] for p in prompts], self.pad_id)
        cache = self.decoder.allocate(1 if shared else len(prompts), shared + ids.shape[1] + max_new_tokens)
        if shared:
            self.decoder.forward(torch.tensor([prompts[0][:shared]], device=device), cache, last_only=True)
            cache = cache.repeat_rows(len(prompts))
        logits = self.decoder.forward(ids.to(device), cache, valid.to(device), last_only=True)[:, -1]
        if n > 1:
            cache, logits = cache.repeat_rows(n), logits.repeat_interleave(n, 0)
        return cache, logits

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig) -> Rollout:
        start = time.perf_counter()
        device = self.model.get_input_embeddings().weight.device
        total = len(prompts) * n
        cache, logits = self._prefill(prompts, n, sampling.max_new_tokens, device)

        generator = torch.Generator(device=device).manual_seed(sampling.seed)
        budget = sampling.max_new_tokens
        tokens = torch.full((total, budget), self.pad_id, dtype=torch.long)  # (N, budget) per sample
        token_logps = torch.zeros(total, budget)
        lengths = torch.zeros(total, dtype=torch.long)
        stopped = torch.zeros(total, dtype=torch.bool)  # EOS or a stop string
        active = torch.arange(total)  # the sample each cache row holds
        running = torch.ones(total, dtype=torch.bool)  # per cache row: still generating
        finished_since_compaction = 0
        for step in range(budget):
            token, token_lp = sample_with_logprob(logits, sampling.temperature, sampling.top_k, sampling.top_p,
                                                  generator)
            token, token_lp = token.cpu(), token_lp.cpu()
            rows = active[running]
            tokens[rows, step] = token[running]
            token_logps[rows, step] = token_lp[running]
            lengths[rows] += 1
            done = running & (token == self.eos_id)
            if sampling.stop:
                for r in running.nonzero().squeeze(1).tolist():
                    sample = int(active[r])
                    if not done[r] and self._stopped_by_string(tokens[sample, : step + 1].tolist(), sampling.stop):
                        done[r] = True
            stopped[active[done]] = True
            running &= ~done
            finished_since_compaction += int(done.sum())
            if not bool(running.any()):
                break
            if self.decoder_copies_cache and finished_since_compaction * 4 >= len(active):
                keep = running.nonzero().squeeze(1)
                cache, active, running, token = cache.select(keep.to(device)), active[keep], running[keep], token[keep]
                finished_since_compaction = 0
            token = torch.where(running, token, torch.full_like(token, self.pad_id))
            logits = self.decoder.forward(token.unsqueeze(1).to(device), cache, running.unsqueeze(1).to(device),
                                          last_only=True)[:, -1]
        completions = [tokens[i, : lengths[i]].tolist() for i in range(total)]
        logprobs = [token_logps[i, : lengths[i]].tolist() for i in range(total)]
        reasons = ["stop" if s else "length" for s in stopped.tolist()]
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        prompt_rows = [list(p) for p in prompts for _ in range(n)]
        return Rollout(prompt_rows, completions, logprobs, reasons, texts, time.perf_counter() - start, self.version)
