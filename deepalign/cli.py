"""The `deepalign` command line.

    deepalign policy info  PRESET_OR_PATH_OR_RECIPE [dotted.key=value ...]
    deepalign policy demo  PRESET_OR_PATH_OR_RECIPE [dotted.key=value ...] [--prompt TEXT] ...
    deepalign sft          RECIPE.yaml [dotted.key=value ...]
    deepalign grpo         RECIPE.yaml [--seeds N] [dotted.key=value ...]
    deepalign pipeline     RECIPE.yaml [--seeds N] [dotted.key=value ...]
    deepalign eval         CHECKPOINT [--suites math,code,...] [--out DIR] ...
    deepalign compare      CKPT_A CKPT_B [...] [--suites ...] [--out DIR] ...
    deepalign data mix     RECIPE.yaml [dotted.key=value ...]
    deepalign data inspect PATH [--samples N] [--png FILE]
    deepalign data prefs-from-answers|prefs-from-tests PROMPTS.jsonl --policy P --out FILE
    deepalign rm train     RECIPE.yaml [dotted.key=value ...]

A first argument ending in .yaml/.yml is a recipe; anything else is `policy.name`. Errors in
the user's input (recipe keys, paths, checkpoint files, a full disk) print one line and exit
with status 2; set DEEPALIGN_DEBUG=1 to see the traceback as well. Ctrl-C stops a training run
after its current step (with a checkpoint when it saves them) and exits with status 130.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# transformers' per-load weight bars repeat for every model a run loads (policy, reference, engines):
# noise in a log. Ours report progress instead. Set before transformers is imported; Ray workers inherit it.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from deepalign.kinds import KINDS
from train.recipe import RecipeError, load_recipe, load_yaml_file, recipe_from_dict


def _policy_recipe(target: str, overrides: list[str]):
    schema = KINDS["policy"].schema
    if target.endswith((".yaml", ".yml")):
        return load_recipe(target, schema, overrides)
    return recipe_from_dict(schema, {"policy": {"name": target}}, "<command line>", overrides)


def cmd_policy_info(args: argparse.Namespace) -> None:
    from policy.info import human, policy_figures
    from policy.load import policy_config

    recipe = _policy_recipe(args.target, args.overrides)
    figures = policy_figures(policy_config(recipe.policy.name))
    print(f"name: {recipe.policy.name}")
    for key, value in figures.items():
        suffix = f"  ({human(value)})" if key.endswith("_params") else ""
        print(f"{key}: {value}{suffix}")


def cmd_policy_demo(args: argparse.Namespace) -> None:
    from policy.load import load_policy
    from rollout.engine import SamplingConfig
    from rollout.local import generate

    overrides = list(args.overrides)
    for flag, key in (("prompt", "prompt"), ("max_new_tokens", "max_new_tokens"),
                      ("temperature", "temperature"), ("seed", "seed")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"demo.{key}={value!r}" if isinstance(value, str) else f"demo.{key}={value}")
    if args.naive:
        overrides.append("demo.absorbed=false")
    recipe = _policy_recipe(args.target, overrides)
    p, d = recipe.policy, recipe.demo
    model, tokenizer = load_policy(p.name, p.moe.to_dict(), p.torch_dtype, p.seed)
    sampling = SamplingConfig(max_new_tokens=d.max_new_tokens, temperature=d.temperature, top_k=d.top_k, top_p=d.top_p)
    out = generate(model, tokenizer, [d.prompt], sampling, d.seed, absorbed=d.absorbed)
    print(f"prompt: {d.prompt}")
    print(f"completion: {out.texts[0]}")
    print(f"engine: {out.engine}")
    print(f"new_tokens: {out.new_tokens}")
    print(f"tokens_per_second: {out.tokens_per_second:.1f}")
    print(f"kv_cache_bytes: {out.kv_cache_bytes}")


def cmd_policy_convert(args: argparse.Namespace) -> None:
    """`policy convert SOURCE_OR_RECIPE --to deepseek-v2 --out DIR`: flags override the recipe."""
    overrides = list(args.overrides) + [f"to={args.to}"] * bool(args.to) + [f"out={args.out}"] * bool(args.out)
    schema = KINDS["convert"].schema
    if args.target.endswith((".yaml", ".yml")):
        recipe = load_recipe(args.target, schema, overrides)
    else:
        recipe = recipe_from_dict(schema, {"source": args.target}, "<command line>", overrides)
    KINDS["convert"].run(recipe)


def cmd_recipe(args: argparse.Namespace) -> None:
    """sft, grpo, pipeline, rm train, data mix: validate the recipe, then run it (deepalign/kinds.py)."""
    kind = KINDS[args.kind]
    if args.kind == "grpo" and getattr(args, "seeds", None):
        return _grpo_over_seeds(args)
    seeds = [f"seeds={args.seeds}"] if getattr(args, "seeds", None) else []
    recipe = load_recipe(args.recipe, kind.schema, [*args.overrides, *seeds])  # validated before anything heavy
    if args.kind == "pipeline":
        from deepalign.pipeline import stage_recipes

        stage_recipes(recipe)  # every stage's recipe validated before the first one runs
    kind.run(recipe)


def _grpo_over_seeds(args: argparse.Namespace) -> None:
    """`grpo RECIPE --seeds N`: a one-stage pipeline over seeds (deepalign/seeds.py): seed s in
    TRAIN.OUTPUT_DIR/seed<s>/<recipe name>, then the held-out metrics' spread across seeds."""
    from deepalign.pipeline import PipelineRecipe, PipelineStage

    recipe = load_recipe(args.recipe, KINDS["grpo"].schema, args.overrides)  # validated before anything heavy
    stage = PipelineStage(name=Path(args.recipe).stem, kind="grpo", recipe=args.recipe, overrides=list(args.overrides))
    KINDS["pipeline"].run(PipelineRecipe(output_dir=recipe.train.output_dir, stages=[stage], seeds=args.seeds))


def _eval_settings(args: argparse.Namespace):
    data = load_yaml_file(args.recipe) if args.recipe else {}
    for key in ("suites", "temperature", "samples", "pass_k", "max_new_tokens", "batch_size", "seed", "math_data",
                "math_limit", "reward_model", "reward", "reward_data", "humaneval_limit", "output_dir"):
        value = getattr(args, key, None)
        if value is not None:
            data[key] = value.split(",") if key == "suites" else [int(k) for k in value.split(",")] \
                if key == "pass_k" else value
    return recipe_from_dict(KINDS["compare"].schema, data, args.recipe or "<command line>")


def cmd_eval(args: argparse.Namespace) -> None:
    from evals.runner import evaluate_checkpoint

    settings = _eval_settings(args)
    results = evaluate_checkpoint(args.checkpoint, settings)
    for name, result in results.items():
        extras = ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items() if k not in ("score_low", "score_high"))
        print(f"{name}: {result.score:.3f} [{result.metrics['score_low']:.3f}, {result.metrics['score_high']:.3f}]"
              f"  ({extras})")


def cmd_compare(args: argparse.Namespace) -> None:
    from evals.runner import compare

    compare(args.checkpoints, _eval_settings(args))


def _eval_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suites", help="comma-separated: math,code,preference,safety,stats,reward")
    parser.add_argument("--recipe", help="YAML with the same keys (flags override it)")
    parser.add_argument("--temperature", type=float, help="0 = greedy (default)")
    parser.add_argument("--samples", type=int, help="samples per prompt (pass@k needs k <= samples)")
    parser.add_argument("--pass-k", dest="pass_k", help="comma-separated k for the code suite")
    parser.add_argument("--max-new-tokens", dest="max_new_tokens", type=int)
    parser.add_argument("--batch-size", dest="batch_size", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--math-data", dest="math_data", help="shipped, builtin:arithmetic[:DIGITS] or a JSONL")
    parser.add_argument("--math-limit", dest="math_limit", type=int)
    parser.add_argument("--reward-model", dest="reward_model", help="reward model for the preference suite")
    parser.add_argument("--reward", help="module:function or path/to/file.py:function (TRL's signature): adds the "
                                         "reward suite, scored with your reward")
    parser.add_argument("--reward-data", dest="reward_data",
                        help="prompt file (JSONL / Parquet / saved datasets) for --reward (default: the math rows)")
    parser.add_argument("--humaneval-limit", dest="humaneval_limit", type=int)
    parser.add_argument("--out", dest="output_dir", help="results, cache and report (default runs/compare)")


def cmd_data_inspect(args: argparse.Namespace) -> None:
    from data_tools.inspect import inspect

    for line in inspect(args.path, args.samples, args.png):
        print(line)


def cmd_prefs(args: argparse.Namespace) -> None:
    from data_tools.readers import read_records
    from data_tools.schema import parse_prompt
    from policy.load import load_policy
    from rewards import get_reward
    from rewards.preferences import build_preferences, write_jsonl
    from rollout.engine import SamplingConfig
    from rollout.local import generate

    records = read_records(args.prompts, parse_prompt)
    rows = [rec.as_dict() for _, rec in records]
    model, tokenizer = load_policy(args.policy)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature)

    def sample(prompts: list[str], n: int) -> list[list[str]]:
        flat = [p for p in prompts for _ in range(n)]
        out = generate(model, tokenizer, flat, sampling, args.seed).texts
        return [out[i * n : (i + 1) * n] for i in range(len(prompts))]

    reward = get_reward("math_accuracy" if args.data_command == "prefs-from-answers" else "code_tests")
    pairs, stats = build_preferences(rows, sample, lambda p, c, cols: reward(prompts=p, completions=c, **cols),
                                     args.samples, args.max_pairs, args.seed)
    write_jsonl(pairs, args.out)
    print(", ".join(f"{k} {v}" for k, v in stats.items()) + f"; written to {args.out}")


def _recipe_command(group, name: str, kind: str, help_text: str, description: str) -> None:
    """A command that takes RECIPE.yaml and dotted key=value overrides and runs a recipe kind."""
    parser = group.add_parser(name, help=help_text, description=description)
    parser.add_argument("recipe", metavar="RECIPE.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted recipe overrides")
    parser.set_defaults(func=cmd_recipe, kind=kind)


def _policy_commands(commands) -> None:
    policy = commands.add_parser("policy", help="inspect and try a policy model")
    policy_cmds = policy.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    info = policy_cmds.add_parser("info", help="parameter counts and KV-cache size of a policy",
                                  description="Print total/activated parameters and KV-cache elements "
                                              "per token, one 'name: value' per line.")
    info.add_argument("target", metavar="PRESET_OR_PATH_OR_RECIPE")
    info.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted recipe overrides")
    info.set_defaults(func=cmd_policy_info)
    demo = policy_cmds.add_parser("demo", help="generate text with a policy (our rollout engine)",
                                  description="Load a policy, generate a reply with the rollout engine (absorbed "
                                              "MLA for DeepSeek-V2) and print tokens/s and KV-cache bytes.")
    demo.add_argument("target", metavar="PRESET_OR_PATH_OR_RECIPE")
    demo.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted recipe overrides")
    demo.add_argument("--prompt")
    demo.add_argument("--max-new-tokens", type=int, dest="max_new_tokens")
    demo.add_argument("--temperature", type=float)
    demo.add_argument("--seed", type=int)
    demo.add_argument("--naive", action="store_true", help="decode with the expanded (naive) MLA cache")
    demo.set_defaults(func=cmd_policy_demo)
    convert = policy_cmds.add_parser(
        "convert", help="turn a dense Llama-family model into DeepSeek-V2 (MLA + DeepSeekMoE), then heal it",
        description="Convert GQA attention to MLA and the FFN to shared + routed experts from the pretrained "
                    "weights, heal by distillation from the dense model, and report KV size, perplexity and "
                    "arithmetic accuracy before and after.")
    convert.add_argument("target", metavar="SOURCE_OR_RECIPE")
    convert.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted recipe overrides")
    convert.add_argument("--to", choices=["deepseek-v2"], default=None)
    convert.add_argument("--out", help="the directory to write (replaced atomically)")
    convert.set_defaults(func=cmd_policy_convert)


def _eval_commands(commands) -> None:
    ev = commands.add_parser("eval", help="evaluate one checkpoint on suites",
                             description="Run suites (math, code, preference, safety, stats) on a checkpoint; "
                                         "results are cached per checkpoint and suite.")
    ev.add_argument("checkpoint")
    _eval_flags(ev)
    ev.set_defaults(func=cmd_eval)
    cmp = commands.add_parser("compare", help="compare checkpoints side by side (alignment tax, report)",
                              description="Evaluate every checkpoint on the same suites and write a Markdown, "
                                          "HTML and JSON report comparing each against the first.")
    cmp.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT")
    _eval_flags(cmp)
    cmp.set_defaults(func=cmd_compare)


def _data_commands(commands) -> None:
    data = commands.add_parser("data", help="build and inspect training data")
    data_cmds = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    _recipe_command(data_cmds, "mix", "mix", "build a packed SFT mixture from chat sources",
                    "Validate, deduplicate, decontaminate, sample, render, mask and pack chat sources into "
                    "Arrow shards with a manifest.")
    insp = data_cmds.add_parser("inspect", help="counts, length histogram (PNG) and samples of data",
                                description="Inspect a mixture directory or a raw JSONL/Parquet/datasets source.")
    insp.add_argument("path")
    insp.add_argument("--samples", type=int, default=3)
    insp.add_argument("--png", help="where to write the histogram (default: beside the data)")
    insp.set_defaults(func=cmd_data_inspect)
    for name, label in (("prefs-from-answers", "ground-truth answers (math_accuracy)"),
                        ("prefs-from-tests", "compiler feedback (code_tests in the sandbox)")):
        prefs = data_cmds.add_parser(name, help=f"preference pairs labelled by {label}",
                                     description=f"Sample completions per prompt from a policy, label them by {label}: "
                                                 "passing = chosen, failing = rejected.")
        prefs.add_argument("prompts", metavar="PROMPTS.jsonl", help="rows with prompt and answer, or tests")
        prefs.add_argument("--policy", default="tiny")
        prefs.add_argument("--out", required=True)
        prefs.add_argument("--samples", type=int, default=4)
        prefs.add_argument("--max-pairs", type=int, default=4, dest="max_pairs")
        prefs.add_argument("--max-new-tokens", type=int, default=128, dest="max_new_tokens")
        prefs.add_argument("--temperature", type=float, default=1.0)
        prefs.add_argument("--seed", type=int, default=0)
        prefs.set_defaults(func=cmd_prefs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepalign",
        description="Align DeepSeek-V2-style MoE + MLA models: SFT, then two-stage critic-free GRPO.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _policy_commands(commands)
    _recipe_command(commands, "sft", "sft", "supervised fine-tuning on a chat mixture",
                    "Fine-tune a policy with assistant-only loss. Run under torchrun for FSDP2 (gloo on CPU, "
                    "NCCL on GPU). Resumes from the latest checkpoint in train.output_dir.")
    _recipe_command(commands, "grpo", "grpo", "critic-free RL (GRPO) with rollout workers and learners on Ray",
                    "One GRPO stage: G samples per prompt, group-normalised advantages, clipped objective, k3 KL "
                    "to a reference. Resumes from the latest checkpoint in train.output_dir.")
    _recipe_command(commands, "pipeline", "pipeline", "SFT -> reward models -> GRPO stage 1 -> stage 2",
                    "Run a pipeline of stages, each feeding the next; finished stages are skipped, so "
                    "re-running resumes.")
    commands.choices["pipeline"].add_argument(
        "--seeds", type=int, metavar="N", help="run the pipeline once per training seed 0..N-1 (in "
        "OUTPUT_DIR/seed<s>) and report each stage's held-out metrics as mean and 95%% interval across seeds")
    commands.choices["grpo"].add_argument(
        "--seeds", type=int, metavar="N", help="run the stage once per training seed 0..N-1 (in "
        "TRAIN.OUTPUT_DIR/seed<s>) and report its held-out metrics as mean and 95%% interval across seeds")
    _eval_commands(commands)
    _data_commands(commands)
    rm = commands.add_parser("rm", help="reward models")
    rm_cmds = rm.add_subparsers(dest="rm_command", metavar="ACTION", required=True)
    _recipe_command(rm_cmds, "train", "rm", "train a reward model (Bradley-Terry or BCE)",
                    "Train a scalar-head reward model initialised from a policy; logs held-out pairwise accuracy.")
    return parser


def parse(argv: list[str] | None) -> argparse.Namespace:
    """argparse stops collecting the trailing KEY=VALUE overrides at the first flag (`--seeds 3 a=b`
    left `a=b` unrecognised), so overrides after a flag are gathered here."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from data_tools.chat import TemplateError
    from data_tools.schema import BadRowError
    from evals.data import EvalError
    from grpo.workers import WorkerError
    from policy.lora import LoraError
    from policy.smollm2 import PolicyLoadError
    from rewards.combine import RewardError
    from rewards.sandbox import SandboxUnavailable
    from sft.data import DataError
    from train.checkpoint import CheckpointError
    from train.interrupt import Interrupted

    try:
        args.func(args)
    except Interrupted as exc:
        print(f"deepalign: {exc}", file=sys.stderr)
        return 130
    except (RecipeError, PolicyLoadError, LoraError, DataError, TemplateError, BadRowError, RewardError, WorkerError,
            EvalError, CheckpointError, SandboxUnavailable) as exc:
        if os.environ.get("DEEPALIGN_DEBUG"):
            raise
        print(f"deepalign: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
