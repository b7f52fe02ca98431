"""SFT data: rows from a mixture directory, a chat file (JSONL / Parquet / saved datasets: `messages`
or TRL's prompt / completion pairs, read whole: for small sets; mixtures stream) or the built-in
task, their order, and batching.

Rows have columns input_ids, position_ids, loss_mask, num_tokens (data_tools/packing.py).
`BatchOrder` fixes the order of rows: a permutation per epoch from (seed, epoch); its state is
the number of rows consumed, which is all exact resume needs. Each optimiser step takes one
global batch (micro_batch_size * grad_accum * world_size rows); rank r takes its contiguous
slice of it, so 2 ranks x 1 accumulation step see exactly the rows of 1 rank x 2 steps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_tools.chat import render_chat
from data_tools.packing import PackedRow, pack_documents, unpacked_row
from data_tools.synthetic import arithmetic_chats, held_out_questions
from policy.load import pad_token_id
from sft.config import SFTDataConfig

COLUMNS = ("input_ids", "position_ids", "loss_mask", "num_tokens")


class DataError(ValueError):
    """Training data cannot be used; the message names the file."""


@dataclass
class SFTBatch:
    """input_ids (B, T); position_ids (B, T), restarting at 0 per document; loss_mask (B, T)
    True = token t is a target; sequence_ids (B, T) document index in its row, -1 = padding."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    loss_mask: torch.Tensor
    sequence_ids: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int((self.sequence_ids >= 0).sum())


def rows_to_columns(rows: list[PackedRow]) -> dict[str, list]:
    return {
        "input_ids": [r.input_ids.tolist() for r in rows],
        "position_ids": [r.position_ids.tolist() for r in rows],
        "loss_mask": [r.loss_mask.tolist() for r in rows],
        "num_tokens": [r.num_tokens for r in rows],
    }


def builtin_rows(cfg: SFTDataConfig, tokenizer) -> list[PackedRow]:
    name = cfg.source.removeprefix("builtin:")
    if name != "arithmetic":
        raise DataError(f"data.source: unknown built-in task {cfg.source!r} (builtin:arithmetic)")
    docs = (render_chat(tokenizer, chat) for chat in arithmetic_chats(
        cfg.num_examples, cfg.seed, cfg.max_digits, cfg.worked_fraction,
        exclude=held_out_questions(cfg.max_digits) if cfg.max_digits > 1 else None))  # 1 digit: 155 problems in all
    return _rows(docs, cfg, tokenizer)


def _rows(docs, cfg: SFTDataConfig, tokenizer) -> list[PackedRow]:
    pad = pad_token_id(tokenizer)
    if cfg.pack:
        return list(pack_documents(docs, cfg.max_length, pad))
    return [unpacked_row(ids, mask, cfg.max_length) for ids, mask in docs]


def file_rows(cfg: SFTDataConfig, tokenizer) -> list[PackedRow]:
    """A chat file read as it is (JSONL / Parquet / saved datasets; `messages` or TRL's prompt /
    completion pairs), rendered with the policy's chat template, loss on the assistant turns."""
    from data_tools.readers import read_records
    from data_tools.schema import parse_chat

    docs = (render_chat(tokenizer, rec.messages) for _, rec in read_records(cfg.source, parse_chat))
    return _rows(docs, cfg, tokenizer)


def load_rows(cfg: SFTDataConfig, tokenizer):
    """A `datasets.Dataset` of training rows (memory-mapped when read from a mixture directory)."""
    from datasets import Dataset, concatenate_datasets

    if cfg.source.startswith("builtin:"):
        return Dataset.from_dict(rows_to_columns(builtin_rows(cfg, tokenizer)))
    folder = Path(cfg.source)
    manifest_path = folder / "manifest.json"
    if not folder.exists():
        raise DataError(f"data.source: {folder} not found")
    if not manifest_path.exists():  # a chat file, or a saved dataset, not built by `deepalign data mix`
        rows = file_rows(cfg, tokenizer)
        if not rows:
            raise DataError(f"data.source: {folder} has no rows")
        return Dataset.from_dict(rows_to_columns(rows))
    manifest = json.loads(manifest_path.read_text())
    vocab = manifest.get("tokenizer_vocab_size")
    if vocab is not None and vocab != len(tokenizer):
        raise DataError(
            f"{manifest_path}: built with a tokenizer of {vocab} tokens ({manifest.get('tokenizer')}); "
            f"the policy's has {len(tokenizer)}"
        )
    shards = [Dataset.from_file(str(folder / s["file"])) for s in manifest["shards"]]
    if not shards:
        raise DataError(f"{manifest_path}: no shards")
    return concatenate_datasets(shards)


def collate(rows: dict[str, list]) -> SFTBatch:
    """Right-pad rows to the longest; padding is a separate, masked 'document' (sequence id -1)."""
    lengths = [len(ids) for ids in rows["input_ids"]]
    width = max(lengths)
    b = len(lengths)
    input_ids = torch.zeros(b, width, dtype=torch.long)
    position_ids = torch.zeros(b, width, dtype=torch.long)
    loss_mask = torch.zeros(b, width, dtype=torch.bool)
    sequence_ids = torch.full((b, width), -1, dtype=torch.long)
    for i in range(b):
        n, real = lengths[i], rows["num_tokens"][i]
        input_ids[i, :n] = torch.tensor(rows["input_ids"][i])
        pos = torch.tensor(rows["position_ids"][i])
        position_ids[i, :n] = pos
        position_ids[i, n:] = torch.arange(width - n)  # padding: its own masked document
        loss_mask[i, :n] = torch.tensor(rows["loss_mask"][i], dtype=torch.bool)
        starts = (pos[:real] == 0).long().cumsum(0) - 1
        sequence_ids[i, :real] = starts
    return SFTBatch(input_ids, position_ids, loss_mask, sequence_ids)


class BatchOrder:
    """Which rows each optimiser step reads, reproducibly across restarts."""

    def __init__(self, num_rows: int, seed: int, global_batch: int):
        if num_rows == 0:
            raise DataError("the training data has no rows")
        self.num_rows = num_rows
        self.seed = seed
        self.global_batch = global_batch
        self.consumed = 0

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)

    def next_batch(self) -> list[int]:
        """Row indices of the next global batch (crossing into the next epoch when needed)."""
        out: list[int] = []
        while len(out) < self.global_batch:
            epoch, offset = divmod(self.consumed, self.num_rows)
            take = min(self.global_batch - len(out), self.num_rows - offset)
            out.extend(self._permutation(epoch)[offset : offset + take].tolist())
            self.consumed += take
        return out

    @property
    def epoch(self) -> float:
        return self.consumed / self.num_rows

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "seed": self.seed, "num_rows": self.num_rows}

    def load_state_dict(self, state: dict) -> None:
        if state["num_rows"] != self.num_rows or state["seed"] != self.seed:
            raise DataError(
                f"checkpoint was taken on {state['num_rows']} rows with seed {state['seed']}; "
                f"the data now has {self.num_rows} rows with seed {self.seed}"
            )
        self.consumed = state["consumed"]


def rank_micro_batches(indices: list[int], rank: int, world_size: int, micro_batch_size: int) -> list[list[int]]:
    """This rank's slice of a global batch, split into micro-batches."""
    per_rank = len(indices) // world_size
    mine = indices[rank * per_rank : (rank + 1) * per_rank]
    return [mine[i : i + micro_batch_size] for i in range(0, len(mine), micro_batch_size)]
