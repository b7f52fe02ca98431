"""Few-row matmuls: PyTorch's `F.linear` (MKL sgemm in fp32) vs `PackedLinear` (oneDNN, packed weight),
and in fp32 MKL's own packed sgemm too (`torch.ops.mkl._mkl_linear`, what torch.compile's CPU freezing uses).

    python benchmarks/packed_linear.py [--rows 16]

The weight shapes of one decode step of `tiny` and SmolLM2-135M (every matrix the decoders
multiply a token per sequence by), 16 rows, fp32 and bf16. Each shape is timed over distinct
matrices in turn, `STREAMED_BYTES` of them (more than a server CPU's L3: 300 MiB on the Xeon of
RESULTS' 2026-12-06 section), so weights come from memory as in a real step, not from cache. Matrices under
`MIN_PACKED_ELEMENTS` stay on F.linear (ratio 1 by construction); they are listed to show why.
GFLOP/s is ours; the MKL column is its packed sgemm's GFLOP/s on the same matrices.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from policy.packed_linear import PackedLinear

SHAPES = {  # (out, in)
    "tiny w_a": (176, 256), "tiny o_proj": (256, 128), "tiny experts_in": (4608, 256),
    "tiny experts_out": (256, 2304), "tiny dense gate_up": (1536, 256), "tiny lm_head": (260, 256),
    "smollm2 qkv": (960, 576), "smollm2 o_proj": (576, 576), "smollm2 gate_up": (3072, 576),
    "smollm2 down": (576, 1536), "smollm2 lm_head": (49152, 576),
}


STREAMED_BYTES = 640 * 2**20  # per shape: the distinct matrices a pass runs through


def best_time(fn, inputs, repeats: int = 5) -> float:
    for item in inputs:
        fn(item)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for item in inputs:
            fn(item)
        best = min(best, (time.perf_counter() - start) / len(inputs))
    return best


def mkl_packed_gflops(weights, x) -> str:
    """' | MKL packed  N GFLOP/s' for fp32 where PyTorch has MKL, else ''."""
    if x.dtype != torch.float32 or not torch.backends.mkl.is_available():
        return ""
    rows = x.shape[0]
    packed = [(torch.ops.mkl._mkl_reorder_linear_weight(w, rows), w) for w in weights]
    seconds = best_time(lambda pw: torch.ops.mkl._mkl_linear(x, pw[0], pw[1], None, rows), packed)
    return f" | MKL packed {2 * x.numel() * weights[0].shape[0] / seconds / 1e9:4.0f} GFLOP/s"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=16)
    args = parser.parse_args()
    print(f"threads {torch.get_num_threads()}, {args.rows} rows, best of 5 passes over distinct matrices")
    for dtype in (torch.float32, torch.bfloat16):
        for name, (out, inp) in SHAPES.items():
            count = max(3, -(-STREAMED_BYTES // (out * inp * dtype.itemsize)))
            weights = [torch.randn(out, inp, dtype=dtype) for _ in range(count)]
            layers = [PackedLinear(w) for w in weights]
            x = torch.randn(args.rows, inp, dtype=dtype)
            plain = best_time(lambda w, x=x: F.linear(x, w), weights)
            packed = best_time(lambda layer, x=x: layer(x), layers)
            error = (layers[0](x).float() - F.linear(x, weights[0]).float()).abs().max().item()
            kind = "packed" if layers[0].packed is not None else "F.linear"
            print(f"{str(dtype).removeprefix('torch.'):>8} {name:>19} {out:>6}x{inp:<5} F.linear {plain * 1e6:8.1f} us"
                  f" | ours ({kind:>8}) {packed * 1e6:8.1f} us | {plain / packed:5.2f}x | "
                  f"{out * inp * weights[0].element_size() / packed / 1e9:5.1f} GB/s | "
                  f"{2 * args.rows * out * inp / packed / 1e9:4.0f} GFLOP/s | max err {error:.1e}"
                  + mkl_packed_gflops(weights, x))


if __name__ == "__main__":
    main()
