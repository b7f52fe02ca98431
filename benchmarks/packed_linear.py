"""Few-row matmuls: PyTorch's `F.linear` (MKL sgemm in fp32) vs `PackedLinear` (oneDNN, packed weight).

    python benchmarks/packed_linear.py [--rows 16]

The weight shapes of one decode step of `tiny` and SmolLM2-135M (every matrix the decoders
multiply a token per sequence by), 16 rows, fp32 and bf16. Each shape is timed over 30 distinct
matrices in turn, so weights come from memory as in a real step, not from cache. Matrices under
`MIN_PACKED_ELEMENTS` stay on F.linear (ratio 1 by construction); they are listed to show why.
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=16)
    args = parser.parse_args()
    print(f"threads {torch.get_num_threads()}, {args.rows} rows, best of 5 passes over distinct matrices")
    for dtype in (torch.float32, torch.bfloat16):
        for name, (out, inp) in SHAPES.items():
            count = 30 if out * inp < 10_000_000 else 3
            weights = [torch.randn(out, inp, dtype=dtype) for _ in range(count)]
            layers = [PackedLinear(w) for w in weights]
            x = torch.randn(args.rows, inp, dtype=dtype)
            plain = best_time(lambda w, x=x: F.linear(x, w), weights)
            packed = best_time(lambda layer, x=x: layer(x), layers)
            error = (layers[0](x).float() - F.linear(x, weights[0]).float()).abs().max().item()
            kind = "packed" if layers[0].packed is not None else "F.linear"
            print(f"{str(dtype).removeprefix('torch.'):>8} {name:>19} {out:>6}x{inp:<5} F.linear {plain * 1e6:8.1f} us"
                  f" | ours ({kind:>8}) {packed * 1e6:8.1f} us | {plain / packed:5.2f}x | "
                  f"{out * inp * weights[0].element_size() / packed / 1e9:5.1f} GB/s | max err {error:.1e}")


if __name__ == "__main__":
    main()
