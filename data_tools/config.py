"""The `deepalign data mix` recipe.

sources: each a file (JSONL, Parquet, or a saved `datasets` directory) of chat records, with
  `count` (exact rows wanted after filtering) or `fraction` (a multiplier of the rows left after
  filtering: 0.5 keeps half, 3.0 repeats every row three times); neither = every row once.
dedup: exact (normalised text) and near (MinHash over word `shingle`-grams, LSH `bands`,
  candidates verified at estimated Jaccard >= `threshold`), across all sources, first kept.
decontaminate: drop rows sharing a word `ngram`-gram with any prompt in `eval_files` (JSONL or
  Parquet with `prompt` or `messages`); a prompt shorter than `ngram` words must appear whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class SourceSpec:
    path: str
    name: str | None = None
    count: int | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if self.count is not None and self.fraction is not None:
            raise ValueError(f"source {self.path}: give count or fraction, not both")
        if self.count is not None and self.count < 0 or self.fraction is not None and self.fraction < 0:
            raise ValueError(f"source {self.path}: count and fraction must be >= 0")


@dataclass
class DedupConfig:
    exact: bool = True
    near: bool = True
    threshold: float = 0.8
    num_perm: int = 64
    bands: int = 16
    shingle: int = 5


@dataclass
class DecontamConfig:
    eval_files: list[str] = field(default_factory=list)
    ngram: int = 13


@dataclass
class MixRecipe:
    sources: list[SourceSpec]
    output_dir: str
    policy: str = "tiny"
    max_length: int = 2048
    pack: bool = True
    seed: int = 0
    shard_rows: int = 50000
    on_bad_row: Literal["error", "skip"] = "error"
    workers: int = 2
    chunk_rows: int = 1024
    dedup: DedupConfig = field(default_factory=DedupConfig)
    decontaminate: DecontamConfig = field(default_factory=DecontamConfig)
