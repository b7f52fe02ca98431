"""`deepalign policy convert`: the command's steps and its output directory.

Owns the run: the dense model's chats (convert/data.py), the shape check, the conversion
(policy/convert.py), the report before and after (convert/report.py), the heal (convert/heal.py),
and the output directory, written into a temporary folder and renamed into place with
`conversion.json` (recipe, per-layer report, results, heal curve) and the heal's TensorBoard logs.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from convert.config import ConvertRecipe
from policy.convert import ConvertShape, convert_model
from train.recipe import RecipeError


def check_shape(dense_config, shape: ConvertShape, where: str = "source") -> None:
    """A RecipeError naming the key, before anything heavy runs, when `shape` cannot take the model."""
    c = dense_config
    biased = getattr(c, "attention_bias", False) or getattr(c, "mlp_bias", False)
    if getattr(c, "model_type", None) != "llama" or biased:
        raise RecipeError(f"{where}: model_type {getattr(c, 'model_type', None)!r}: only Llama-family models without "
                          "biases (SmolLM2, Llama) convert")
    rope = getattr(c, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise RecipeError(f"{where}: rope_type {rope['rope_type']!r}: only plain RoPE converts (the decoupled key "
                          "takes it as is)")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    g = c.num_key_value_heads
    need = (g - 1 + g) * head_dim
    if shape.kv_lora_rank < need:
        raise RecipeError(f"shape.kv_lora_rank: {shape.kv_lora_rank} cannot hold the {need} unrotated key and value "
                          f"dims of {where} exactly; use >= {need} (512 for vLLM's CPU MLA backend)")
    total = (shape.n_shared_experts + shape.n_routed_experts) * shape.moe_intermediate_size
    if total != c.intermediate_size:
        raise RecipeError(f"shape: (n_shared_experts + n_routed_experts) * moe_intermediate_size = {total} must equal "
                          f"the dense intermediate_size {c.intermediate_size} of {where}")
    if not 1 <= shape.num_experts_per_tok <= shape.n_routed_experts:
        raise RecipeError(f"shape.num_experts_per_tok: {shape.num_experts_per_tok} must be in 1..n_routed_experts "
                          f"({shape.n_routed_experts})")
    if not 0 <= shape.first_k_dense_replace <= c.num_hidden_layers:
        raise RecipeError(f"shape.first_k_dense_replace: {shape.first_k_dense_replace} must be in "
                          f"0..{c.num_hidden_layers} (the layers of {where})")


def staging_dir(out: Path) -> Path:
    """An empty temporary folder beside `out`; `publish` renames it onto `out` when all is written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def publish(model, tokenizer, tmp: Path, out: Path, report: dict) -> Path:
    """Write the checkpoint and conversion.json into `tmp`, then rename it onto `out` (a previous
    `out` is replaced only once the new one is complete)."""
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "conversion.json").write_text(json.dumps(report, indent=2))
    if out.exists():
        old = out.with_name(f".{out.name}.{os.getpid()}.old")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)
    return out


def _chats(dense, tokenizer, d, seed: int):
    """(calibration rows, heal rows, held-out rows): the dense model's replies; no training prompt is
    one of the held-out arithmetic problems the report (and the GRPO recipes) score."""
    from convert.data import mixed_prompts, teacher_chats
    from convert.report import arithmetic_prompts

    held_out = frozenset(r.prompt for r in arithmetic_prompts(d.arithmetic))
    n_train = d.calibration + d.heal
    bar = _bar(f"teacher chats ({n_train} to fit and heal, {d.eval} held out)", n_train + d.eval)
    try:
        train = teacher_chats(dense, tokenizer, mixed_prompts(n_train, seed, exclude=held_out),
                              d.max_new_tokens, d.temperature, seed, progress=bar.advance)
        evals = teacher_chats(dense, tokenizer, mixed_prompts(d.eval, seed, held_out=True, exclude=held_out),
                              d.max_new_tokens, d.temperature, seed + 1, progress=lambda n: bar.advance(n_train + n))
    finally:
        bar.close()
    return train[: d.calibration], train[d.calibration:], evals


def _bar(description: str, total: int):
    """A progress bar (a line every 30 s off a terminal), nothing logged."""
    from train.config import LogConfig
    from train.tracking import Tracker

    return Tracker(Path("."), total, description, LogConfig(tensorboard=False))


def run(recipe: ConvertRecipe) -> Path:
    """The whole command: data, convert, report, heal, report, save. Prints a comparison table."""
    from convert.heal import heal
    from convert.report import HEADER, evaluate, print_table, table_row
    from policy.load import load_policy, pad_token_id, policy_config

    start = time.perf_counter()
    d, out = recipe.data, Path(recipe.out)
    check_shape(policy_config(recipe.source), recipe.shape, recipe.source)
    dense, tokenizer = load_policy(recipe.source)
    dense.eval()
    calib, heal_rows, eval_rows = _chats(dense, tokenizer, d, recipe.seed)
    bar = _bar("converting layers", len(dense.model.layers))
    try:
        model, layers = convert_model(dense, [r.ids for r in calib], recipe.shape, seed=recipe.seed,
                                      progress=bar.advance)
    finally:
        bar.close()
    print(f"evaluating: held-out perplexity ({len(eval_rows)} chats), {d.arithmetic} two-digit problems\n{HEADER}",
          flush=True)
    results = {}
    for name, m, teacher in (("dense", dense, None), ("converted", model, dense)):
        results[name] = evaluate(m, tokenizer, eval_rows, d.arithmetic, teacher=teacher)
        print(table_row(name, results[name]), flush=True)
    tmp = staging_dir(out)
    heal_log = []
    try:
        if recipe.heal.steps:
            heal_log = heal(model, dense, heal_rows, recipe.heal, pad_token_id(tokenizer), recipe.seed, tmp / "logs")
            results["healed"] = evaluate(model, tokenizer, eval_rows, d.arithmetic, teacher=dense)
            print(table_row("healed", results["healed"]), flush=True)
        report = {"recipe": asdict(recipe), "layers": layers, "results": results, "heal": heal_log,
                  "seconds": round(time.perf_counter() - start, 1)}
        publish(model, tokenizer, tmp, out, report)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(results)
    print(f"wrote {out} ({report['seconds']:.0f} s); conversion.json holds the per-layer report, "
          "logs/ the heal's curves")
    return out
