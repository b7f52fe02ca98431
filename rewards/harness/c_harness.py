"""The test harness that runs inside the code sandbox for C and C++ programs (started by
rewards/code_tests.py; standard library only).

    python -I -S -c "import sys; sys.path.insert(0, HARNESS_BIN); import c_harness as h; h.main()" SECRET_FD VERDICT_FD

The program (/sandbox/program.c or .cpp) and the tests (from SECRET_FD, with the run's nonce) are
compiled as two units: the tests' with NDEBUG undefined and their `main` renamed `da_tests_main`,
so nothing the program defines (`NDEBUG`, `main`, `#define main ...`) reaches the tests' code.
The units are linked into /sandbox/unit.so, and the tests' source and object are deleted before
any program code runs. The trusted runner (c_runner.c, built by the host) loads unit.so, runs the
tests and writes a verdict with a second nonce only this harness knows; this harness checks it and
writes "<nonce> <passed> <total> <reason>" to VERDICT_FD. The sandbox mounts no /proc and its
seccomp filter refuses ptrace, so the program's process cannot read this one's memory or
descriptors. C's limit, stated in c_runner.c: the
program shares the runner's process, so it could forge the runner's verdict only by finding that
nonce in the runner's stack frame.
"""

import marshal
import os
import subprocess
import sys
import time

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "c_runner")  # /harness-bin in the sandbox
COMPILERS = {"c": ("gcc", "c", "-std=c11"), "cpp": ("g++", "cpp", "-std=c++17")}
TESTS_MAIN_DECL = '#ifdef __cplusplus\nextern "C"\n#endif\nint da_tests_main(void);\n'


def _compile(argv, seconds):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=max(seconds, 0.1))
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
    return proc.returncode == 0


def build(secret, deadline):
    """Compile the program's unit (before the tests exist on disk), then the tests' unit, and link."""
    compiler, ext, std = COMPILERS[secret["language"]]
    left = lambda: deadline - time.monotonic()  # noqa: E731
    if not _compile([compiler, std, "-O1", "-fPIC", "-c", f"program.{ext}", "-o", "program.o"],
                    left()):
        return False
    with open("tests_main.h", "w") as f:
        f.write(TESTS_MAIN_DECL)
    with open(f"tests.{ext}", "w") as f:
        f.write(secret["tests"])
    try:
        return _compile([compiler, std, "-O1", "-fPIC", "-UNDEBUG", "-Dmain=da_tests_main", "-include",
                         "tests_main.h", "-c", f"tests.{ext}", "-o", "tests.o"], left()) \
            and _compile([compiler, "-shared", "-o", os.path.abspath("unit.so"), "program.o", "tests.o",
                          "-lm"], left())
    finally:
        for leftover in (f"tests.{ext}", "tests.o", "tests_main.h"):
            if os.path.exists(leftover):
                os.unlink(leftover)


def run(deadline):
    """(passed, total, reason) from the runner, trusted only with this run's second nonce."""
    inner = os.urandom(16).hex()
    nonce_r, nonce_w = os.pipe()
    verdict_r, verdict_w = os.pipe()
    os.write(nonce_w, inner.encode())
    os.close(nonce_w)
    proc = subprocess.Popen([RUNNER, str(nonce_r), str(verdict_w), os.path.abspath("unit.so")],
                            pass_fds=(nonce_r, verdict_w),
                            stdin=subprocess.DEVNULL)
    os.close(nonce_r)
    os.close(verdict_w)
    try:
        proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return 0, 1, "timeout"
    with os.fdopen(verdict_r) as f:
        lines = [line.split(" ", 3) for line in f.read(4096).splitlines()]
    mine = [parts for parts in lines if len(parts) == 4 and parts[0] == inner]
    if len(mine) != 1 or mine[0][1:3] not in (["1", "1"], ["0", "1"]):
        return 0, 1, f"the tests did not finish (exit status {proc.returncode})"
    return int(mine[0][1]), 1, mine[0][3]


def main():
    secret_fd, verdict_fd = int(sys.argv[1]), int(sys.argv[2])
    started = time.monotonic()
    with os.fdopen(secret_fd, "rb") as f:
        secret = marshal.loads(f.read())  # written by the host, which is trusted
    deadline = started + float(secret.get("seconds", 8.0))
    try:
        passed, total, reason = run(deadline) if build(secret, deadline) else (0, 1, "compile error")
    except subprocess.TimeoutExpired:
        passed, total, reason = 0, 1, "timeout"
    with os.fdopen(verdict_fd, "w") as out:
        out.write(f"{secret['nonce']} {passed} {total} {' '.join(reason.split())[:300]}\n")


if __name__ == "__main__":
    main()
