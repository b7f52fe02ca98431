"""Training shards: Arrow IPC stream files (memory-mapped by `datasets.Dataset.from_file`) and a
manifest.json that lists them with the settings they were built with.

The whole output is written into `<output_dir>.tmp/` and renamed into place when complete, so an
interrupted build never leaves a directory that looks finished.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa

from data_tools.packing import PackedRow

SCHEMA = pa.schema([
    ("input_ids", pa.list_(pa.int32())),
    ("position_ids", pa.list_(pa.int32())),
    ("loss_mask", pa.list_(pa.bool_())),
    ("num_tokens", pa.int32()),
])


def _flat(rows: list[PackedRow], column: str, dtype) -> np.ndarray:
    """One column of the rows as one flat array (Arrow builds its lists from offsets into it, which
    is several times faster than converting nested Python lists)."""
    return np.concatenate([getattr(r, column) for r in rows]).astype(dtype, copy=False)


class ShardWriter:
    """Append rows; a new shard file starts every `shard_rows` rows."""

    def __init__(self, output_dir: Path, shard_rows: int, batch_rows: int = 1024):
        self.final_dir = Path(output_dir)
        self.dir = self.final_dir.with_name(self.final_dir.name + ".tmp")
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.shard_rows = shard_rows
        self.batch_rows = batch_rows
        self.shards: list[dict] = []
        self._writer = None
        self._sink = None
        self._pending: list[PackedRow] = []
        self._in_shard = 0

    def _open(self) -> None:
        name = f"shard-{len(self.shards):05d}.arrow"
        self._sink = pa.OSFile(str(self.dir / name), "wb")
        self._writer = pa.ipc.new_stream(self._sink, SCHEMA)
        self.shards.append({"file": name, "rows": 0, "tokens": 0, "target_tokens": 0})
        self._in_shard = 0

    def _flush(self) -> None:
        if not self._pending:
            return
        rows = self._pending
        offsets = np.zeros(len(rows) + 1, dtype=np.int32)
        np.cumsum([len(r.input_ids) for r in rows], out=offsets[1:])
        mask = _flat(rows, "loss_mask", np.bool_)
        batch = pa.record_batch([
            pa.ListArray.from_arrays(offsets, _flat(rows, "input_ids", np.int32)),
            pa.ListArray.from_arrays(offsets, _flat(rows, "position_ids", np.int32)),
            pa.ListArray.from_arrays(offsets, mask),
            pa.array([r.num_tokens for r in rows], type=pa.int32()),
        ], schema=SCHEMA)
        self._writer.write_batch(batch)
        shard = self.shards[-1]
        shard["rows"] += len(rows)
        shard["tokens"] += sum(r.num_tokens for r in rows)
        shard["target_tokens"] += int(mask.sum())
        self._pending = []

    def _close_shard(self) -> None:
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = None

    def write(self, row: PackedRow) -> None:
        if self._writer is None or self._in_shard >= self.shard_rows:
            self._close_shard()
            self._open()
        self._pending.append(row)
        self._in_shard += 1
        if len(self._pending) >= self.batch_rows:
            self._flush()

    def finish(self, manifest: dict) -> Path:
        """Close the last shard, write manifest.json, and move the build into place."""
        self._close_shard()
        manifest = {**manifest, "shards": self.shards,
                    "rows": sum(s["rows"] for s in self.shards),
                    "tokens": sum(s["tokens"] for s in self.shards),
                    "target_tokens": sum(s["target_tokens"] for s in self.shards)}
        (self.dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if self.final_dir.exists():
            shutil.rmtree(self.final_dir)
        self.dir.rename(self.final_dir)
        return self.final_dir
