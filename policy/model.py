"""The DeepSeek-V2 policy: transformers' `DeepseekV2ForCausalLM` with our DeepSeekMoE layers.

Owns: `DeepseekV2Policy`, a subclass whose only changes are (1) each transformers MoE block is
wrapped by `policy.moe.DeepSeekMoE` (same submodules, so the same parameter names and files),
and (2) `forward` builds the routing context (which sequence each token is in, which sequences
are protected from token dropping) and returns the balance losses and router statistics with
the usual causal-LM output.

Extra forward arguments (all optional):
- sequence_ids (B, T) long: document id of each token in a packed row (-1 = padding); balance
  losses are then per document. Without it each row is one sequence and padding comes from
  attention_mask.
- token_dropping: False forces dropping off (GRPO log-probs); None = on in training mode when
  the options enable it. Dropping never happens in eval mode.

Departure from the paper: `moe_layer_freq` is not supported (transformers' layout: every layer
from `first_k_dense_replace` on is MoE), which is what both released models use.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch
from transformers import DeepseekV2ForCausalLM
from transformers.modeling_outputs import MoeCausalLMOutputWithPast
from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2Moe

from policy.compat import cache_of, with_cache
from policy.moe import DeepSeekMoE, MoEAux, MoEOptions, RoutingContext
from policy.routing import RouterStats

MOE_OPTIONS_KEY = "deepalign_moe"


@dataclass
class PolicyOutput(MoeCausalLMOutputWithPast):
    """MoeCausalLMOutputWithPast plus our MoE extras.

    aux_loss: sum of all balance losses over layers (add it to the training loss); None if off.
    balance_losses: {"expert" | "device" | "communication": summed over layers}.
    router_stats: one RouterStats per MoE layer, in layer order.
    """

    balance_losses: dict[str, torch.Tensor] | None = None
    router_stats: list[RouterStats] | None = None


def moe_options_from_config(config) -> MoEOptions:
    """Options saved in the config by deepalign, else the released checkpoints' aux_loss_alpha."""
    saved = getattr(config, MOE_OPTIONS_KEY, None)
    if saved:
        return MoEOptions(**saved)
    return MoEOptions(expert_balance_alpha=float(getattr(config, "aux_loss_alpha", 0.0) or 0.0))


class DeepseekV2Policy(DeepseekV2ForCausalLM):
    """transformers' DeepseekV2ForCausalLM whose MoE blocks route through DeepSeekMoE."""

    def __init__(self, config, moe_options: MoEOptions | None = None):
        super().__init__(config)
        self.set_moe_options(moe_options or moe_options_from_config(config))

    def set_moe_options(self, options: MoEOptions) -> None:
        """Install (or replace) the MoE options on every MoE layer and record them in the config."""
        for layer in self.model.layers:
            if isinstance(layer.mlp, DeepseekV2Moe):
                layer.mlp = DeepSeekMoE(layer.mlp, self.config, options)
            elif isinstance(layer.mlp, DeepSeekMoE):
                layer.mlp = DeepSeekMoE(layer.mlp, self.config, options)
        setattr(self.config, MOE_OPTIONS_KEY, asdict(options))
        self.moe_options = options

    def moe_layers(self) -> list[DeepSeekMoE]:
        return [layer.mlp for layer in self.model.layers if isinstance(layer.mlp, DeepSeekMoE)]

    def routing_context(
        self,
        batch: int,
        length: int,
        attention_mask: torch.Tensor | None,
        sequence_ids: torch.Tensor | None,
        token_dropping: bool | None,
    ) -> RoutingContext:
        device = self.model.embed_tokens.weight.device
        if sequence_ids is not None:
            rows = torch.arange(batch, device=device).unsqueeze(1).expand(batch, length)
            key = rows * (int(sequence_ids.max()) + 1) + sequence_ids
            key = torch.where(sequence_ids >= 0, key, torch.full_like(key, -1)).reshape(-1)
            uniq, seq_index = torch.unique(key, return_inverse=True)
            has_pad = bool((uniq < 0).any())
            seq_index = seq_index - int(has_pad)  # padding (key -1 sorts first) becomes -1
            num_seqs = uniq.numel() - int(has_pad)
        else:
            seq_index = torch.arange(batch, device=device).repeat_interleave(length)
            if attention_mask is not None and attention_mask.dim() == 2:
                # with a KV cache the mask covers past tokens too: the new ones are its last columns
                new_tokens = attention_mask[:, -length:].reshape(-1).bool()
                seq_index = torch.where(new_tokens, seq_index, -1)
            num_seqs = batch
        allowed = self.moe_options.token_dropping if token_dropping is None else token_dropping
        dropping = bool(self.training and allowed and self.moe_options.token_dropping)
        protected = torch.zeros(seq_index.numel(), dtype=torch.bool, device=device)
        if dropping and num_seqs:
            # floor(f*S + u), u ~ U(0,1): on average exactly a fraction f of the sequences.
            n_protected = int(self.moe_options.protected_fraction * num_seqs + torch.rand(()).item())
            chosen = torch.randperm(num_seqs, device=device)[:n_protected]
            protected_seq = torch.zeros(num_seqs, dtype=torch.bool, device=device)
            protected_seq[chosen] = True
            protected = (seq_index >= 0) & protected_seq[seq_index.clamp(min=0)]
        return RoutingContext(seq_index, num_seqs, protected, dropping)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *args,
        sequence_ids: torch.Tensor | None = None,
        token_dropping: bool | None = None,
        **kwargs,
    ) -> PolicyOutput:
        ref = input_ids if input_ids is not None else kwargs["inputs_embeds"]
        ctx = self.routing_context(ref.shape[0], ref.shape[1], attention_mask, sequence_ids, token_dropping)
        layers = self.moe_layers()
        for moe in layers:
            moe.context = ctx
        out = super().forward(input_ids, attention_mask, *args, **kwargs)
        totals: dict[str, torch.Tensor] = {}
        stats = []
        for moe in layers:
            for name, value in moe.aux.balance_losses.items():
                totals[name] = totals[name] + value if name in totals else value
            if moe.aux.stats is not None:
                stats.append(moe.aux.stats)
            moe.aux = MoEAux()  # the losses now live in the output; keep no graph on the module
        aux = sum(totals.values()) if totals else None
        return PolicyOutput(
            loss=out.loss,
            aux_loss=aux,
            logits=out.logits,
            **with_cache(cache_of(out)),
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            router_logits=out.router_logits,
            balance_losses=totals or None,
            router_stats=stats,
        )

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as transformers' own DeepseekV2ForCausalLM, so AutoModel and vLLM read it."""
        super().save_pretrained(save_directory, *args, **kwargs)
        path = os.path.join(save_directory, "config.json")
        with open(path) as f:
            config = json.load(f)
        config["architectures"] = ["DeepseekV2ForCausalLM"]
        with open(path, "w") as f:
            json.dump(config, f, indent=2)
