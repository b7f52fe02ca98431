"""LoRA for every trainer, through peft, applied to a policy after it is built.

Owns:
- `apply_lora(model, cfg)`: adapters on the Linear modules named in `lora.target_modules`
  (attention projections by default; gate/up/down_proj are the MLPs and, on DeepSeek-V2, the
  shared experts and dense layers) and, with `lora.routed_experts`, on the routed experts' fused
  3-D tensors (peft's `target_parameters`: one (A_e, B_e) pair per expert and tensor);
- `lora_layout(model)` and `merged_state_dict(state, layout)`: the policy's weights with every
  adapter folded in, W + (alpha / r) B A, under the base model's own parameter names, computed
  from a (possibly gathered) state dict without touching the live model: what rollout engines
  load at each sync and what a checkpoint writes as its Hugging Face weights;
- `adapter_state(state)` / `load_adapter_state(model, tensors)`: the adapter tensors in peft's
  file format, written beside a checkpoint and read back on resume (FSDP2 or not);
- `lora_enabled(model)`, and the `adapters_disabled(model)` context: the base policy, which is
  GRPO's reference (no second copy of the weights).

peft applies LoRA on expert tensors by re-parametrising the whole (E, out, in) stack as W + BA
in every forward; our MoE instead reads the low-rank factors (policy/experts.py `expert_tensors`)
and runs x A_e^T B_e^T beside x W_e^T in the same grouped matmuls, so no delta the size of the
experts is ever built.
"""

from __future__ import annotations

import re
import warnings

import torch

from policy.config import LoraConfig
from policy.experts import expert_factors

PEFT_PREFIX = "base_model.model."


class LoraError(ValueError):
    """LoRA settings the policy cannot take; the message names the key."""


def lora_enabled(model) -> bool:
    return hasattr(model, "peft_config")


def _expert_parameter_names(model) -> list[str]:
    """`mlp.experts.gate_up_proj`-style names of the routed experts' fused tensors (DeepSeek-V2)."""
    names = set()
    for name, param in model.named_parameters():
        if param.dim() == 3 and ".experts." in name:
            names.add(re.sub(r"^.*?\.layers\.\d+\.", "", name))
    return sorted(names)


def apply_lora(model, cfg: LoraConfig):
    """The policy under peft LoRA adapters (only the adapters train)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    wanted = set(cfg.target_modules)
    # Full names of nn.Linear modules, as a regex: a list would match name suffixes, and the
    # experts' 3-D tensors (gate_up_proj, down_proj) are parameters, not modules.
    targets = [name for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in wanted]
    experts = _expert_parameter_names(model) if cfg.routed_experts else []
    if not targets and not experts:
        raise LoraError(f"lora.target_modules: none of {cfg.target_modules} is a Linear module of the policy")
    if experts and cfg.dropout:
        raise LoraError("lora.dropout must be 0 with lora.routed_experts (dropout cannot be factored out of the "
                        "experts' low-rank update)")
    config = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                            target_modules="|".join(re.escape(t) for t in targets) if targets else [],
                            target_parameters=experts or None, task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft calls a transformers method deprecated in v5
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(model, config)


def base_name(key: str) -> str:
    """A peft state-dict key under the base model's name: no peft prefix, no `.base_layer`."""
    return key.removeprefix(PEFT_PREFIX).replace(".base_layer", "")


def lora_layout(model) -> dict[str, dict]:
    """For each adapted base weight (by base name): the keys of its A and B factors in the peft
    model's state dict, the scaling, and for expert tensors the number of experts."""
    from peft.tuners.lora import LoraLayer, ParamWrapper

    layout = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter in module.active_adapters:
            if adapter not in module.lora_A:
                continue
            param = module.parameter_name if isinstance(module, ParamWrapper) else "weight"
            layout[base_name(f"{name}.{param}")] = {
                "A": f"{name}.lora_A.{adapter}.weight", "B": f"{name}.lora_B.{adapter}.weight",
                "scaling": float(module.scaling[adapter]),
                "experts": module.num_experts if isinstance(module, ParamWrapper) else 0,
            }
    return layout


def lora_delta(a: torch.Tensor, b: torch.Tensor, scaling: float, shape: torch.Size, experts: int) -> torch.Tensor:
    """scaling * B A in the layout of the adapted weight: (out, in) for a Linear; for an expert stack
    peft keeps A (r E, in) and B (out, r E), whose expert e is A[e r:(e+1) r] and B[:, e::E]."""
    if not experts:
        return scaling * (b.float() @ a.float())
    lhs, rhs = expert_factors(a, b, shape, experts)
    return scaling * torch.bmm(lhs.float(), rhs.float())


def merged_state_dict(state: dict[str, torch.Tensor], layout: dict[str, dict]) -> dict[str, torch.Tensor]:
    """The base model's state dict (base names) with every adapter folded in; the adapter tensors left out.
    `state` is the peft model's state dict (full tensors); adapted weights are new tensors, the rest
    are `state`'s own."""
    out = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        name = base_name(key)
        entry = layout.get(name)
        if entry is not None:
            delta = lora_delta(state[entry["A"]], state[entry["B"]], entry["scaling"], value.shape, entry["experts"])
            value = (value.float() + delta).to(value.dtype)
        out[name] = value
    return out


def adapter_state(state: dict[str, torch.Tensor], adapter: str = "default") -> dict[str, torch.Tensor]:
    """The adapter tensors under peft's file names (`...lora_A.weight`, no adapter name)."""
    return {key.replace(f".{adapter}.", "."): value.contiguous() for key, value in state.items()
            if ".lora_A." in key or ".lora_B." in key}


def load_adapter_state(model, tensors: dict[str, torch.Tensor], adapter: str = "default") -> None:
    """Load adapter tensors (peft's file names) into the model's adapters; FSDP2-sharded or not."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    keys = {k for k in model.state_dict() if ".lora_" in k}
    state = {re.sub(r"\.(lora_[AB])\.", rf".\1.{adapter}.", k): v for k, v in tensors.items()}
    missing, unexpected = keys - set(state), set(state) - keys
    if missing or unexpected:
        raise LoraError(f"adapter does not fit the policy's LoRA layout: missing {sorted(missing)[:3]}, "
                        f"unexpected {sorted(unexpected)[:3]}")
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))


def adapters_disabled(model):
    """Context: the model computes the base policy (GRPO's reference) while inside."""
    return model.disable_adapter()
