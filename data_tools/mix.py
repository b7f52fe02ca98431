"""`deepalign data mix`: sources → validated, deduplicated, decontaminated, sampled, rendered with
the policy's chat template, masked for assistant-only loss, packed, and written as Arrow shards.

Two streaming passes keep memory bounded (a few hundred bytes per input row, never the text):
1. scan: read every source, validate rows, and keep per row only its fingerprints (text hash,
   MinHash signature, contamination flag) in NumPy arrays; then decide duplicates over the arrays
   and draw each source's sampling plan (how many times each surviving row is emitted);
2. emit: read the sources again, interleave them at random in proportion to what each still has
   to emit (repeats of a row go to later rounds, so copies do not sit side by side), render and
   tokenise in worker processes, pack, and write shards.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import pickle
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from data_tools.chat import token_byte_lengths
from data_tools.config import MixRecipe
from data_tools.dedup import exact_duplicates, near_duplicates
from data_tools.fingerprints import ngram_hashes, word_hashes
from data_tools.mix_worker import fingerprint_chunk, init_worker, render_chunk
from data_tools.packing import Packer, unpacked_row
from data_tools.readers import count_rows, iter_rows, read_records
from data_tools.schema import BadRowError, parse_chat
from data_tools.shards import ShardWriter
from policy.load import load_tokenizer, pad_token_id


@dataclass
class SourceScan:
    """Pass-1 result for one source: arrays aligned with its valid rows, in file order."""

    name: str
    path: str
    counts: Counter
    row_numbers: np.ndarray  # (n,) int64
    exact: np.ndarray  # (n,) uint64
    signatures: np.ndarray  # (n, num_perm) uint32
    contaminated: np.ndarray  # (n,) bool
    repeats: np.ndarray | None = None  # (n,) int32, set by the sampling plan


# ---- pass 1: scan ------------------------------------------------------------------------------


def eval_ngram_index(files: list[str], n: int) -> dict[int, np.ndarray]:
    """Sorted n-gram hashes of the evaluation prompts, keyed by n-gram length."""
    grams: dict[int, list[np.ndarray]] = {}
    for path in files:
        for row_no, row in iter_rows(path):
            if isinstance(row, BadRowError):
                raise row
            if isinstance(row, dict) and isinstance(row.get("prompt"), str):
                text = row["prompt"]
            elif isinstance(row, dict) and isinstance(row.get("messages"), list):
                text = " ".join(m.get("content", "") for m in row["messages"] if m.get("role") == "user")
            else:
                raise BadRowError(f"{path}:{row_no}: an evaluation row needs 'prompt' or 'messages'")
            words = word_hashes(text)
            if len(words) == 0:
                continue
            k = min(n, len(words))
            grams.setdefault(k, []).append(ngram_hashes(words, k))
    return {k: np.unique(np.concatenate(v)) for k, v in grams.items()}


def _save_index(directory: str, index: dict[int, np.ndarray]) -> str:
    path = str(Path(directory) / "eval_index.npz")
    np.savez(path, **{str(k): v for k, v in index.items()})
    return path


def _save_tokenizer(directory: str, tokenizer) -> str:
    """The tokenizer pickled whole (its class, template and byte-length table), so a worker gets
    exactly the parent's tokenizer without importing what loading a checkpoint imports."""
    token_byte_lengths(tokenizer)  # built once here, travels with the pickle
    path = str(Path(directory) / "tokenizer.pkl")
    with open(path, "wb") as f:
        pickle.dump(tokenizer, f)
    return path


def _chunks(iterable, size: int) -> Iterator[list]:
    it = iter(iterable)
    while chunk := list(islice(it, size)):
        yield chunk


def scan_source(path: str, name: str, total: int, recipe: MixRecipe, pool, progress, task) -> SourceScan:
    """Fingerprints of every valid row, filled into arrays preallocated for `total` rows."""
    counts: Counter = Counter()
    valid = (
        (n, rec.messages)
        for n, rec in read_records(path, parse_chat, recipe.on_bad_row, counts, default_source=name)
        if rec is not None
    )
    rows, exact = np.zeros(total, np.int64), np.zeros(total, np.uint64)
    sigs, cont = np.zeros((total, recipe.dedup.num_perm), np.uint32), np.zeros(total, bool)
    filled = 0
    for chunk_rows, chunk_exact, chunk_sigs, chunk_cont in pool.imap(fingerprint_chunk,
                                                                       _chunks(valid, recipe.chunk_rows)):
        end = filled + len(chunk_rows)
        rows[filled:end], exact[filled:end], sigs[filled:end], cont[filled:end] = (
            chunk_rows, chunk_exact, chunk_sigs, chunk_cont)
        filled = end
        progress.advance(task, len(chunk_rows))
    counts["rows_in"] = filled + counts["bad_row"]
    progress.advance(task, counts["bad_row"])
    return SourceScan(name, path, counts, rows[:filled], exact[:filled], sigs[:filled], cont[:filled])


def decide_drops(scans: list[SourceScan], recipe: MixRecipe) -> None:
    """Mark contamination and duplicates across all sources (first occurrence wins)."""
    cont = np.concatenate([s.contaminated for s in scans])
    exact = np.concatenate([s.exact for s in scans])
    dropped = cont.copy()
    exact_dup = exact_duplicates(exact) & ~dropped if recipe.dedup.exact else np.zeros_like(dropped)
    dropped |= exact_dup
    near_dup = np.zeros_like(dropped)
    if recipe.dedup.near:
        sigs = np.concatenate([s.signatures for s in scans])
        for s in scans:
            s.signatures = None  # one copy at a time
        near_dup = near_duplicates(sigs, recipe.dedup.bands, recipe.dedup.threshold, skip=dropped)
        dropped |= near_dup
    start = 0
    for s in scans:
        end = start + len(s.exact)
        s.counts["contaminated"] = int(cont[start:end].sum())
        s.counts["exact_duplicate"] = int(exact_dup[start:end].sum())
        s.counts["near_duplicate"] = int(near_dup[start:end].sum())
        s.repeats = (~dropped[start:end]).astype(np.int32)
        s.counts["kept"] = int(s.repeats.sum())
        s.signatures = None  # no longer needed
        start = end


def sampling_plan(keep: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """Repeats per row: `target` emissions spread over the kept rows (keep = 1/0 per row)."""
    idx = np.flatnonzero(keep)
    repeats = np.zeros(len(keep), dtype=np.int32)
    if len(idx) == 0 or target == 0:
        return repeats
    base, rem = divmod(target, len(idx))
    repeats[idx] = base
    repeats[rng.choice(idx, size=rem, replace=False)] += 1
    return repeats


# ---- pass 2: emit ------------------------------------------------------------------------------


def _source_stream(scan: SourceScan) -> Iterator[list[dict]]:
    """Chats of one source as the plan says: round k emits rows planned more than k times."""
    for rnd in range(int(scan.repeats.max(initial=0))):
        for n, rec in read_records(scan.path, parse_chat, "skip", default_source=scan.name):
            if rec is None:
                continue
            pos = np.searchsorted(scan.row_numbers, n)
            if scan.repeats[pos] > rnd:
                yield rec.messages


def interleave(scans: list[SourceScan], rng: np.random.Generator) -> Iterator[list[dict]]:
    """A uniformly random interleaving of the sources' streams (one byte per emitted row)."""
    streams = [_source_stream(s) for s in scans]
    order = rng.permutation(np.repeat(np.arange(len(scans), dtype=np.uint8), [int(s.repeats.sum()) for s in scans]))
    for i in order:
        yield next(streams[i])


def _summary(console: Console, scans: list[SourceScan], stats: dict) -> None:
    table = Table(title="deepalign data mix")
    cols = ["rows_in", "bad_row", "contaminated", "exact_duplicate", "near_duplicate", "kept", "rows_out"]
    table.add_column("source")
    for c in cols:
        table.add_column(c.replace("_", " "), justify="right")
    for s in scans:
        table.add_row(s.name, *(f"{s.counts[c]:,}" for c in cols))
    table.add_row("total", *(f"{sum(s.counts[c] for s in scans):,}" for c in cols), style="bold")
    console.print(table)
    console.print(
        f"tokens {stats['tokens']:,} (targets {stats['target_tokens']:,}) in {stats['rows']:,} rows of "
        f"{stats['max_length']} | documents truncated {stats['truncated']:,} | {stats['seconds']:.1f}s | "
        f"written to {stats['output_dir']}"
    )


def plan_rows(scans: list[SourceScan], recipe: MixRecipe, rng: np.random.Generator) -> None:
    """How many times each kept row is emitted: each source's `count`, `fraction` of its kept rows,
    or every kept row once."""
    for spec, scan in zip(recipe.sources, scans, strict=True):
        kept = scan.counts["kept"]
        target = spec.count if spec.count is not None else round((spec.fraction or 1.0) * kept)
        if spec.count is None and spec.fraction is None:
            target = kept
        scan.repeats = sampling_plan(scan.repeats, target, rng)
        scan.counts["rows_out"] = int(scan.repeats.sum())


def emit_rows(chats: Iterator[list[dict]], recipe: MixRecipe, pool, writer: ShardWriter, packer: Packer,
              advance) -> int:
    """Render chats in the pool, pack (or truncate) them into rows and write the shards; returns the
    number of truncated unpacked rows."""
    truncated = 0
    for ids, mask, lengths in pool.imap(render_chunk, _chunks(chats, recipe.chunk_rows)):
        ends = np.cumsum(lengths).tolist()
        for start, end in zip([0, *ends[:-1]], ends, strict=True):
            if recipe.pack:
                for row in packer.add(ids[start:end], mask[start:end]):
                    writer.write(row)
            else:
                truncated += end - start > recipe.max_length
                writer.write(unpacked_row(ids[start:end], mask[start:end], recipe.max_length))
        advance(len(lengths))
    for row in packer.flush():
        writer.write(row)
    return truncated


def build_mixture(recipe: MixRecipe, console: Console | None = None) -> dict:
    """Run both passes; returns the manifest written next to the shards."""
    console = console or Console()
    start = time.perf_counter()
    rng = np.random.default_rng(recipe.seed)
    names = [s.name or Path(s.path).stem for s in recipe.sources]
    if len(set(names)) != len(names):
        raise BadRowError(f"source names must be unique, got {names}")
    for spec in recipe.sources:
        if not Path(spec.path).exists():
            raise BadRowError(f"{spec.path}: source file not found")
    index = eval_ngram_index(recipe.decontaminate.eval_files, recipe.decontaminate.ngram)
    totals = [count_rows(s.path) for s in recipe.sources]

    tokenizer = load_tokenizer(recipe.policy)

    # The index and the tokenizer go to the workers as files: spawn pickles a worker's arguments
    # into a pipe, and arguments larger than the pipe's buffer hold the parent until that worker
    # has started, so the workers would start one after another (7 s of 29 at 50k chats).
    ctx = mp.get_context("spawn")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with tempfile.TemporaryDirectory(prefix="deepalign-mix-") as tmp, \
            ctx.Pool(recipe.workers, initializer=init_worker,
                     initargs=(_save_tokenizer(tmp, tokenizer), recipe.dedup.num_perm, recipe.dedup.shingle,
                               _save_index(tmp, index))) as pool, \
            Progress(*columns, console=console, transient=False) as progress:
        scans = []
        for spec, name, total in zip(recipe.sources, names, totals, strict=True):
            task = progress.add_task(f"scan {name}", total=total)
            scans.append(scan_source(spec.path, name, total, recipe, pool, progress, task))
        decide_drops(scans, recipe)
        plan_rows(scans, recipe, rng)
        writer = ShardWriter(Path(recipe.output_dir), recipe.shard_rows)
        packer = Packer(recipe.max_length, pad_token_id(tokenizer))
        task = progress.add_task("render + pack", total=sum(s.counts["rows_out"] for s in scans))
        truncated = emit_rows(interleave(scans, rng), recipe, pool, writer, packer, lambda n: progress.advance(task, n))

    out_dir = writer.finish({
        "format": "deepalign-sft-shards-v1",
        "tokenizer": recipe.policy,
        "tokenizer_vocab_size": len(tokenizer),
        "max_length": recipe.max_length,
        "pack": recipe.pack,
        "seed": recipe.seed,
        "sources": {s.name: dict(s.counts) for s in scans},
        "recipe": asdict(recipe),
    })
    manifest = json.loads((out_dir / "manifest.json").read_text())
    _summary(console, scans, {
        "tokens": manifest["tokens"], "target_tokens": manifest["target_tokens"], "rows": manifest["rows"],
        "max_length": recipe.max_length, "truncated": truncated + packer.truncated,
        "seconds": time.perf_counter() - start, "output_dir": recipe.output_dir,
    })
    return manifest
