"""Where a hybrid weight sync's time goes (`ray.placement: hybrid`: the learner and its LocalEngine
copy in one process), and what the engine probe's prefill/decode split costs.

    python benchmarks/profile_weight_sync.py [--policy smollm2-135m-instruct] [--syncs 5]

`LearnerWorker.sync_engine` runs once as a warm-up, then `--syncs` times whole; then each of its parts
on its own, `--syncs` times, each reported as its median: the unsharded state dict, the learner's
log-probs of the 24-token probe, the two weight checksums, the engine's `load_state_dict`, its
decoder's refresh (fused and packed weights rebuilt) and the engine's probe. The engine probe is timed
twice: as it is now (all but the last `PROBE_DECODE_STEPS` tokens as one prefill) and as it was (half
as prefill, 11 single-token steps), printed as a ratio; both must agree with the learner's scores.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def build(policy: str):
    from grpo.config import GRPORecipe
    from grpo.workers import LearnerWorker
    from train.recipe import recipe_from_dict

    recipe = recipe_from_dict(GRPORecipe, {
        "policy": {"name": policy}, "rewards": [{"name": "math_accuracy"}],
        "ray": {"enabled": False, "placement": "hybrid"}, "train": {"steps": 100},
        "log": {"progress": False, "tensorboard": False}})
    worker = LearnerWorker(recipe)
    worker.start_engine()
    return worker


def half_split_probe(engine, tokens: list[int]) -> list[float]:
    """The probe as it was before: the first half of the tokens as one prefill, the rest one by one."""
    return engine.probe(tokens, decode_steps=len(tokens) - 1 - len(tokens) // 2)


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    from rollout.engine import weights_checksum
    from rollout.local import PROBE_DECODE_STEPS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="smollm2-135m-instruct")
    parser.add_argument("--syncs", type=int, default=5)
    args = parser.parse_args()
    worker = build(args.policy)
    engine, n = worker.engine, args.syncs
    worker.sync_engine(1)  # warm-up
    whole = median_seconds(lambda: worker.sync_engine(2), n)

    state, probe = worker.full_state_dict(), worker._probe()
    tokens = probe["tokens"]
    parts = {
        "unsharded state dict": median_seconds(worker.full_state_dict, n),
        "learner probe": median_seconds(worker._probe, n),
        "two checksums": median_seconds(lambda: (weights_checksum(state), weights_checksum(engine.model.state_dict())),
                                        n),
        "engine load_state_dict": median_seconds(lambda: engine.model.load_state_dict(state), n),
        "decoder refresh": median_seconds(engine.decoder.refresh, n),
        "engine probe": median_seconds(lambda: engine.probe(tokens), n),
    }
    before = median_seconds(lambda: half_split_probe(engine, tokens), n)
    for name, scores in (("now", engine.probe(tokens)), ("before", half_split_probe(engine, tokens))):
        diff = max(abs(a - b) for a, b in zip(scores, probe["logprobs"], strict=True))
        print(f"engine probe ({name}) vs learner: max |delta log p| {diff:.2e}")
    print(f"{args.policy}: {sum(p.numel() for p in state.values()) / 1e6:.0f}M parameters, "
          f"{torch.get_num_threads()} threads, {len(tokens)} probe tokens, median of {n}")
    print(f"sync_engine whole: {whole * 1e3:.0f} ms")
    for name, seconds in parts.items():
        print(f"  {name:<24} {seconds * 1e3:6.0f} ms")
    print(f"  {'sum of parts':<24} {sum(parts.values()) * 1e3:6.0f} ms")
    print(f"engine probe, {PROBE_DECODE_STEPS} decode steps: {parts['engine probe'] * 1e3:.0f} ms; "
          f"half prefill + {len(tokens) - 1 - len(tokens) // 2} steps (before): {before * 1e3:.0f} ms; "
          f"ratio {parts['engine probe'] / before:.2f}x")


if __name__ == "__main__":
    main()
