"""Scoring with a reward model: any Hugging Face sequence classifier with one output (including
transformers' `DeepseekV2ForSequenceClassification`), batched, with the policy's chat template.

`RewardModelScorer` works in-process; `reward_model(...)` is its TRL-signature reward function
(scorers are cached per checkpoint). GRPO can serve the same scorer on its own Ray actor
(`ray_actor: true`, grpo/cluster.py `reward_model_actor`).
"""

from __future__ import annotations

import threading

import torch

from rewards.text import completion_text, prompt_text


def render_pair(tokenizer, prompt, completion) -> str:
    """The (prompt, completion) conversation as the chat template renders it."""
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt_text(prompt)}]
    messages = [*messages, {"role": "assistant", "content": completion_text(completion)}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def score_batch(model, tokenizer, prompts: list, completions: list, max_length: int) -> torch.Tensor:
    """(B,) fp32 rewards of one batch (right-padded; the head reads the last real token). Keeps grad."""
    enc = tokenizer([render_pair(tokenizer, p, c) for p, c in zip(prompts, completions, strict=True)],
                    return_tensors="pt", padding=True, truncation=True, max_length=max_length,
                    add_special_tokens=False, padding_side="right")
    device = next(model.parameters()).device
    return model(**{k: v.to(device) for k, v in enc.items()}).logits[:, 0].float()


class RewardModelScorer:
    def __init__(self, path: str, batch_size: int = 8, max_length: int = 1024, device: str = "cpu",
                 dtype: str = "float32"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=getattr(torch, dtype)).to(device).eval()
        if self.model.config.num_labels != 1:
            raise ValueError(f"{path}: a reward model has one output, this one has {self.model.config.num_labels}")
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device

    @torch.no_grad()
    def score(self, prompts: list, completions: list) -> list[float]:
        scores: list[float] = []
        for i in range(0, len(completions), self.batch_size):
            batch = slice(i, i + self.batch_size)
            scores += score_batch(self.model, self.tokenizer, prompts[batch], completions[batch],
                                  self.max_length).tolist()
        return scores


_SCORERS: dict[tuple, RewardModelScorer] = {}
_LOCK = threading.Lock()


def reward_model(prompts, completions, path: str | None = None, batch_size: int = 8, max_length: int = 1024,
                 device: str = "cpu", **_columns) -> list[float]:
    """TRL-signature reward: the reward model at `path` scores each (prompt, completion)."""
    if path is None:
        raise ValueError("reward_model needs params: {path: <reward model checkpoint>}")
    key = (path, batch_size, max_length, device)
    with _LOCK:
        if key not in _SCORERS:
            _SCORERS[key] = RewardModelScorer(path, batch_size, max_length, device)
    return _SCORERS[key].score(prompts, completions)
