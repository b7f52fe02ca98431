"""`deepalign data inspect PATH`: counts, a token-length histogram (printed and saved as PNG), samples.

PATH is a mixture directory (manifest.json + shards) or a raw source (JSONL, Parquet, saved
`datasets` directory). For a mixture, lengths are per document (split where positions restart);
for a raw source, per chat in characters.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _histogram_png(lengths: np.ndarray, path: Path, title: str, unit: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(lengths, bins=50, color="#4C72B0")
    ax.set_title(title)
    ax.set_xlabel(unit)
    ax.set_ylabel("count")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _text_histogram(lengths: np.ndarray, bins: int = 10) -> list[str]:
    counts, edges = np.histogram(lengths, bins=bins)
    peak = max(counts.max(), 1)
    return [f"{int(lo):>7}-{int(hi):<7} {c:>9,} {'#' * int(40 * c / peak)}" for c, lo, hi in
            zip(counts, edges[:-1], edges[1:], strict=True)]


def inspect_mixture(folder: Path, samples: int) -> tuple[list[str], np.ndarray]:
    from datasets import Dataset, concatenate_datasets

    from policy.load import load_tokenizer

    manifest = json.loads((folder / "manifest.json").read_text())
    data = concatenate_datasets([Dataset.from_file(str(folder / s["file"])) for s in manifest["shards"]])
    lines = [f"mixture: {folder}", f"rows: {manifest['rows']:,} of {manifest['max_length']} tokens "
             f"(packed: {manifest['pack']})", f"tokens: {manifest['tokens']:,} (targets {manifest['target_tokens']:,})",
             f"fill: {manifest['tokens'] / max(manifest['rows'] * manifest['max_length'], 1):.1%}"]
    for name, counts in manifest["sources"].items():
        lines.append(f"source {name}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    lengths = []
    for batch in data.iter(batch_size=4096):
        for pos, n in zip(batch["position_ids"], batch["num_tokens"], strict=True):
            starts = [i for i in range(n) if pos[i] == 0] + [n]
            lengths.extend(b - a for a, b in zip(starts, starts[1:], strict=False))
    tokenizer = load_tokenizer(manifest["tokenizer"])
    for i in range(min(samples, len(data))):
        row = data[i]
        n = row["num_tokens"]
        text = tokenizer.decode(row["input_ids"][:n])
        targets = tokenizer.decode([t for t, m in zip(row["input_ids"][:n], row["loss_mask"][:n], strict=True) if m])
        lines += [f"--- sample {i} ---", text[:600], f"[targets] {targets[:300]}"]
    return lines, np.array(lengths)


def inspect_source(path: Path, samples: int) -> tuple[list[str], np.ndarray]:
    from data_tools.readers import iter_rows

    lengths, rows, shown = [], 0, []
    for _, row in iter_rows(path):
        rows += 1
        if isinstance(row, dict) and isinstance(row.get("messages"), list):
            text = "\n".join(f"{m.get('role')}: {m.get('content')}" for m in row["messages"] if isinstance(m, dict))
        else:
            text = json.dumps(row)[:2000]
        lengths.append(len(text))
        if len(shown) < samples:
            shown += [f"--- row {rows} ---", text[:600]]
    return [f"source: {path}", f"rows: {rows:,}", *shown], np.array(lengths)


def inspect(path: str, samples: int = 3, png: str | None = None) -> list[str]:
    folder = Path(path)
    if (folder / "manifest.json").exists():
        lines, lengths = inspect_mixture(folder, samples)
        unit, out = "tokens per document", Path(png) if png else folder / "lengths.png"
    else:
        lines, lengths = inspect_source(folder, samples)
        unit, out = "characters per chat", Path(png) if png else folder.with_suffix(".lengths.png")
    if len(lengths):
        lines += [f"{unit}: mean {lengths.mean():.1f}, p50 {np.median(lengths):.0f}, "
                  f"p95 {np.percentile(lengths, 95):.0f}, max {lengths.max()}", *_text_histogram(lengths)]
        _histogram_png(lengths, out, f"{folder.name}: {unit}", unit)
        lines.append(f"histogram: {out}")
    return lines
