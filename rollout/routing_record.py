"""Recording the experts a DeepSeekMoE policy routes each generated token to (routing replay, R3).

`RoutingRecorder` hangs a sink on every MoE layer of the engine's model (policy/moe.py
`routing_sink`; the absorbed decode step appends to the same sink, policy/mla_decode.py) and
turns what the layers append into, per sample, an int16 (completion length, layers, top_k) tensor:
row j holds the experts of the position whose output predicts completion token j (row 0: the
prompt's last token, from the prefill; row j > 0: completion token j - 1, from decode step j - 1).
The learner replays exactly these positions (grpo/replay.py). The prompt's other tokens are not
recorded: the learner routes them itself.
"""

from __future__ import annotations

import torch


class RoutingRecorder:
    def __init__(self, model, total: int, budget: int):
        self.layers = list(model.moe_layers()) if hasattr(model, "moe_layers") else []
        top_k = self.layers[0].top_k if self.layers else 1
        self.routing = torch.full((total, budget, len(self.layers), top_k), -1, dtype=torch.int16)
        for moe in self.layers:
            moe.routing_sink = []

    def _take(self) -> torch.Tensor:
        """(rows, layers, top_k) of the last forward's last position; empties the sinks."""
        last = []
        for moe in self.layers:
            indices = moe.routing_sink[-1]
            moe.routing_sink.clear()
            last.append(indices)
        return torch.stack(last, dim=1)  # (rows * T, layers, top_k)

    def prefill(self, prompts: int, n: int) -> None:
        """After the prefill: each prompt's last position, repeated to its n sample rows."""
        taken = self._take()
        per_prompt = taken.view(prompts, -1, *taken.shape[1:])[:, -1]
        self.routing[:, 0] = per_prompt.repeat_interleave(n, 0).to(torch.int16).cpu()

    def step(self, step: int, active: torch.Tensor, running: torch.Tensor) -> None:
        """After decode step `step` (it fed completion token `step`): the routing for token step + 1."""
        taken = self._take().cpu()
        if step + 1 < self.routing.shape[1]:
            self.routing[active[running], step + 1] = taken[running].to(torch.int16)

    def result(self, lengths: torch.Tensor) -> list[torch.Tensor]:
        return [self.routing[i, : int(lengths[i])].clone() for i in range(self.routing.shape[0])]

    def close(self) -> None:
        for moe in self.layers:
            moe.routing_sink = None
