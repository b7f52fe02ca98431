"""The vLLM rollout engine (extra `vllm`; GPU only). The only module that imports vLLM.

Uses vLLM's public API: `LLM(model=..., dtype=..., seed=...)` to load the policy checkpoint,
`SamplingParams(n=G, logprobs=0, ...)` to sample G completions per prompt with the sampled
token's log-probability, and, for weight updates, the engine's model loader
(`llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(iterable of
(name, tensor))` in vLLM's V0 layout, `llm.collective_rpc("load_weights", ...)`-style in newer
releases; both take Hugging Face parameter names, which our checkpoints keep).

Not run in CI: vLLM's wheel pins its own torch and needs CUDA. Its test
(tests/test_vllm_engine.py) skips with that reason where vLLM or CUDA is missing.
"""

from __future__ import annotations

import time

import torch

from rollout.engine import Rollout, SamplingConfig


class VLLMEngine:
    name = "vllm"

    def __init__(self, checkpoint: str, dtype: str = "bfloat16", seed: int = 0, gpu_memory_utilization: float = 0.5):
        try:
            from vllm import LLM
        except ImportError as exc:
            raise RuntimeError("rollout.engine vllm needs the `vllm` extra (pip install 'deepalign[vllm]') "
                               "and a CUDA GPU") from exc
        self.llm = LLM(model=checkpoint, dtype=dtype, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                       enable_prefix_caching=True)
        self.tokenizer = self.llm.get_tokenizer()
        self.version = 0

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig) -> Rollout:
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                                top_k=sampling.top_k if sampling.top_k > 0 else -1,
                                max_tokens=sampling.max_new_tokens, stop=sampling.stop or None,
                                seed=sampling.seed, logprobs=0)
        start = time.perf_counter()
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        rollout = Rollout([], [], [], [], [], 0.0, self.version)
        for prompt, out in zip(prompts, outputs, strict=True):
            for sample in out.outputs:
                ids = list(sample.token_ids)
                rollout.prompt_ids.append(list(prompt))
                rollout.completion_ids.append(ids)
                rollout.logprobs.append([step[t].logprob for step, t in zip(sample.logprobs, ids, strict=True)])
                rollout.finish_reasons.append("length" if sample.finish_reason == "length" else "stop")
                rollout.texts.append(sample.text)
        rollout.seconds = time.perf_counter() - start
        return rollout

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        weights = list(state_dict.items())
        engine = self.llm.llm_engine
        if hasattr(self.llm, "collective_rpc"):
            self.llm.collective_rpc(_load_into_worker, args=(weights,))
        else:
            engine.model_executor.driver_worker.model_runner.model.load_weights(weights)
        self.llm.reset_prefix_cache()
        self.version = version


def _load_into_worker(worker, weights) -> None:
    worker.model_runner.model.load_weights(weights)
