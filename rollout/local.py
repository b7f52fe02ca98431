"""The embedded rollout engine, and the project's one decode loop: batched sampling over a
preallocated KV cache, on CPU or one GPU. GRPO's rollout workers, `deepalign eval/compare`,
`policy demo` and preference sampling all decode through `LocalEngine.generate`.

- The decoder depends on the architecture (rollout/decoders.py): absorbed MLA over the
  576-per-token latent cache for DeepSeek-V2 policies, rollout/kv_decode.py for Llama-family
  models (SmolLM2), the model's own forward for anything else.
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
- Sampling (rollout/sampling.py): temperature / top-k / top-p, seeded per call. The log-probability
  stored per token is under logits / temperature (before top-k / top-p), the distribution the
  learner re-scores.
- `dtype`: the engine may hold its own copy of the weights in another dtype (bfloat16 runs on
  CPUs with AMX); the learner's log-probs then differ slightly, which truncated importance
  sampling corrects.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from data_tools.chat import encode_prompts
from policy.load import pad_token_id
from rollout.decoders import make_decoder
from rollout.engine import Rollout, SamplingConfig
from rollout.routing_record import RoutingRecorder
from rollout.sampling import sample_with_logprob

MIN_SHARED_PREFIX = 4  # tokens; a shorter common prefix is not worth its extra forward
PROBE_DECODE_STEPS = 2  # single-token steps at the end of a weight-sync probe (`LocalEngine.probe`)


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, T), valid (B, T) bool): rows right-aligned, padding on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    valid = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        valid[i, width - len(r):] = True
    return ids, valid


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
        if model.config.model_type == "deepseek_v2":
            for moe in self.model.moe_layers():  # the engine owns its model: no router statistics
                moe.options = replace(moe.options, router_stats=False)
        self.decoder, self.engine = make_decoder(self.model, absorbed)
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = pad_token_id(tokenizer)
        self.cache_bytes = 0  # KV-cache bytes in use when the last generate ended
        self.record_routing = False  # routing replay: record each sample's experts (rollout/routing_record.py)

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        dtype = next(self.model.parameters()).dtype
        self.model.load_state_dict({k: v.to(dtype) for k, v in state_dict.items()}, strict=True)
        if hasattr(self.decoder, "refresh"):
            self.decoder.refresh()
        self.version = version

    @torch.no_grad()
    def probe(self, tokens: list[int], decode_steps: int = PROBE_DECODE_STEPS) -> list[float]:
        """log p(tokens[i] | tokens[:i]) for i >= 1 through the engine's own decoder: all but the last
        `decode_steps` tokens as one prefill, then single-token steps over that cache (the decode
        path: absorbed MLA, the fused weights a load rebuilt). Each step at batch 1 reads every weight
        once (SmolLM2 fp32: ~23 ms), so a short decode tail keeps the check and drops most of its cost."""
        device = self.model.get_input_embeddings().weight.device
        prefill = max(len(tokens) - 1 - decode_steps, 1)
        cache = self.decoder.allocate(1, len(tokens))
        logits = [self.decoder.forward(torch.tensor([tokens[:prefill]], device=device), cache)[0]]
        for t in tokens[prefill:-1]:
            logits.append(self.decoder.forward(torch.tensor([[t]], device=device), cache)[0])
        logp = torch.cat(logits).float().log_softmax(-1)
        return logp.gather(1, torch.tensor(tokens[1:], device=device).unsqueeze(1)).squeeze(1).cpu().tolist()

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
        if not self.decoder.copies_cache:
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

    def _finished(self, token, running, active, tokens, step: int, stop: list[str]) -> torch.Tensor:
        """Rows (of the cache) that end at this step: EOS, or a stop string in the text so far."""
        done = running & (token == self.eos_id)
        if stop:
            for r in running.nonzero().squeeze(1).tolist():
                if not done[r] and self._stopped_by_string(tokens[int(active[r]), : step + 1].tolist(), stop):
                    done[r] = True
        return done

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig, seed: int = 0,
                 between_steps: Callable[[], None] | None = None) -> Rollout:
        """n samples per prompt. `between_steps` (partial rollouts) runs before every decode step and
        may load new weights (`load_weights`): the rest of the rollout decodes with them, over the
        cache the old weights wrote (kept, not recomputed), and each token's version is recorded."""
        moe = self.record_routing and bool(getattr(self.model, "moe_layers", list)())
        recorder = RoutingRecorder(self.model, len(prompts) * n, sampling.max_new_tokens) if moe else None
        try:
            return self._generate(prompts, n, sampling, seed, recorder, between_steps)
        finally:
            if recorder is not None:
                recorder.close()

    def _generate(self, prompts, n: int, sampling: SamplingConfig, seed: int, recorder, between_steps) -> Rollout:
        start, start_version = time.perf_counter(), self.version
        device = self.model.get_input_embeddings().weight.device
        total, budget = len(prompts) * n, sampling.max_new_tokens
        cache, logits = self._prefill(prompts, n, budget, device)
        if recorder is not None:
            recorder.prefill(len(prompts), n)
        generator = torch.Generator(device=device).manual_seed(seed)
        tokens = torch.full((total, budget), self.pad_id, dtype=torch.long)  # (N, budget) per sample
        token_logps = torch.zeros(total, budget)
        lengths = torch.zeros(total, dtype=torch.long)
        stopped = torch.zeros(total, dtype=torch.bool)  # EOS or a stop string
        active = torch.arange(total)  # the sample each cache row holds
        running = torch.ones(total, dtype=torch.bool)  # per cache row: still generating
        finished_since_compaction = 0
        versions = torch.full((total, budget), self.version, dtype=torch.int32) if between_steps else None
        logits_version = self.version  # the weights that computed `logits`
        for step in range(budget):
            token, token_lp = sample_with_logprob(logits, sampling.temperature, sampling.top_k, sampling.top_p,
                                                  generator)
            token, token_lp = token.cpu(), token_lp.cpu()
            rows = active[running]
            tokens[rows, step] = token[running]
            token_logps[rows, step] = token_lp[running]
            if versions is not None:
                versions[rows, step] = logits_version
            lengths[rows] += 1
            done = self._finished(token, running, active, tokens, step, sampling.stop)
            stopped[active[done]] = True
            running &= ~done
            finished_since_compaction += int(done.sum())
            if not bool(running.any()):
                break
            if self.decoder.copies_cache and finished_since_compaction * 4 >= len(active):
                keep = running.nonzero().squeeze(1)
                cache, active, running, token = cache.select(keep.to(device)), active[keep], running[keep], token[keep]
                finished_since_compaction = 0
            token = torch.where(running, token, torch.full_like(token, self.pad_id))
            if between_steps is not None:
                between_steps()
                logits_version = self.version
            logits = self.decoder.forward(token.unsqueeze(1).to(device), cache, running.unsqueeze(1).to(device),
                                          last_only=True)[:, -1]
            if recorder is not None:
                recorder.step(step, active, running)
        self.cache_bytes = cache.bytes_used()
        completions = [tokens[i, : lengths[i]].tolist() for i in range(total)]
        logprobs = [token_logps[i, : lengths[i]].tolist() for i in range(total)]
        reasons = ["stop" if s else "length" for s in stopped.tolist()]
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        prompt_rows = [list(p) for p in prompts for _ in range(n)]
        return Rollout(prompt_rows, completions, logprobs, reasons, texts, time.perf_counter() - start, start_version,
                       recorder.result(lengths) if recorder is not None else None,
                       token_versions=None if versions is None else
                       [versions[i, : lengths[i]].tolist() for i in range(total)])


@dataclass
class Generation:
    """texts: the completions (prompt and EOS excluded); new_tokens: tokens generated over all rows
    (EOS included); kv_cache_bytes: cache bytes in use at the end; engine: the decoder that ran."""

    texts: list[str]
    token_ids: list[list[int]]
    new_tokens: int
    seconds: float
    kv_cache_bytes: int
    engine: str

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / max(self.seconds, 1e-9)


def generate(model, tokenizer, prompts: list, sampling: SamplingConfig, seed: int = 0, absorbed: bool = True,
             chat: bool = True) -> Generation:
    """One completion per prompt (text or chat messages), through the engine: `policy demo` and
    preference sampling. The engine decodes on `model` itself (no copy)."""
    engine = LocalEngine(model, tokenizer, absorbed=absorbed)
    rollout = engine.generate(encode_prompts(tokenizer, prompts, chat), 1, sampling, seed)
    token_ids = [c[:-1] if c and c[-1] == engine.eos_id else c for c in rollout.completion_ids]
    return Generation(rollout.texts, token_ids, rollout.new_tokens, rollout.seconds, engine.cache_bytes,
                      engine.engine)
