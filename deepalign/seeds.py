"""`deepalign pipeline RECIPE --seeds N` (recipe key `seeds`): the pipeline once per training seed,
then what holds across them.

Seed s runs every stage in `{output_dir}/seed{s}` with `train.seed=s` (the SFT stage also
`policy.seed=s`: a preset's initialisation), so weight init, data order, rollout sampling and the
reward models' heads differ between seeds; the data and the held-out prompts do not (they have
their own `data.seed`), so every seed is scored on the same prompts. Each seed's folder is an
ordinary pipeline run: it resumes and skips finished stages the same way.

The summary (`{output_dir}/seeds.json`, `seeds.md`, printed): for every GRPO stage, each held-out
metric at the start and end and its change; for every compare stage, each checkpoint's suite
scores, each alignment-tax row and each RM win rate, as the mean over seeds with a 95% Student-t
interval across seeds, the smallest and largest seed, and every seed's own value (for tax rows
with that seed's paired per-prompt interval and verdict).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from deepalign.pipeline import run_pipeline, stage_recipes
from evals.metrics import t_interval

SEED_KEYS = {"sft": ("policy.seed", "train.seed"), "rm": ("train.seed",), "grpo": ("train.seed",), "compare": ()}


def seeded(pipeline, seed: int):
    """The pipeline recipe for one seed: its own folder, every training stage seeded."""
    stages = [replace(s, overrides=[*s.overrides, *(f"{k}={seed}" for k in SEED_KEYS[s.kind])])
              for s in pipeline.stages]
    return replace(pipeline, output_dir=str(Path(pipeline.output_dir) / f"seed{seed}"), stages=stages, seeds=1)


def spread(values: list[float]) -> dict:
    mean, low, high = t_interval(values)
    return {"mean": mean, "low": low, "high": high, "min": min(values), "max": max(values), "seeds": values}


def _grpo_rows(runs: list[Path], stage: str) -> list[dict]:
    histories = [json.loads((run / stage / "eval.json").read_text()) for run in runs]
    rows = []
    for metric in histories[0]["end"]:
        start = [h["start"][metric] for h in histories]
        end = [h["end"][metric] for h in histories]
        rows.append({"stage": stage, "metric": metric, "start": spread(start), "end": spread(end),
                     "change": spread([b - a for a, b in zip(start, end, strict=True)])})
    return rows


def _compare_rows(runs: list[Path], stage: str) -> dict:
    reports = [json.loads((run / stage / "report.json").read_text()) for run in runs]
    names = [[Path(c).parent.name for c in r["checkpoints"]] for r in reports]  # {stage}/final -> stage
    scores = [{"checkpoint": name, "suite": suite,
               "score": spread([r["scores"][r["checkpoints"][i]][suite]["score"] for r in reports])}
              for i, name in enumerate(names[0]) for suite in reports[0]["suites"]]
    tax = []
    for j, row in enumerate(reports[0]["tax"]):
        per_seed = [r["tax"][j] for r in reports]
        tax.append({"suite": row["suite"], "a": Path(row["a"]).parent.name, "b": Path(row["b"]).parent.name,
                    "delta": spread([t["delta"] for t in per_seed]),
                    "paired": [{"delta": t["delta"], "low": t["low"], "high": t["high"], "verdict": t["verdict"]}
                               for t in per_seed]})
    wins = [{"a": Path(w["a"]).parent.name, "b": Path(w["b"]).parent.name,
             "rate": spread([r["win_rates"][j]["rate"] for r in reports])}
            for j, w in enumerate(reports[0]["win_rates"])]
    return {"stage": stage, "scores": scores, "tax": tax, "win_rates": wins}


def summarize(pipeline, seeds: list[int]) -> dict:
    """What seeds.json holds, from the finished runs of every seed."""
    runs = [Path(pipeline.output_dir) / f"seed{s}" for s in seeds]
    out = {"seeds": seeds, "grpo": [], "compare": []}
    for stage in pipeline.stages:
        if stage.kind == "grpo":
            out["grpo"] += _grpo_rows(runs, stage.name)
        elif stage.kind == "compare":
            out["compare"].append(_compare_rows(runs, stage.name))
    return out


def _cell(s: dict) -> str:
    return f"{s['mean']:+.3f} [{s['low']:+.3f}, {s['high']:+.3f}] (min {s['min']:+.3f}, max {s['max']:+.3f})"


def markdown(summary: dict) -> str:
    n = len(summary["seeds"])
    lines = [f"# Over {n} seeds ({', '.join(map(str, summary['seeds']))}): mean [95% t-interval across seeds] "
             "(smallest, largest seed)", "", "| GRPO stage | held-out metric | start | end | change |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['metric']} | {_cell(r['start'])} | {_cell(r['end'])} | {_cell(r['change'])} |"
              for r in summary["grpo"]]
    for c in summary["compare"]:
        lines += ["", f"## {c['stage']}", "", "| checkpoint | suite | score |", "|---|---|---|"]
        lines += [f"| {r['checkpoint']} | {r['suite']} | {_cell(r['score'])} |" for r in c["scores"]]
        lines += ["", "| B against A | suite | B - A over seeds | each seed's paired 95% interval, verdict |",
                  "|---|---|---|---|"]
        lines += [f"| {t['b']} vs {t['a']} | {t['suite']} | {_cell(t['delta'])} | " + "; ".join(
            f"{p['delta']:+.3f} [{p['low']:+.3f}, {p['high']:+.3f}] {p['verdict']}" for p in t["paired"]) + " |"
                  for t in c["tax"]]
        lines += ["", "| B against A | RM win rate over seeds |", "|---|---|"]
        lines += [f"| {w['b']} vs {w['a']} | {_cell(w['rate'])} |" for w in c["win_rates"]]
    return "\n".join(lines) + "\n"


def run(pipeline):
    """The `pipeline` kind's entry point: one run, or one per seed and the summary."""
    if pipeline.seeds == 1:
        return run_pipeline(pipeline)
    run_seeds(pipeline)
    return {"seeds": Path(pipeline.output_dir) / "seeds.json"}


def run_seeds(pipeline) -> dict:
    seeds = list(range(pipeline.seeds))
    for s in seeds:
        stage_recipes(seeded(pipeline, s))  # every seed's every stage validated before the first runs
    for s in seeds:
        print(f"==== seed {s} of {seeds} ({Path(pipeline.output_dir) / f'seed{s}'})", flush=True)
        run_pipeline(seeded(pipeline, s))
    summary = summarize(pipeline, seeds)
    out = Path(pipeline.output_dir)
    (out / "seeds.json").write_text(json.dumps(summary, indent=2))
    text = markdown(summary)
    (out / "seeds.md").write_text(text)
    print(text)
    return summary
