"""Checkpoints: Hugging Face weights plus the training state for exact resume, written atomically.

A checkpoint is a directory `step-NNNNNNN/` holding
- the model as a Hugging Face directory (safetensors + config + tokenizer), loadable by
  `AutoModelForCausalLM.from_pretrained`; with LoRA the merged weights, and the adapter in
  `adapter/`;
- `trainer_state.pt`: step, optimiser, scheduler, data position;
- `rng-rank{r}.pt`: every rank's Python, NumPy and torch RNG states.
Everything is written into `.tmp-step-NNNNNNN/` and renamed into place once complete, so a run
killed while saving leaves the previous checkpoint intact and no half-written one; temp folders
left by killed runs are removed before the next save. A save that fails (disk full) removes its
temp folder and stops with the path and the free space (`CheckpointError`). Resume takes the
newest checkpoint that is whole (`latest_checkpoint`: every safetensors file as long as its header
says, the trainer state present), and says which newer ones it skipped and why.
"""

from __future__ import annotations

import errno
import json
import random
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from train.distributed import DistInfo, barrier

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


class CheckpointError(RuntimeError):
    """A checkpoint or output folder cannot be written or read; the message names the path."""


def prepare_output_dir(path: str | Path, key: str = "train.output_dir") -> Path:
    """The run's output folder, made if needed; a file in its place or a folder this process cannot
    write is a one-line error naming the recipe key, before any model loads."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{key}: {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise CheckpointError(f"{key}: cannot write to {path} ({exc.strerror})") from None
    return path


def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint cannot be resumed from (truncated or missing files), or None if it is whole."""
    if not (folder / "trainer_state.pt").is_file() or (folder / "trainer_state.pt").stat().st_size == 0:
        return "trainer_state.pt is missing or empty"
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("adapter/*.safetensors"))
    if not weights:
        return "it holds no *.safetensors weights"
    for file in weights:
        try:
            with file.open("rb") as f:
                (header_len,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(header_len))
        except (OSError, struct.error, ValueError) as exc:
            return f"{file.name} has no readable header ({exc})"
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if file.stat().st_size < 8 + header_len + end:
            return f"{file.name} is truncated ({file.stat().st_size} of {8 + header_len + end} bytes)"
    return None


def latest_checkpoint(output_dir: Path, log=print) -> Path | None:
    """The newest whole checkpoint; newer broken ones are skipped, saying why."""
    for folder in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        log(f"skipping checkpoint {folder}: {problem}")
    return None


def _remove_stale_temp(output_dir: Path) -> None:
    for stale in output_dir.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _save_failed(tmp: Path, exc: OSError, what: str) -> CheckpointError:
    shutil.rmtree(tmp, ignore_errors=True)
    free = shutil.disk_usage(tmp.parent).free / 2**20 if tmp.parent.exists() else float("nan")
    reason = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    return CheckpointError(f"{tmp.parent}: cannot write {what} ({reason}; {free:.0f} MiB free)")


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
    """Write the model as a Hugging Face directory; with LoRA the merged weights, and the adapter in
    peft's format under `adapter/`. Collective: call on all ranks (FSDP2 shards are gathered)."""
    from policy.load import base_model
    from policy.lora import adapter_state, lora_enabled, lora_layout, merged_state_dict

    state = get_model_state_dict(model, options=FULL)
    if not info.is_main:
        return
    if lora_enabled(model):
        (folder / "adapter").mkdir()
        save_file(adapter_state(state), folder / "adapter" / "adapter_model.safetensors")
        model.peft_config["default"].save_pretrained(folder / "adapter")
        state = merged_state_dict(state, lora_layout(model))
    base_model(model).save_pretrained(folder, state_dict=state, safe_serialization=True)
    _fix_architecture(folder, _hf_architecture(base_model(model)))
    if tokenizer is not None:
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
        _remove_stale_temp(output_dir)
        tmp.mkdir(parents=True)
    barrier(info)
    try:
        save_hf_weights(model, tokenizer, tmp, info)
        optim_state = get_optimizer_state_dict(model, optimizer, options=FULL)
        torch.save(_rng_state(), tmp / f"rng-rank{info.rank}.pt")
        if info.is_main:
            torch.save({"step": step, "optimizer": optim_state, "scheduler": scheduler.state_dict(),
                        "data": data_state, "world_size": info.world_size}, tmp / "trainer_state.pt")
    except OSError as exc:
        raise _save_failed(tmp, exc, f"checkpoint {final.name}") from exc
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
    from policy.lora import load_adapter_state, lora_enabled

    state = torch.load(folder / "trainer_state.pt", weights_only=False)
    if state["world_size"] != info.world_size:
        raise ValueError(f"{folder}: saved with {state['world_size']} processes, resuming with {info.world_size}")
    if lora_enabled(model):
        load_adapter_state(model, load_file(folder / "adapter" / "adapter_model.safetensors"))
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
    try:
        save_hf_weights(model, tokenizer, tmp, info)
    except OSError as exc:
        raise _save_failed(tmp, exc, "the final model") from exc
    barrier(info)
    if info.is_main:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    barrier(info)
    return final
