"""Text fingerprints as pure NumPy functions: word hashes, n-gram hashes, MinHash signatures.

Everything is deterministic across processes (crc32 word hashes, fixed-seed permutations), so a
mixture built twice is identical. Used for exact dedup (whole-text hash), near-dedup (MinHash
over word 5-gram shingles, LSH bands, verified by estimated Jaccard) and decontamination (word
13-gram overlap with evaluation prompts).
"""

from __future__ import annotations

import hashlib
import re
import zlib

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)
_MERSENNE = np.uint64((1 << 61) - 1)
_MIX = np.uint64(0x9E3779B97F4A7C15)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _digest(words: list[str]) -> int:
    return int.from_bytes(hashlib.blake2b(" ".join(words).encode(), digest_size=8).digest(), "little")


def _crc32s(words: list[str]) -> np.ndarray:
    return np.fromiter((zlib.crc32(w.encode()) for w in words), dtype=np.uint64, count=len(words))


def normalize(text: str) -> str:
    return " ".join(_words(text))


def text_hash(text: str) -> int:
    """64-bit hash of the normalised text (exact dedup)."""
    return _digest(_words(text))


def word_hashes(text: str) -> np.ndarray:
    """uint64 hash per lower-cased word."""
    return _crc32s(_words(text))


def text_and_word_hashes(text: str) -> tuple[int, np.ndarray]:
    """(text_hash(text), word_hashes(text)) from one pass over the words."""
    words = _words(text)
    return _digest(words), _crc32s(words)


def ngram_hashes(words: np.ndarray, n: int) -> np.ndarray:
    """uint64 hash of every run of n consecutive words (a polynomial over the word hashes)."""
    if len(words) < n:
        return words[:0] if len(words) == 0 else ngram_hashes(np.pad(words, (0, n - len(words))), n)
    with np.errstate(over="ignore"):
        out = np.zeros(len(words) - n + 1, dtype=np.uint64)
        for i in range(n):
            out = out * _MIX + words[i : len(words) - n + 1 + i]
    return out


class MinHasher:
    """MinHash signatures with `num_perm` universal hash functions h(x) = (a x + b) mod 2^61-1."""

    def __init__(self, num_perm: int = 64, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 1 << 61, num_perm, dtype=np.uint64)
        self.b = rng.integers(0, 1 << 61, num_perm, dtype=np.uint64)
        self.num_perm = num_perm

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        """(num_perm,) uint32: per hash function, the minimum over the shingles."""
        if len(shingles) == 0:
            return np.full(self.num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
        x = (shingles % _MERSENNE)[:, None]
        with np.errstate(over="ignore"):
            h = (x * self.a + self.b) % _MERSENNE
        return (h.min(axis=0) >> np.uint64(29)).astype(np.uint32)


def band_hashes(signatures: np.ndarray, bands: int) -> np.ndarray:
    """(N, bands) uint64: each band of rows of the signature hashed to one number (LSH)."""
    n, num_perm = signatures.shape
    if num_perm % bands:
        raise ValueError(f"num_perm={num_perm} is not divisible by bands={bands}")
    rows = signatures.reshape(n, bands, num_perm // bands)
    out = np.zeros((n, bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for r in range(rows.shape[2]):  # one column at a time: never a uint64 copy of the whole matrix
            out *= _MIX
            out += rows[:, :, r]
    return out


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fraction of equal MinHash values, row by row: an unbiased estimate of Jaccard similarity."""
    return (a == b).mean(axis=-1)


def any_in_sorted(values: np.ndarray, table: np.ndarray) -> bool:
    """Whether any of values occurs in table (sorted, unique): a binary search, no sorting."""
    if len(values) == 0 or len(table) == 0:
        return False
    pos = np.minimum(np.searchsorted(table, values), len(table) - 1)
    return bool((table[pos] == values).any())
