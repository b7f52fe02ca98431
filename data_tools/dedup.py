"""Deduplication decisions over fingerprint arrays (pure NumPy): the first occurrence is kept.

- exact: rows whose normalised-text hash appeared on an earlier row;
- near: rows that share an LSH band with an earlier kept row *and* whose estimated Jaccard with
  that row is at least `threshold` (candidates from bands, verified on the signatures).
"""

from __future__ import annotations

import numpy as np

from data_tools.fingerprints import band_hashes, estimated_jaccard


def exact_duplicates(hashes: np.ndarray) -> np.ndarray:
    """(N,) bool: True where the hash occurred on an earlier row."""
    _, first = np.unique(hashes, return_index=True)
    dup = np.ones(len(hashes), dtype=bool)
    dup[first] = False
    return dup


def near_duplicates(signatures: np.ndarray, bands: int, threshold: float, skip: np.ndarray) -> np.ndarray:
    """(N,) bool: True where an earlier, non-skipped row is a near duplicate (est. Jaccard >= threshold)."""
    n = len(signatures)
    dup = np.zeros(n, dtype=bool)
    live = np.flatnonzero(~skip)
    if len(live) == 0:
        return dup
    keys = band_hashes(signatures if len(live) == n else signatures[live], bands)  # no copy when nothing is skipped
    for b in range(bands):
        _, first, inverse = np.unique(keys[:, b], return_index=True, return_inverse=True)
        rep = live[first[inverse]]  # earliest live row with the same band value
        cand = np.flatnonzero(rep != live)
        if len(cand) == 0:
            continue
        rows, reps = live[cand], rep[cand]
        similar = estimated_jaccard(signatures[rows], signatures[reps]) >= threshold
        dup[rows[similar]] = True
    return dup
