"""Packing tokenised documents into fixed-length rows, streaming, with bounded memory.

A packed row holds whole documents back to back; `position_ids` restart at 0 for each
document, which is how the policy keeps documents from attending to each other (transformers
builds a block-diagonal mask from restarting positions when no attention mask and no cache is
given). The tail of a row is padding: `num_tokens` says where real tokens end, its loss mask is
False.

Best-fit over a small pool of open rows: a document goes into the open row it fills best; when
the pool is full the fullest row is closed. Documents longer than the row are truncated
(counted).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class PackedRow:
    """One training row. loss_mask[t] True = token t is a target; num_tokens = real tokens.
    Arrays: input_ids and position_ids int32, loss_mask bool."""

    input_ids: np.ndarray
    position_ids: np.ndarray
    loss_mask: np.ndarray
    num_tokens: int


class _OpenRow:
    """A row being filled: preallocated columns and how many tokens they hold."""

    def __init__(self, max_length: int):
        self.ids = np.empty(max_length, dtype=np.int32)
        self.pos = np.empty(max_length, dtype=np.int32)
        self.mask = np.empty(max_length, dtype=np.bool_)
        self.n = 0


class Packer:
    """Feed documents with `add`, collect finished rows from its return value and `flush`."""

    def __init__(self, max_length: int, pad_id: int, pool_size: int = 16):
        self.max_length = max_length
        self.pad_id = pad_id
        self.pool_size = pool_size
        self.open: list[_OpenRow] = []
        self.truncated = 0
        self._arange = np.arange(max_length, dtype=np.int32)

    def _close(self, row: _OpenRow) -> PackedRow:
        n = row.n
        row.ids[n:] = self.pad_id
        row.pos[n:] = self._arange[: self.max_length - n]
        row.mask[n:] = False
        return PackedRow(input_ids=row.ids, position_ids=row.pos, loss_mask=row.mask, num_tokens=n)

    def add(self, ids: Sequence[int] | np.ndarray, mask: Sequence[bool] | np.ndarray) -> list[PackedRow]:
        k = min(len(ids), self.max_length)
        if len(ids) > self.max_length:
            self.truncated += 1
        done = []
        best, best_room = None, self.max_length + 1
        for row in self.open:
            room = self.max_length - row.n - k
            if 0 <= room < best_room:
                best, best_room = row, room
        if best is None:
            if len(self.open) >= self.pool_size:
                fullest = max(self.open, key=lambda r: r.n)
                self.open.remove(fullest)
                done.append(self._close(fullest))
            best = _OpenRow(self.max_length)
            self.open.append(best)
        n = best.n
        best.ids[n : n + k] = ids[:k]
        best.pos[n : n + k] = self._arange[:k]
        best.mask[n : n + k] = mask[:k]
        # A document's first token is never a target: unpacked it has no left context, and packed
        # it must not be predicted from the previous document.
        best.mask[n : n + 1] = False
        best.n = n + k
        if best.n == self.max_length:
            self.open.remove(best)
            done.append(self._close(best))
        return done

    def flush(self) -> list[PackedRow]:
        rows = [self._close(r) for r in self.open if r.n]
        self.open = []
        return rows


def pack_documents(docs, max_length: int, pad_id: int) -> Iterator[PackedRow]:
    """Pack an iterable of (ids, mask) documents into rows."""
    packer = Packer(max_length, pad_id)
    for ids, mask in docs:
        yield from packer.add(ids, mask)
    yield from packer.flush()


def unpacked_row(ids: Sequence[int] | np.ndarray, mask: Sequence[bool] | np.ndarray, max_length: int) -> PackedRow:
    """One document per row, truncated to max_length, no padding (the collator pads)."""
    n = min(len(ids), max_length)
    row_mask = np.array(mask[:n], dtype=np.bool_)
    row_mask[:1] = False
    return PackedRow(np.array(ids[:n], dtype=np.int32), np.arange(n, dtype=np.int32), row_mask, n)
