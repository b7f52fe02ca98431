"""Write DeepSeek-V2-scale synthetic SFT sources: 1.2M helpful + 0.3M safety chats.

    python benchmarks/make_synthetic_mixture.py --out data/synthetic [--helpful 1200000 --safety 300000]

Chats are multi-turn (1-3 exchanges, optional system prompt) of realistic length (a few hundred
tokens), built from a pseudo-vocabulary so no two chats share long word runs by accident. To give
the mixer real work, 1% of rows are exact duplicates of earlier rows, 1% are near duplicates (a
few words changed), and `eval.jsonl` holds 2,000 evaluation prompts, 200 of them copied from
training user turns (decontamination must drop those chats).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

SYLLABLES = ["ka", "lo", "mi", "ren", "tas", "vo", "quel", "dra", "pin", "sor", "ul", "bex", "nai", "tro", "gem",
             "fa", "shu", "yor", "cle", "dun", "ix", "ope", "wra", "zel"]
SAFETY_REFUSALS = [
    "I can't help with that, because it could cause real harm.",
    "I won't provide instructions for that. If you are in danger, please contact local emergency services.",
    "That request could hurt people, so I have to decline.",
]


def vocabulary(rng: np.random.Generator, size: int = 20000) -> np.ndarray:
    words = {"".join(rng.choice(SYLLABLES, size=rng.integers(1, 4))) for _ in range(size * 2)}
    return np.array(sorted(words)[:size])


def sentence(rng, vocab, lo, hi) -> str:
    n = int(rng.integers(lo, hi))
    words = vocab[rng.integers(0, len(vocab), n)]
    return " ".join(words).capitalize() + "."


def chat(rng, vocab, safety: bool) -> list[dict]:
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": "You are a helpful, careful assistant."})
    for _ in range(int(rng.integers(1, 4))):
        question = sentence(rng, vocab, 8, 30)
        messages.append({"role": "user", "content": question})
        if safety:
            answer = str(rng.choice(SAFETY_REFUSALS)) + " " + sentence(rng, vocab, 10, 30)
        else:
            answer = " ".join(sentence(rng, vocab, 8, 25) for _ in range(int(rng.integers(2, 5))))
        messages.append({"role": "assistant", "content": answer})
    return messages


def perturb(messages: list[dict], rng, vocab) -> list[dict]:
    out = [dict(m) for m in messages]
    last = out[-1]
    words = last["content"].split()
    for i in rng.integers(0, len(words), max(1, len(words) // 40)):
        words[i] = str(vocab[rng.integers(0, len(vocab))])
    last["content"] = " ".join(words)
    return out


def write_source(path: Path, n: int, source: str, safety: bool, rng, vocab, eval_pool: list) -> None:
    recent: list[list[dict]] = []
    with path.open("w") as f:
        for i in range(n):
            r = rng.random()
            if r < 0.01 and recent:
                messages = recent[int(rng.integers(0, len(recent)))]
            elif r < 0.02 and recent:
                messages = perturb(recent[int(rng.integers(0, len(recent)))], rng, vocab)
            else:
                messages = chat(rng, vocab, safety)
                if len(recent) < 1000:
                    recent.append(messages)
                elif rng.random() < 0.01:
                    recent[int(rng.integers(0, 1000))] = messages
                if len(eval_pool) < 200 and rng.random() < 0.001:
                    eval_pool.append(next(m["content"] for m in messages if m["role"] == "user"))
            f.write(json.dumps({"id": f"{source}-{i}", "source": source, "messages": messages}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/synthetic")
    parser.add_argument("--helpful", type=int, default=1_200_000)
    parser.add_argument("--safety", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    vocab = vocabulary(rng)
    start = time.perf_counter()
    leaked: list[str] = []
    write_source(out / "helpful.jsonl", args.helpful, "helpful", False, rng, vocab, leaked)
    write_source(out / "safety.jsonl", args.safety, "safety", True, rng, vocab, leaked)
    with (out / "eval.jsonl").open("w") as f:
        for prompt in leaked:
            f.write(json.dumps({"prompt": prompt}) + "\n")
        for _ in range(2000 - len(leaked)):
            f.write(json.dumps({"prompt": sentence(rng, vocab, 10, 30)}) + "\n")
    print(f"wrote {args.helpful:,} helpful + {args.safety:,} safety chats and {2000} eval prompts "
          f"({len(leaked)} leaked) to {out} in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
