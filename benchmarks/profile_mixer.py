"""Where `deepalign data mix` spends its time per chat, stage by stage, on one core.

    python benchmarks/profile_mixer.py [--data /tmp/bench/syn50k] [--rows 3000]

Each stage of the mixer's per-chat work runs alone over the same chats (from
benchmarks/make_synthetic_mixture.py), in the order the mixer does it. The script prints
microseconds per chat. This is a profile, not a comparison. The plain path's per-chat work is
the jinja render plus one tokenizer call. The line "encode_batch_fast, no offsets" is the
tokenizer's cost without the character offsets that our assistant masks read today. Rayon runs
on one thread, as it does inside the mixer's worker processes.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from data_tools.chat import _render, assistant_spans, render_chat  # noqa: E402
from data_tools.fingerprints import MinHasher, ngram_hashes, text_hash, word_hashes  # noqa: E402
from data_tools.packing import Packer  # noqa: E402
from data_tools.schema import parse_chat  # noqa: E402
from policy.load import load_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/synthetic")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--policy", default="smollm2-135m-instruct")
    args = parser.parse_args()
    tok = load_tokenizer(args.policy)
    with open(os.path.join(args.data, "helpful.jsonl"), "rb") as f:
        lines = [line for _, line in zip(range(args.rows), f, strict=False)]

    def stage(name, fn):
        start = time.perf_counter()
        out = fn()
        print(f"{name:34s} {(time.perf_counter() - start) / len(lines) * 1e6:8.1f} us/chat", flush=True)
        return out

    rows = stage("json.loads", lambda: [json.loads(x) for x in lines])
    msgs = [r.messages for r in stage("parse_chat (validation)", lambda: [parse_chat(r, "x", "h") for r in rows])]
    texts = ["\n".join(m["content"] for m in ms) for ms in msgs]
    stage("text_hash (exact dedup)", lambda: [text_hash(x) for x in texts])
    words = stage("word_hashes", lambda: [word_hashes(x) for x in texts])
    shingles = stage("5-gram shingles", lambda: [ngram_hashes(w, 5) for w in words])
    hasher = MinHasher(64)
    stage("MinHash, 64 permutations", lambda: [hasher.signature(s) for s in shingles])
    stage("13-gram hashes (decontamination)", lambda: [ngram_hashes(w, 13) for w in words])
    stage("jinja render", lambda: [_render(tok, m, False) for m in msgs])
    stage("assistant_spans (render + find)", lambda: [assistant_spans(tok, m) for m in msgs])
    rendered = [_render(tok, m, False) for m in msgs]
    backend = tok._tokenizer
    encodings = stage("encode, with offsets", lambda: [backend.encode(x, add_special_tokens=False) for x in rendered])
    stage("  .offsets to Python", lambda: [e.offsets for e in encodings])
    stage("encode_batch_fast, no offsets", lambda: backend.encode_batch_fast(rendered, add_special_tokens=False))
    docs = stage("render_chat (ids + mask, all)", lambda: [render_chat(tok, m) for m in msgs])

    def pack():
        packer, out = Packer(2048, 0), []
        for ids, mask in docs:
            out += packer.add(ids, mask)
        return out

    stage("pack (Python lists)", pack)
    print(f"{len(lines)} chats, {np.mean([len(d[0]) for d in docs]):.0f} tokens per chat, tokenizer {args.policy}")


if __name__ == "__main__":
    main()
