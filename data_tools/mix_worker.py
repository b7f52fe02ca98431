"""What the mixer's worker processes run: fingerprints of chats (pass 1) and chats rendered into
token ids and loss masks (pass 2).

The workers are spawned, so each imports this module afresh: it imports NumPy, the fingerprint
and chat modules and (through the pickled tokenizer) transformers' tokenizer classes, never torch,
which would cost each worker seconds before its first chunk. The settings arrive as files, because
spawn hands a worker its arguments through a pipe, and arguments larger than the pipe's buffer
hold the parent until that worker has started, so the workers would start one after another.
"""

from __future__ import annotations

import pickle

import numpy as np

from data_tools.chat import render_chat_arrays
from data_tools.fingerprints import MinHasher, any_in_sorted, ngram_hashes, text_and_word_hashes

_W: dict = {}


def init_worker(tokenizer_file: str, num_perm: int, shingle: int, eval_index_file: str) -> None:
    """Pool initializer: the MinHasher, the evaluation n-gram index and the tokenizer (a pickle)."""
    _W["hasher"] = MinHasher(num_perm)
    _W["shingle"] = shingle
    with np.load(eval_index_file) as saved:
        _W["eval"] = {int(k): saved[k] for k in saved.files}
    with open(tokenizer_file, "rb") as f:
        _W["tokenizer"] = pickle.load(f)


def chat_text(messages: list[dict]) -> str:
    """The text a chat is fingerprinted by: its turns' contents, one per line."""
    return "\n".join(m["content"] for m in messages)


def fingerprint_chunk(chunk: list[tuple[int, list[dict]]]):
    """(row numbers, exact hashes, MinHash signatures, contaminated flags) of (row, messages) pairs."""
    hasher, shingle, index = _W["hasher"], _W["shingle"], _W["eval"]
    rows = np.array([n for n, _ in chunk], dtype=np.int64)
    exact = np.empty(len(chunk), dtype=np.uint64)
    sigs = np.empty((len(chunk), hasher.num_perm), dtype=np.uint32)
    contaminated = np.zeros(len(chunk), dtype=bool)
    for i, (_, messages) in enumerate(chunk):
        text = chat_text(messages)
        exact[i], words = text_and_word_hashes(text)
        sigs[i] = hasher.signature(ngram_hashes(words, shingle))
        for n, table in index.items():
            if len(words) >= n and any_in_sorted(ngram_hashes(words, n), table):
                contaminated[i] = True
                break
    return rows, exact, sigs, contaminated


def render_chunk(chunk: list[list[dict]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The chats' token ids (int32) and loss masks (bool), each flat and back to back, and the
    number of tokens of each chat: three arrays cross the pipe instead of a list per chat."""
    docs = render_chat_arrays(_W["tokenizer"], chunk)
    lengths = np.array([len(ids) for ids, _ in docs], dtype=np.int64)
    return np.concatenate([ids for ids, _ in docs]), np.concatenate([mask for _, mask in docs]), lengths
