"""Streaming readers for JSONL, Parquet and `datasets` datasets saved on disk.

A saved DatasetDict reads as its `train` split. `iter_rows(path)` yields (row_number, raw_row)
without loading the file into memory;
`read_records(path, parse, on_bad_row, counts)` validates each row with a schema parser and
either raises (naming file and row) or skips and counts it (`on_bad_row: skip`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from data_tools.schema import BadRowError

T = TypeVar("T")


def source_kind(path: str | Path) -> str:
    path = Path(path)
    if path.is_dir():
        if any((path / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return "datasets"
        raise BadRowError(f"{path}: a directory that is not a saved `datasets` dataset")
    if path.suffix in (".jsonl", ".json"):
        return "jsonl"
    if path.suffix == ".parquet":
        return "parquet"
    raise BadRowError(f"{path}: unknown format (expected .jsonl, .parquet or a saved datasets directory)")


def iter_rows(path: str | Path, batch_rows: int = 4096) -> Iterator[tuple[int, object]]:
    """(row number starting at 1, raw row) for every row of the file, streaming."""
    path = Path(path)
    if not path.exists():
        raise BadRowError(f"{path}: file not found")
    kind = source_kind(path)
    if kind == "jsonl":
        with path.open("rb") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield n, json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    yield n, BadRowError(f"{path}:{n}: invalid JSON ({exc})")
    elif kind == "parquet":
        import pyarrow.parquet as pq

        n = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            for row in batch.to_pylist():
                n += 1
                yield n, row
    else:
        for n, row in enumerate(load_dataset_dir(path), 1):
            yield n, row


def load_dataset_dir(path: Path):
    """A dataset saved with `save_to_disk`; of a DatasetDict, its `train` split (or its only one)."""
    from datasets import DatasetDict, load_from_disk

    dataset = load_from_disk(str(path))
    if isinstance(dataset, DatasetDict):
        splits = list(dataset)
        if "train" not in dataset and len(splits) != 1:
            raise BadRowError(f"{path}: a DatasetDict without a 'train' split (splits: {', '.join(splits)}); "
                              "save the split you want with save_to_disk")
        dataset = dataset["train" if "train" in dataset else splits[0]]
    return dataset


def count_rows(path: str | Path) -> int:
    """Rows in a source, cheaply (line count, Parquet metadata, dataset length)."""
    path = Path(path)
    kind = source_kind(path)
    if kind == "jsonl":
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())
    if kind == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    return len(load_dataset_dir(path))


def read_records(
    path: str | Path,
    parse: Callable[[object, str, str], T],
    on_bad_row: str = "error",
    counts: Counter | None = None,
    default_source: str = "",
) -> Iterator[tuple[int, T | None]]:
    """(row number, record) per row; a bad row raises, or yields None and is counted when skipping.

    Rows without a `source` take `default_source`, or the file's name.
    """
    default_source = default_source or Path(path).stem
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    for n, row in iter_rows(path):
        try:
            if isinstance(row, BadRowError):
                raise row
            yield n, parse(row, f"{path}:{n}", default_source)
        except BadRowError:
            if on_bad_row == "error":
                raise
            if counts is not None:
                counts["bad_row"] += 1
            yield n, None
