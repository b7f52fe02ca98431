"""Linear layers prepared for few-row matmuls on CPU (the decoders of the rollout engine).

A decode step multiplies a handful of rows (one token per sequence) by every weight matrix.
PyTorch's CPU `F.linear` sends fp32 to MKL's sgemm, which for 1-16 rows ran at 40-65 GFLOP/s on
this project's 2-core AMD EPYC (7-8 GB/s of weights streamed, a quarter of the machine's memory
bandwidth). oneDNN, which PyTorch also ships, does 2-3x better on the same shapes once the weight
is reordered into its blocked layout (`torch.ops.mkldnn._reorder_linear_weight`, the packing
torch.compile's CPU freezing uses); bf16 gains 1.5-1.8x. For small matrices oneDNN's fixed cost
per call (~20 us) outweighs the gain, so `PackedLinear` packs only matrices of at least
`MIN_PACKED_ELEMENTS` and keeps `F.linear` for the rest (and off CPU, and where oneDNN is
missing, and for bf16 on CPUs without oneDNN's bf16 path: AVX2-only ones).
`python benchmarks/packed_linear.py` prints the per-shape comparison.

The packed copy is a snapshot: rebuild it after the weights change (the decoders' `refresh()`).
Results equal `F.linear` up to fp32 summation order (tests hold them to 1e-5 relative).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MIN_PACKED_ELEMENTS = 160_000  # out x in; below this F.linear was as fast or faster (16 rows, fp32 and bf16)
ROWS_HINT = 16  # oneDNN picks its blocking for this many rows; any row count works


def _packable(weight: torch.Tensor) -> bool:
    """fp32 wherever oneDNN is; bf16 only where oneDNN has a bf16 path (AVX-512 or AVX-NE-CONVERT:
    on an AVX2-only CPU the reorder raises, and F.linear is the only bf16 matmul there)."""
    if weight.device.type != "cpu" or weight.numel() < MIN_PACKED_ELEMENTS or not torch.backends.mkldnn.is_available():
        return False
    return weight.dtype == torch.float32 or (weight.dtype == torch.bfloat16 and _bf16_supported())


def _bf16_supported() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class PackedLinear:
    """y = x W^T + b for W (out, in), with W in oneDNN's packed layout where that is faster."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        weight = weight.detach()
        self.bias = bias.detach() if bias is not None else None
        self.out_features = weight.shape[0]
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, ROWS_HINT) if _packable(weight) else None
        self.weight = None if self.packed is not None else weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    @classmethod
    def of(cls, module: torch.nn.Linear) -> PackedLinear:
        return cls(module.weight, module.bias)
