"""Whether two runs of the demo pipeline wrote the same weights, stage by stage.

    python benchmarks/same_checkpoints.py RUN_A RUN_B      # e.g. runs/demo /tmp/demo_again

Prints, per stage, whether the final checkpoints are bit-identical and the largest difference;
exits 0 only when every stage matches.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

STAGES = ("sft", "rm_helpful", "rm_safety", "grpo_stage1", "grpo_stage2")


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def main() -> int:
    a, b = Path(sys.argv[1]), Path(sys.argv[2])
    same_everywhere = True
    for stage in STAGES:
        wa, wb = weights(a / stage / "final"), weights(b / stage / "final")
        same = bool(wa) and wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
        diff = max(((wa[k].float() - wb[k].float()).abs().max().item() for k in wa if k in wb), default=float("nan"))
        print(f"{stage:12s} {len(wa):4d} tensors  bit-identical: {same}  max |diff| {diff:.3g}")
        same_everywhere &= same
    return 0 if same_everywhere else 1


if __name__ == "__main__":
    sys.exit(main())
