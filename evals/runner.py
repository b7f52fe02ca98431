"""Running suites on checkpoints, with a cache, and comparing checkpoints.

`EvalSettings` (CLI flags or a recipe) fix decoding (greedy or sampled, seed, samples, batch
size, token budget) and the data of each suite. Results are cached per checkpoint and suite under
`{out}/cache/<key>/<suite>.json`; the key hashes the checkpoint's resolved path, its weight files'
sizes and modification times, and the settings the suite depends on, so re-running a comparison
only runs what changed. Each suite's result is written as soon as it completes: a failure in a
later suite never loses the finished ones.

Checkpoints: presets, any Hugging Face or deepalign checkpoint directory, and LoRA adapter
directories (adapter_config.json; the base model named there is loaded and the adapter applied).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from evals import data as eval_data
from evals import suites as S
from evals.config import EvalSettings
from evals.data import EvalError


def _suite_settings(settings: EvalSettings, suite: str) -> dict:
    keys = {"temperature", "samples", "max_new_tokens", "seed"}
    keys |= {"math": {"math_data", "math_limit"}, "code": {"pass_k", "humaneval_limit"},
             "preference": {"reward_model", "chat_data"}, "stats": {"chat_data"}, "safety": set(),
             "reward": {"reward", "reward_data", "math_data", "math_limit"}}[suite]
    return {k: v for k, v in asdict(settings).items() if k in keys}


def checkpoint_key(checkpoint: str) -> str:
    """Resolved path plus weight files' sizes and mtimes (a preset name hashes as itself)."""
    path = Path(checkpoint)
    if not path.exists():
        return hashlib.sha256(checkpoint.encode()).hexdigest()[:12]
    parts = [str(path.resolve())]
    for f in sorted(path.glob("*")):
        if f.suffix in (".safetensors", ".bin", ".json"):
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{int(st.st_mtime)}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def load_checkpoint(checkpoint: str):
    """(model, tokenizer) in eval mode; a LoRA adapter directory is applied to its base model."""
    from policy.load import load_policy

    path = Path(checkpoint)
    if (path / "adapter_config.json").exists() and not (path / "config.json").exists():
        from peft import PeftModel

        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise EvalError(f"{path}: adapter_config.json names no base_model_name_or_path")
        model, tokenizer = load_policy(base)
        model = PeftModel.from_pretrained(model, path).merge_and_unload().eval()
    else:
        model, tokenizer = load_policy(checkpoint)
    if not getattr(tokenizer, "chat_template", None):
        raise EvalError(f"{checkpoint}: the tokenizer has no chat template; evaluation prompts are chats")
    return model, tokenizer


class CheckpointGenerator:
    """prompts, n -> n completions per prompt, with our rollout engine (absorbed MLA for DeepSeek)."""

    def __init__(self, model, tokenizer, settings: EvalSettings):
        from rollout.local import LocalEngine

        self.engine = LocalEngine(model, tokenizer)
        self.tokenizer = tokenizer
        self.settings = settings
        self.label = "generating"  # what the progress bar says (evaluate_checkpoint: checkpoint and suite)

    def __call__(self, prompts: list[str], n: int) -> list[list[str]]:
        from data_tools.chat import encode_prompts
        from rollout.engine import SamplingConfig
        from train.config import LogConfig
        from train.tracking import Tracker

        s = self.settings
        out: list[list[str]] = []
        ids = encode_prompts(self.tokenizer, prompts)
        bar = Tracker(None, len(ids), self.label, LogConfig(tensorboard=False, progress_every_s=15.0))
        try:
            for i in range(0, len(ids), s.batch_size):
                rollout = self.engine.generate(ids[i : i + s.batch_size], n, SamplingConfig(
                    max_new_tokens=s.max_new_tokens, temperature=s.temperature), seed=s.seed + i)
                out += [rollout.texts[j * n : (j + 1) * n] for j in range(len(rollout.texts) // n)]
                bar.advance(len(out), "prompts")
        finally:
            bar.close()
        return out


def run_suite(name: str, generate: S.Generator, settings: EvalSettings) -> S.SuiteResult:
    if name == "math":
        return S.run_math(generate, eval_data.math_rows(settings.math_data, settings.math_limit), settings.samples)
    if name == "code":
        return S.run_code(generate, eval_data.humaneval_rows(settings.humaneval_limit), settings.samples,
                          tuple(settings.pass_k))
    if name == "preference":
        return S.run_preference(generate, eval_data.chat_rows(settings.chat_data), settings.reward_model)
    if name == "safety":
        return S.run_safety(generate, eval_data.safety_rows())
    if name == "reward":
        rows = eval_data.read_prompts(settings.reward_data) if settings.reward_data else \
            eval_data.math_rows(settings.math_data, settings.math_limit)
        return S.run_reward(generate, rows, settings.reward, settings.samples)
    return S.run_stats(generate, eval_data.chat_rows(settings.chat_data))


def evaluate_checkpoint(checkpoint: str, settings: EvalSettings, generate: S.Generator | None = None,
                        log=print) -> dict[str, S.SuiteResult]:
    """Every suite of `settings` on one checkpoint, from the cache where possible."""
    cache = Path(settings.output_dir) / "cache" / checkpoint_key(checkpoint)
    results: dict[str, S.SuiteResult] = {}
    for suite in settings.suites:
        config = _suite_settings(settings, suite)
        tag = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
        file = cache / f"{suite}-{tag}.json"
        if file.exists():
            results[suite] = S.SuiteResult.from_dict(json.loads(file.read_text()))
            log(f"{checkpoint}: {suite} from cache ({results[suite].score:.3f})")
            continue
        if generate is None:
            model, tokenizer = load_checkpoint(checkpoint)
            generate = CheckpointGenerator(model, tokenizer, settings)
        torch.manual_seed(settings.seed)
        if isinstance(generate, CheckpointGenerator):
            generate.label = f"{checkpoint}: {suite}"
        result = run_suite(suite, generate, settings)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp")
        tmp.write_text(json.dumps({**result.to_dict()}))
        os.replace(tmp, file)  # written as soon as the suite completes
        results[suite] = result
        log(f"{checkpoint}: {suite} {result.score:.3f} ({result.seconds:.0f} s)")
    return results


def kl_from(checkpoint_a: str, checkpoint_b: str, prompts: list[str], settings: EvalSettings
            ) -> tuple[float, list[float] | None]:
    """KL(B || A) per response, estimated on B's sampled responses: mean of sum_t log B - log A; and
    for two DeepSeekMoE checkpoints the routing agreement per MoE layer on those responses
    (evals/routing_drift.py), else None."""
    from data_tools.chat import encode_prompts
    from evals.routing_drift import routing_agreement
    from policy.load import pad_token_id
    from policy.logprobs import completion_logprobs, prompt_completion_rows
    from rollout.engine import SamplingConfig
    from rollout.local import LocalEngine

    model_a, tok_a = load_checkpoint(checkpoint_a)
    model_b, tok_b = load_checkpoint(checkpoint_b)
    if tok_a.get_vocab() != tok_b.get_vocab():
        raise EvalError(f"KL needs one tokenizer; {checkpoint_a} and {checkpoint_b} differ")
    import copy

    engine = LocalEngine(copy.deepcopy(model_b), tok_b)
    ids = encode_prompts(tok_b, prompts)
    rollout = engine.generate(ids, 1, SamplingConfig(max_new_tokens=settings.max_new_tokens), seed=settings.seed)
    rows, attention, mask = prompt_completion_rows(rollout.prompt_ids, rollout.completion_ids, pad_token_id(tok_b))
    with torch.no_grad():
        lb, _ = completion_logprobs(model_b.eval(), rows, attention, mask.shape[1])
        la, _ = completion_logprobs(model_a.eval(), rows, attention, mask.shape[1])
    predicting = torch.zeros(rows.shape, dtype=torch.bool)
    width, c = rows.shape[1], mask.shape[1]
    predicting[:, width - c - 1 : width - 1] = mask.bool()
    return float(((lb - la) * mask).sum(1).mean()), routing_agreement(model_a, model_b, rows, attention, predicting)


def compare(checkpoints: list[str], settings: EvalSettings) -> Path:
    """Every checkpoint on the same suites, the report comparing each with the first (and KL(B || A)
    when `stats` is asked for); prints the alignment-tax table and returns report.json's path."""
    from evals import report

    results = {c: evaluate_checkpoint(c, settings) for c in checkpoints}
    kl, drift = {}, {}
    if "stats" in settings.suites:
        prompts = [r["prompt"] for r in eval_data.chat_rows(settings.chat_data)]
        for c in checkpoints[1:]:
            pair = f"{c} vs {checkpoints[0]}"
            kl[pair], agreement = kl_from(checkpoints[0], c, prompts, settings)
            if agreement is not None:
                drift[pair] = agreement
    content = report.write(results, settings.output_dir, kl, drift)
    for t in content["tax"]:
        print(f"{t['suite']:>10}: {t['a']} {t['score_a']:.3f} -> {t['b']} {t['score_b']:.3f}  "
              f"delta {t['delta']:+.3f} [{t['low']:+.3f}, {t['high']:+.3f}]  {t['verdict']}")
    out = Path(settings.output_dir)
    print(f"report: {out / 'report.html'} (also report.md, report.json)")
    return out / "report.json"
