"""data_tools: schema errors name file and row, readers for three formats, fingerprints, the mixer."""

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_tools.config import DecontamConfig, MixRecipe, SourceSpec
from data_tools.dedup import exact_duplicates, near_duplicates
from data_tools.fingerprints import (
    MinHasher,
    estimated_jaccard,
    ngram_hashes,
    text_and_word_hashes,
    text_hash,
    word_hashes,
)
from data_tools.mix import build_mixture, sampling_plan
from data_tools.readers import count_rows, read_records
from data_tools.schema import BadRowError, parse_chat, parse_prompt


def _chat(i: int, words: int = 40) -> dict:
    body = " ".join(f"w{i}x{j}" for j in range(words))
    return {"messages": [{"role": "user", "content": f"question {i} {body}"},
                         {"role": "assistant", "content": f"answer {i} {body}"}]}


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_schema_errors_name_file_and_row():
    with pytest.raises(BadRowError, match=r"f.jsonl:3: no assistant message"):
        parse_chat({"messages": [{"role": "user", "content": "hi"}]}, "f.jsonl:3")
    with pytest.raises(BadRowError, match=r"f:1: messages\[0\] must be"):
        parse_chat({"messages": [{"role": "bot", "content": "hi"}]}, "f:1")
    with pytest.raises(BadRowError, match="'category' must be one of"):
        parse_prompt({"prompt": "2+2?", "category": "sports"}, "f:1")
    rec = parse_prompt({"prompt": "2+2?", "answer": 4, "category": "math"}, "f:1", "arith")
    assert (rec.columns, rec.source) == ({"answer": 4, "category": "math"}, "arith")


def test_readers_jsonl_parquet_datasets_and_bad_rows(tmp_path):
    rows = [_chat(i) for i in range(5)]
    jsonl = _jsonl(tmp_path / "a.jsonl", [*rows[:2], "{not json", {"messages": []}, *rows[2:]])
    with pytest.raises(BadRowError, match=r"a.jsonl:3: invalid JSON"):
        list(read_records(jsonl, parse_chat))
    from collections import Counter

    counts = Counter()
    got = [r for _, r in read_records(jsonl, parse_chat, "skip", counts, "a") if r is not None]
    assert len(got) == 5 and counts["bad_row"] == 2 and count_rows(jsonl) == 7

    parquet = tmp_path / "b.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    got = [r.messages for _, r in read_records(parquet, parse_chat, default_source="b")]
    assert got == [r["messages"] for r in rows]
    from datasets import Dataset

    Dataset.from_list(rows).save_to_disk(str(tmp_path / "c"))
    assert len(list(read_records(tmp_path / "c", parse_chat, default_source="c"))) == 5 == count_rows(tmp_path / "c")


def test_fingerprints_and_dedup_decisions():
    assert text_hash("Hello,  World!") == text_hash("hello world")
    for text in ("Hello,  World!", "", "naïve café, 日本語 x_1 x-1", "a\nb\tc"):
        h, words = text_and_word_hashes(text)
        assert h == text_hash(text) and np.array_equal(words, word_hashes(text))
    # against hashlib and zlib directly: blake2b of the normalised text, crc32 per word
    h, words = text_and_word_hashes("Hello,  World!")
    assert h == int.from_bytes(hashlib.blake2b(b"hello world", digest_size=8).digest(), "little")
    assert words.tolist() == [zlib.crc32(b"hello"), zlib.crc32(b"world")]
    hashes = np.array([1, 2, 1, 3, 2], dtype=np.uint64)
    assert exact_duplicates(hashes).tolist() == [False, False, True, False, True]
    base = " ".join(f"t{i}" for i in range(60))
    near = base.replace("t30", "zz")  # 5 of 56 shingles differ: Jaccard 51/61 = 0.84
    far = " ".join(f"u{i}" for i in range(60))
    hasher = MinHasher(128)
    sigs = np.stack([hasher.signature(ngram_hashes(word_hashes(t), 5)) for t in (base, near, far)])
    assert abs(estimated_jaccard(sigs[0], sigs[1]) - 51 / 61) < 0.1
    assert estimated_jaccard(sigs[0], sigs[2]) < 0.05
    assert near_duplicates(sigs, 16, 0.7, np.zeros(3, bool)).tolist() == [False, True, False]
    assert near_duplicates(sigs, 16, 0.95, np.zeros(3, bool)).tolist() == [False, False, False]


def test_sampling_plan_counts_and_spread():
    rng = np.random.default_rng(0)
    keep = np.array([1, 0, 1, 1, 1], dtype=np.int32)
    down = sampling_plan(keep, 2, rng)
    assert down.sum() == 2 and down[1] == 0 and down.max() == 1
    up = sampling_plan(keep, 10, rng)  # 4 kept rows: 2 each, plus 2 rows a third time
    assert up.sum() == 10 and up[1] == 0 and sorted(up[keep == 1].tolist()) == [2, 2, 3, 3]


def test_mix_end_to_end(tmp_path):
    helpful = [_chat(i) for i in range(60)]
    helpful.append(helpful[3])  # exact duplicate
    near = json.loads(json.dumps(helpful[5]))
    near["messages"][1]["content"] = near["messages"][1]["content"].replace("w5x20", "changed")
    helpful.append(near)  # near duplicate
    safety = [_chat(100 + i) for i in range(20)]
    _jsonl(tmp_path / "helpful.jsonl", [*helpful, {"messages": "oops"}])
    pq.write_table(pa.Table.from_pylist(safety), tmp_path / "safety.parquet")
    leaked = helpful[10]["messages"][0]["content"]
    _jsonl(tmp_path / "eval.jsonl", [{"prompt": leaked}, {"prompt": "an unrelated evaluation question"}])

    recipe = MixRecipe(
        sources=[SourceSpec(str(tmp_path / "helpful.jsonl"), count=40),
                 SourceSpec(str(tmp_path / "safety.parquet"), fraction=2.5)],
        output_dir=str(tmp_path / "mix"), policy="tiny", max_length=512, on_bad_row="skip", workers=1,
        chunk_rows=16, decontaminate=DecontamConfig(eval_files=[str(tmp_path / "eval.jsonl")]),
    )
    manifest = build_mixture(recipe)
    h, s = manifest["sources"]["helpful"], manifest["sources"]["safety"]
    dropped = (h["bad_row"], h["exact_duplicate"], h["near_duplicate"], h["contaminated"])
    assert h["rows_in"] == 63 and dropped == (1, 1, 1, 1)
    assert h["kept"] == 59 and h["rows_out"] == 40
    assert s["kept"] == 20 and s["rows_out"] == 50
    from datasets import Dataset, concatenate_datasets

    out = Path(recipe.output_dir)
    data = concatenate_datasets([Dataset.from_file(str(out / x["file"])) for x in manifest["shards"]])
    assert len(data) == manifest["rows"] and all(len(r) == 512 for r in data["input_ids"])
    rows_and_lengths = zip(data["position_ids"], data["num_tokens"], strict=True)
    docs = sum(sum(1 for p in row[:n] if p == 0) for row, n in rows_and_lengths)
    assert docs == 90  # every emitted chat, packed whole
    # each packed document is a chat rendered as render_chat renders it, mask and all (truncated
    # to the row's 512 tokens)
    from data_tools.chat import render_chat
    from policy.tokenizer import byte_chat_tokenizer

    tok = byte_chat_tokenizer()
    rendered = {tuple(ids[:512]): [False, *mask[1:512]] for ids, mask in
                (render_chat(tok, c["messages"]) for c in [*helpful, *safety])}
    for ids, pos, mask, n in zip(data["input_ids"], data["position_ids"], data["loss_mask"], data["num_tokens"],
                                 strict=True):
        starts = [t for t in range(n) if pos[t] == 0] + [n]
        for a, b in zip(starts, starts[1:], strict=False):
            assert rendered[tuple(ids[a:b])] == mask[a:b]
    assert not (out.parent / "mix.tmp").exists()

    bad = MixRecipe(sources=[SourceSpec(str(tmp_path / "helpful.jsonl"))], output_dir=str(tmp_path / "m2"),
                    policy="tiny", workers=1)
    with pytest.raises(BadRowError, match=r"helpful.jsonl:63: 'messages' must be a non-empty list"):
        build_mixture(bad)
    assert not (tmp_path / "m2").exists()

    # The trainer reads the mixture directly.
    from sft.config import SFTDataConfig
    from sft.data import load_rows

    rows = load_rows(SFTDataConfig(source=str(out)), byte_chat_tokenizer())
    assert len(rows) == manifest["rows"]


def test_mixer_workers_never_import_torch(tmp_path):
    """A spawned worker imports only data_tools.mix_worker and unpickles the tokenizer: importing
    torch would cost each worker seconds before its first chunk."""
    import pickle
    import subprocess
    import sys

    from policy.tokenizer import byte_chat_tokenizer

    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    tok = byte_chat_tokenizer()
    (tmp_path / "tok.pkl").write_bytes(pickle.dumps(tok))
    np.savez(tmp_path / "index.npz", **{"13": np.array([1, 2], dtype=np.uint64)})
    code = ("import sys; from data_tools import mix_worker as w; "
            f"w.init_worker({str(tmp_path / 'tok.pkl')!r}, 8, 5, {str(tmp_path / 'index.npz')!r}); "
            f"ids, mask, n = w.render_chunk([{chat!r}]); "
            "print(int(n[0]), int(mask.sum()), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    tokens = len(tok.apply_chat_template(chat, tokenize=True, return_dict=False))
    assert out == [str(tokens), "3", "False"]  # the targets are "y", "o", "<|im_end|>"


def test_inspect_mixture_writes_histogram(tmp_path):
    _jsonl(tmp_path / "a.jsonl", [_chat(i) for i in range(30)])
    build_mixture(MixRecipe(sources=[SourceSpec(str(tmp_path / "a.jsonl"))], output_dir=str(tmp_path / "mix"),
                            policy="tiny", max_length=1024, workers=1))
    from data_tools.inspect import inspect

    lines = inspect(str(tmp_path / "mix"), samples=1)
    assert any(line.startswith("rows:") for line in lines)
    assert (tmp_path / "mix" / "lengths.png").stat().st_size > 1000
    assert any("[targets] answer" in line for line in lines)  # assistant-only targets
