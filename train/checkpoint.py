"""Checkpoints: Hugging Face weights plus the training state for exact resume, written atomically.

A checkpoint is a directory `step-NNNNNNN/` holding
- the model as a Hugging Face directory (safetensors + config + tokenizer), loadable by
  `AutoModelForCausalLM.from_pretrained`; with LoRA the merged weights, and the adapter in
  `adapter/`;
- `trainer_state.pt`: step, optimiser, scheduler, data position;
- `rng-rank{r}.pt`: every rank's Python, NumPy and torch RNG states.
Everything is written into `.tmp-step-NNNNNNN/` and renamed into place once complete, so a run
killed while saving leaves the previous checkpoint intact and no half-written one.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from train.distributed import DistInfo, barrier

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def step_dir(output_dir: Path, step: int) -> Path:
    return output_dir / f"step-{step:07d}"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not output_dir.exists():
        return []
    return sorted(p for p in output_dir.glob("step-*") if (p / "trainer_state.pt").exists())


def _hf_architecture(model) -> str:
    from policy.model import DeepseekV2Policy

    if isinstance(model, DeepseekV2Policy):
        return "DeepseekV2ForCausalLM"
    return next(c.__name__ for c in type(model).__mro__ if not c.__name__.startswith("FSDP"))


def save_hf_weights(model, tokenizer, folder: Path, info: DistInfo) -> None:
    """Write the model (merged, if LoRA) as a Hugging Face directory. Collective: call on all ranks."""
    is_peft = hasattr(model, "peft_config")
    if is_peft:
        if info.is_main:
            model.save_pretrained(folder / "adapter")
            merged = copy.deepcopy(model).merge_and_unload()
            merged.save_pretrained(folder, safe_serialization=True)
            _fix_architecture(folder, _hf_architecture(merged))
    else:
        state = get_model_state_dict(model, options=FULL)
        if info.is_main:
            model.save_pretrained(folder, state_dict=state, safe_serialization=True)
            _fix_architecture(folder, _hf_architecture(model))
    if info.is_main and tokenizer is not None:
        tokenizer.save_pretrained(folder)


def _fix_architecture(folder: Path, name: str) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["architectures"] = [name]
    path.write_text(json.dumps(config, indent=2))


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(
    output_dir: Path, step: int, model, tokenizer, optimizer, scheduler, data_state: dict, info: DistInfo,
    keep: int = 2,
) -> Path:
    """Save everything needed to resume at `step`; returns the checkpoint directory."""
    final = step_dir(output_dir, step)
    tmp = output_dir / f".tmp-{final.name}"
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(info)
    save_hf_weights(model, tokenizer, tmp, info)
    optim_state = get_optimizer_state_dict(model, optimizer, options=FULL)
    torch.save(_rng_state(), tmp / f"rng-rank{info.rank}.pt")
    if info.is_main:
        torch.save({"step": step, "optimizer": optim_state, "scheduler": scheduler.state_dict(),
                    "data": data_state, "world_size": info.world_size}, tmp / "trainer_state.pt")
    barrier(info)
    if info.is_main:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier(info)
    return final


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's weights under in-memory names. transformers writes DeepSeek experts back in
    the released per-expert layout, so read them through transformers' own loader."""
    from policy.load import load_policy

    model, _ = load_policy(str(folder))
    return model.state_dict()


def load_checkpoint(folder: Path, model, optimizer, scheduler, info: DistInfo) -> dict:
    """Restore model, optimiser, scheduler and this rank's RNG; returns the trainer state."""
    state = torch.load(folder / "trainer_state.pt", weights_only=False)
    if state["world_size"] != info.world_size:
        raise ValueError(f"{folder}: saved with {state['world_size']} processes, resuming with {info.world_size}")
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(folder / "adapter" / "adapter_model.safetensors"))
    else:
        weights = _read_weights(folder)
        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(torch.load(folder / f"rng-rank{info.rank}.pt", weights_only=False))
    return state


def save_final(output_dir: Path, model, tokenizer, info: DistInfo) -> Path:
    """The trained model as `final/` (Hugging Face format), atomically."""
    final, tmp = output_dir / "final", output_dir / ".tmp-final"
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(info)
    save_hf_weights(model, tokenizer, tmp, info)
    barrier(info)
    if info.is_main:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    barrier(info)
    return final
