"""What `deepalign policy convert` reports for the dense model, the converted one and the healed one.

Owns `evaluate` and `print_table`: KV-cache elements per token per layer (policy/info.py), the
held-out perplexity of the teacher's replies (each model scores the same held-out chats: reply
tokens only, prompts are context), the KL from the dense model's next-token distribution on those
replies, and greedy two-digit arithmetic accuracy on the GRPO recipes' held-out problems
(`builtin:arithmetic`, max_digits 2, the held-out seed), scored by `math_accuracy`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from convert.data import ChatRow
from convert.heal import forward_kl_sum, pad_batch
from data_tools.prompts import builtin_prompts
from data_tools.synthetic import HELD_OUT_SEED
from policy.info import policy_figures


def arithmetic_prompts(n: int, seed: int = 0):
    """The GRPO arithmetic recipes' held-out problems (data.seed 0, max_digits 2)."""
    return builtin_prompts("builtin:arithmetic", n, seed + HELD_OUT_SEED, max_digits=2)


@torch.no_grad()
def reply_scores(model, rows: list[ChatRow], teacher_logits=None, batch_size: int = 8) -> dict:
    """{nll, tokens} over the reply tokens of `rows`; with `teacher_logits` (a callable giving the
    dense model's logits for a batch) also the summed forward KL at those positions."""
    nll, kl, count = 0.0, 0.0, 0
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        ids, mask = pad_batch(chunk, 0)
        target = torch.zeros_like(mask)
        for j, r in enumerate(chunk):
            target[j, r.reply_start - 1 : len(r.ids) - 1] = True  # position t predicts token t + 1
        logits = model(input_ids=ids, attention_mask=mask.long()).logits.float()
        logp = F.log_softmax(logits[:, :-1][target[:, :-1]], dim=-1)
        nll -= logp.gather(-1, ids[:, 1:][target[:, :-1]].unsqueeze(-1)).sum().item()
        if teacher_logits is not None:
            kl += forward_kl_sum(logits[:, :-1], teacher_logits(ids, mask)[:, :-1], target[:, :-1]).item()
        count += int(target[:, :-1].sum())
    return {"nll": nll, "kl": kl, "tokens": count}


def arithmetic_accuracy(model, tokenizer, n: int, seed: int = 0, max_new_tokens: int = 48) -> float:
    from rewards.math_accuracy import math_accuracy
    from rollout.engine import SamplingConfig
    from rollout.local import generate

    rows = arithmetic_prompts(n, seed)
    prompts = [r.prompt for r in rows]
    out = generate(model, tokenizer, prompts, SamplingConfig(max_new_tokens=max_new_tokens).greedy())
    scores = math_accuracy(prompts, out.texts, answer=[r.columns["answer"] for r in rows])
    return sum(s or 0.0 for s in scores) / len(scores)


def evaluate(model, tokenizer, eval_rows: list[ChatRow], arithmetic: int, teacher=None) -> dict:
    """The report's figures for one model (`teacher`: the dense model, for the KL column). The
    arithmetic problems are always the GRPO recipes' held-out ones (data.seed 0), whatever the
    conversion's seed, so figures compare across conversions and with GRPO runs."""
    was_training = model.training
    model.eval()
    teacher_logits = None
    if teacher is not None:
        teacher_logits = lambda ids, mask: teacher(input_ids=ids, attention_mask=mask.long()).logits  # noqa: E731
    scores = reply_scores(model, eval_rows, teacher_logits)
    out = {
        "kv_elements_per_token_per_layer": policy_figures(model.config)["kv_cache_elements_per_token_per_layer"],
        "perplexity": math.exp(scores["nll"] / max(scores["tokens"], 1)),
        "kl_to_dense": scores["kl"] / max(scores["tokens"], 1) if teacher is not None else 0.0,
        "arithmetic_accuracy": arithmetic_accuracy(model, tokenizer, arithmetic) if arithmetic else None,
        "eval_reply_tokens": scores["tokens"],
    }
    model.train(was_training)
    return out


HEADER = f"{'model':<11} {'KV/token/layer':>14} {'perplexity':>10} {'KL to dense':>11} {'2-digit acc.':>12}"


def table_row(name: str, r: dict) -> str:
    acc = "-" if r["arithmetic_accuracy"] is None else f"{r['arithmetic_accuracy']:.3f}"
    return (f"{name:<11} {r['kv_elements_per_token_per_layer']:>14} {r['perplexity']:>10.3f} "
            f"{r['kl_to_dense']:>11.3f} {acc:>12}")


def print_table(results: dict[str, dict]) -> None:
    """One row per model: KV elements, perplexity, KL to dense, arithmetic accuracy."""
    print(HEADER)
    for name, r in results.items():
        print(table_row(name, r))
