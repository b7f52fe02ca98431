"""Loading a policy by preset name or checkpoint directory.

`load_policy(name_or_path)` returns (model, tokenizer):
- `tiny`, `tiny-576`: built from policy/presets.py with a fixed seed and the byte-level chat tokenizer;
- `smollm2-135m-instruct`: the converted GGUF (policy/smollm2.py);
- a directory with config.json: DeepSeek-V2 checkpoints load as our `DeepseekV2Policy` (same
  files as transformers' class), any other causal LM through `AutoModelForCausalLM`.
`deepseek-v2` / `deepseek-v2-lite` have no weights here: `policy_config` gives their config
for counting on the meta device; loading them asks for a checkpoint directory instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, DeepseekV2Config

from policy.model import DeepseekV2Policy, moe_options_from_config
from policy.moe import MoEOptions
from policy.presets import BUILT_IN, DEEPSEEK_PRESETS, PRESETS, SMOLLM2, WEIGHTLESS_PRESETS
from policy.smollm2 import PolicyLoadError, cache_dir, smollm2_dir
from policy.tokenizer import byte_chat_tokenizer

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")


def _checkpoint_dir(path: str) -> Path:
    folder = Path(path)
    if not folder.exists():
        raise PolicyLoadError(f"{path}: no such preset or directory (presets: {', '.join(PRESETS)})")
    if not (folder / "config.json").exists():
        raise PolicyLoadError(f"{path}: not a checkpoint directory (no config.json)")
    return folder


def checkpoint_folder(name_or_path: str) -> Path:
    """The Hugging Face directory behind `smollm2-135m-instruct` (converted on first use) or a path."""
    return smollm2_dir() if name_or_path == SMOLLM2 else _checkpoint_dir(name_or_path)


def base_model(model):
    """The model under a peft wrapper (LoRA), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def pad_token_id(tokenizer) -> int:
    """The padding id: the tokenizer's, else its EOS (Llama-family tokenizers often have none)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def checkpoint_path(name_or_path: str, seed: int = 0) -> Path:
    """A directory holding the policy as a Hugging Face checkpoint (what vLLM loads): a checkpoint
    directory as it is; a built-in preset written once (per seed) under the deepalign cache."""
    if name_or_path not in BUILT_IN:
        return checkpoint_folder(name_or_path)
    folder = cache_dir() / "presets" / f"{name_or_path}-seed{seed}"
    if not (folder / "config.json").exists():
        model, tokenizer = load_policy(name_or_path, seed=seed)
        tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(folder)
    return folder


def validate_deepseek_config(config, where: str) -> None:
    """Reject shapes our MoE cannot route (checked before any weights are read)."""
    if getattr(config, "model_type", None) != "deepseek_v2":
        return
    n_group = config.n_group or 1
    if config.n_routed_experts % n_group:
        raise PolicyLoadError(
            f"{where}: n_routed_experts={config.n_routed_experts} is not divisible by n_group={n_group}"
        )
    if config.topk_method == "group_limited_greedy" and (config.topk_group or 1) > n_group:
        raise PolicyLoadError(f"{where}: topk_group={config.topk_group} exceeds n_group={n_group}")


def policy_config(name_or_path: str):
    """The transformers config of a preset or checkpoint, without loading weights."""
    if name_or_path in DEEPSEEK_PRESETS:
        return DeepseekV2Config(**DEEPSEEK_PRESETS[name_or_path]["config"])
    folder = checkpoint_folder(name_or_path)
    try:
        config = AutoConfig.from_pretrained(folder)
    except (ValueError, OSError, json.JSONDecodeError) as exc:
        raise PolicyLoadError(f"{folder / 'config.json'}: {exc}") from exc
    validate_deepseek_config(config, str(folder / "config.json"))
    return config


def preset_moe_options(name_or_path: str, config) -> MoEOptions:
    if name_or_path in DEEPSEEK_PRESETS:
        return DEEPSEEK_PRESETS[name_or_path]["moe"]
    return moe_options_from_config(config)


def load_tokenizer(name_or_path: str):
    """The tokenizer of a preset or checkpoint, without loading any weights."""
    if name_or_path in BUILT_IN:
        return byte_chat_tokenizer()
    if name_or_path in WEIGHTLESS_PRESETS:
        raise PolicyLoadError(f"{name_or_path}: no tokenizer here; pass the released checkpoint directory")
    folder = checkpoint_folder(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise PolicyLoadError(f"{folder}: cannot load tokenizer ({exc})") from exc


def load_policy(
    name_or_path: str,
    moe_overrides: dict | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
):
    """(model, tokenizer) for a preset or checkpoint directory; the model is in eval mode."""
    if name_or_path in WEIGHTLESS_PRESETS:
        raise PolicyLoadError(
            f"{name_or_path}: this preset has no weights here; pass a checkpoint directory of the "
            "released model, or use `deepalign policy info` for its figures"
        )
    if name_or_path in BUILT_IN:
        config = policy_config(name_or_path)
        options = replace(preset_moe_options(name_or_path, config), **(moe_overrides or {}))
        torch.manual_seed(seed)
        model = DeepseekV2Policy(config, options)
        tokenizer = byte_chat_tokenizer()
    else:
        folder = checkpoint_folder(name_or_path)
        config = policy_config(str(folder))
        if not any(next(folder.glob(p), None) for p in WEIGHT_PATTERNS):
            raise PolicyLoadError(f"{folder}: checkpoint directory has no weights (*.safetensors or *.bin)")
        try:
            if config.model_type == "deepseek_v2":
                options = replace(moe_options_from_config(config), **(moe_overrides or {}))
                model = DeepseekV2Policy.from_pretrained(folder, moe_options=options, dtype=dtype)
            else:
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise PolicyLoadError(f"{folder}: {exc}") from exc
        tokenizer = load_tokenizer(str(folder))
    model = model.to(dtype)
    model.eval()
    return model, tokenizer
