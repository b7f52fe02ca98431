"""Building an SFT mixture at DeepSeek-V2 scale: `deepalign data mix` vs the plain path, one run.

    python benchmarks/data_mix_vs_plain.py [--data data/synthetic] [--limit ROWS_PER_SOURCE]

Ours: validate, exact + near dedup, decontaminate, sample, render with the chat template,
assistant-only masks, pack to 2,048 tokens, write Arrow shards (2 worker processes).
Plain: `datasets.load_dataset("json")` + `Dataset.map(apply_chat_template, num_proc=2)` +
TRL's `pack_dataset(strategy="bfd")` + `save_to_disk` (no dedup, no decontamination, no masks).
Each runs in its own process tree; we sample its total RSS every 0.2 s and report the peak.
The sources come from benchmarks/make_synthetic_mixture.py (1.2M helpful + 0.3M safety).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def run_measured(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """(seconds, peak RSS GiB of the whole process tree, output tail)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    done.set()
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    return time.perf_counter() - start, peak / 2**30, out


def plain_path(files: list[str], policy: str, max_length: int, out_dir: str) -> None:
    """The plain path, run in a child process by main()."""
    from datasets import load_dataset
    from trl.data_utils import pack_dataset

    from policy.load import load_tokenizer

    tokenizer = load_tokenizer(policy)
    data = load_dataset("json", data_files=files, split="train")

    def tokenize(batch):
        return {"input_ids": [tokenizer.apply_chat_template(m, tokenize=True, return_dict=False)
                              for m in batch["messages"]]}

    data = data.map(tokenize, batched=True, batch_size=1000, num_proc=2, remove_columns=data.column_names)
    packed = pack_dataset(data, seq_length=max_length, strategy="bfd")
    packed.save_to_disk(out_dir)
    print(json.dumps({"rows": len(packed), "tokens": int(sum(sum(x) for x in packed["seq_lengths"]))}))


def head(src: Path, dst: Path, rows: int) -> Path:
    with src.open() as f, dst.open("w") as g:
        for i, line in enumerate(f):
            if i >= rows:
                break
            g.write(line)
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/synthetic")
    parser.add_argument("--limit", type=int, default=None, help="rows per source (default: all)")
    parser.add_argument("--policy", default="smollm2-135m-instruct")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--skip-plain", action="store_true")
    parser.add_argument("--plain-worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_worker:
        *files, out_dir = args.plain_worker
        plain_path(files, args.policy, args.max_length, out_dir)
        return

    data = Path(args.data)
    if not (data / "helpful.jsonl").exists():
        subprocess.run([sys.executable, str(REPO / "benchmarks/make_synthetic_mixture.py"), "--out", str(data)],
                       check=True)
    work = Path(tempfile.mkdtemp(prefix="mixbench-"))
    files = [data / "helpful.jsonl", data / "safety.jsonl"]
    if args.limit:
        files = [head(f, work / f.name, args.limit) for f in files]
    env = {**os.environ, "HF_DATASETS_CACHE": str(work / "hf-cache"), "PYTHONPATH": str(REPO)}
    recipe = {
        "sources": [{"path": str(files[0])}, {"path": str(files[1])}],
        "output_dir": str(work / "ours"), "policy": args.policy, "max_length": args.max_length,
        "decontaminate": {"eval_files": [str(data / "eval.jsonl")]},
    }
    (work / "mix.yaml").write_text(json.dumps(recipe))
    rows_in = sum(1 for f in files for _ in f.open())
    print(f"{rows_in:,} chats, policy tokenizer {args.policy}, rows of {args.max_length} tokens, "
          f"{psutil.cpu_count()} cores")

    ours_s, ours_gib, out = run_measured([sys.executable, "-m", "deepalign.cli", "data", "mix",
                                          str(work / "mix.yaml")], env)
    manifest = json.loads((work / "ours" / "manifest.json").read_text())
    print(out[-1800:])
    print(f"ours : {ours_s:8.1f} s | peak RSS {ours_gib:5.2f} GiB | {manifest['rows']:,} rows, "
          f"{manifest['tokens']:,} tokens | {rows_in / ours_s:,.0f} chats/s")
    if args.skip_plain:
        return
    plain_s, plain_gib, out = run_measured([sys.executable, __file__, "--policy", args.policy, "--max-length",
                                            str(args.max_length), "--plain-worker", *map(str, files),
                                            str(work / "plain")], env)
    stats = json.loads(out.strip().splitlines()[-1])
    print(f"plain: {plain_s:8.1f} s | peak RSS {plain_gib:5.2f} GiB | {stats['rows']:,} rows, "
          f"{stats['tokens']:,} tokens | {rows_in / plain_s:,.0f} chats/s")
    print(f"ratio: ours is {plain_s / ours_s:.2f}x the plain path's speed, while also deduplicating, "
          f"decontaminating and masking")


if __name__ == "__main__":
    main()
