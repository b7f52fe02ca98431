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

from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class PackedRow:
    """One training row. loss_mask[t] True = token t is a target; num_tokens = real tokens."""

    input_ids: list[int]
    position_ids: list[int]
    loss_mask: list[bool]
    num_tokens: int


@dataclass
class _OpenRow:
    ids: list[int] = field(default_factory=list)
    pos: list[int] = field(default_factory=list)
    mask: list[bool] = field(default_factory=list)


class Packer:
    """Feed documents with `add`, collect finished rows from its return value and `flush`."""

    def __init__(self, max_length: int, pad_id: int, pool_size: int = 16):
        self.max_length = max_length
        self.pad_id = pad_id
        self.pool_size = pool_size
        self.open: list[_OpenRow] = []
        self.truncated = 0

    def _close(self, row: _OpenRow) -> PackedRow:
        n = len(row.ids)
        pad = self.max_length - n
        return PackedRow(
            input_ids=row.ids + [self.pad_id] * pad,
            position_ids=row.pos + list(range(pad)),
            loss_mask=row.mask + [False] * pad,
            num_tokens=n,
        )

    def add(self, ids: list[int], mask: list[bool]) -> list[PackedRow]:
        # A document's first token is never a target: unpacked it has no left context, and packed
        # it must not be predicted from the previous document.
        mask = [False, *mask[1:len(ids)]]
        if len(ids) > self.max_length:
            ids, mask = ids[: self.max_length], mask[: self.max_length]
            self.truncated += 1
        done = []
        best, best_room = None, self.max_length + 1
        for row in self.open:
            room = self.max_length - len(row.ids) - len(ids)
            if 0 <= room < best_room:
                best, best_room = row, room
        if best is None:
            if len(self.open) >= self.pool_size:
                fullest = max(self.open, key=lambda r: len(r.ids))
                self.open.remove(fullest)
                done.append(self._close(fullest))
            best = _OpenRow()
            self.open.append(best)
        best.ids.extend(ids)
        best.pos.extend(range(len(ids)))
        best.mask.extend(mask)
        if len(best.ids) == self.max_length:
            self.open.remove(best)
            done.append(self._close(best))
        return done

    def flush(self) -> list[PackedRow]:
        rows = [self._close(r) for r in self.open if r.ids]
        self.open = []
        return rows


def pack_documents(docs, max_length: int, pad_id: int) -> Iterator[PackedRow]:
    """Pack an iterable of (ids, mask) documents into rows."""
    packer = Packer(max_length, pad_id)
    for ids, mask in docs:
        yield from packer.add(ids, mask)
    yield from packer.flush()


def unpacked_row(ids: list[int], mask: list[bool], max_length: int) -> PackedRow:
    """One document per row, truncated to max_length, no padding (the collator pads)."""
    ids, mask = ids[:max_length], [False, *mask[1:max_length]]
    return PackedRow(list(ids), list(range(len(ids))), mask[: len(ids)], len(ids))
