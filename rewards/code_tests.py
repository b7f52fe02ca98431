"""`code_tests` (compiler feedback, V2 §4): run the completion's program against the `tests` column in
the sandbox; 1.0 if every test passes (or the fraction of asserts passed, with partial_credit).

The score is a verdict only the test harness can produce (rewards/harness/): the tests run after
the program, from a secret the harness reads after the program's process exists, and the verdict
— the run's nonce, tests passed, tests run — reaches this process over a pipe the program's
process does not hold. The exit status and the output are never read as a verdict, so a program
that exits with 0 (sys.exit, os._exit, atexit, signal or exception hooks, threads, exec), strips
the asserts (-O, settrace, rewriting its own source), prints a fake result line or reads the
tests' file scores 0: Python tests run in another process than the program (calls of its
functions cross with plain data; see python_harness.py), and C/C++ tests are a separate unit
compiled with NDEBUG undefined and a `main` of their own (c_harness.py, c_runner.c). A verdict
is parsed defensively: the nonce must match, and the counts are integers with
0 <= passed <= total, so the score is always in [0, 1].

Program assembly (Python): the program is the last fenced code block of the completion
(```python ... ```), or the whole completion when it has none. HumanEval format (an `entry_point`
column and a prompt that is code): if the program does not define the entry point it is a body
continuation and the prompt is put in front of it; the prompt also runs on the tests' side, so
the tests' helpers (`poly`, `encode_cyclic`) are the prompt's own. Tests are plain asserts or
HumanEval's `check(candidate)`, which is called with the entry point.

Every 0 has a reason (`score_programs` returns them): empty completion, malformed test code,
failed (with the failing test's exception), timeout, output_limit, compile error, sandbox error.
"""

from __future__ import annotations

import ast
import marshal
import re
import secrets
import threading
from dataclasses import dataclass

from rewards.sandbox import RunResult, Sandbox, SandboxLimits, SandboxPool, SandboxUnavailable
from rewards.text import completion_text, prompt_text

_FENCE = re.compile(r"```[ \t]*([\w+#-]*)[ \t]*\n(.*?)```", re.DOTALL)
_LANG_TAGS = {"python": {"python", "py", "python3", ""}, "c": {"c", ""}, "cpp": {"cpp", "c++", "cc", ""}}
_HARNESS = {"python": "python_harness", "c": "c_harness", "cpp": "c_harness"}


@dataclass
class CodeScore:
    score: float
    reason: str


def extract_program(text: str, language: str = "python") -> str:
    """The last fenced block in the language (or untagged), else the whole text.

    >>> extract_program("Here:\\n```python\\ndef f():\\n    return 1\\n```\\nDone.")
    'def f():\\n    return 1\\n'
    >>> extract_program("    return x + 1")
    '    return x + 1'
    """
    blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(text)]
    wanted = [body for tag, body in blocks if tag in _LANG_TAGS.get(language, {""})]
    if wanted:
        return wanted[-1]
    return blocks[-1][1] if blocks else text


def _is_python(text: str) -> bool:
    try:
        ast.parse(text)
        return bool(text.strip())
    except (SyntaxError, ValueError):
        return False


def c_signature(prompt: str) -> tuple[str, str] | None:
    """(everything before the body's brace, the function's name) when a C/C++ prompt ends by opening a
    function's body (HumanEval-X); the tests' unit then gets it as a declaration."""
    text = prompt.rstrip()
    if not text.endswith("{"):
        return None
    head = text[:-1].rstrip()
    found = re.search(r"([A-Za-z_]\w*)\s*\([^()]*\)\s*(?:const\s*)?$", head)
    return (head, found.group(1)) if found else None


def build_job(prompt: str, completion: str, tests: str, entry_point: str | None, language: str,
              partial: bool, seconds: float) -> tuple[dict[str, str], list[str], bytes, str]:
    """(files, argv, secret, nonce) of one run. Raises SyntaxError for malformed Python tests."""
    nonce = secrets.token_hex(16)
    secret = {"nonce": nonce, "tests": tests, "partial": partial, "seconds": seconds}
    if language == "python":
        ast.parse(tests)
        code = extract_program(completion, "python")
        files = {}
        # the prompt is code (HumanEval) when it parses, or would with a body (a bare signature)
        runnable = next((p for p in (prompt, prompt + "    pass\n") if entry_point and _is_python(p)), None)
        if runnable is not None:
            files["prompt.py"] = runnable
            if not re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
                code = prompt + code  # a HumanEval-style body continuation
        files["program.py"] = code
        secret["entry_point"] = entry_point
    elif language in ("c", "cpp"):
        code, declarations = extract_program(completion, language), ""
        signature = c_signature(prompt)
        if signature is not None:  # the prompt ends in the function's signature: HumanEval-X style
            declarations = signature[0] + ";\n"
            if not re.search(rf"\b{re.escape(signature[1])}\s*\([^;{{]*\)\s*{{", code):
                code = prompt + code  # a body continuation
        files = {f"program.{language}": code}
        secret.update(language=language, tests=declarations + tests)
    else:
        raise ValueError(f"code_tests: unsupported language {language!r} (python, c, cpp)")
    launch = f"import sys; sys.path.insert(0, '{{harness_bin}}'); import {_HARNESS[language]} as h; h.main()"
    argv = ["python", "-I", "-S", "-c", launch, "{secret_fd}", "{verdict_fd}"]
    return files, argv, marshal.dumps(secret), nonce


def parse_verdict(text: str, nonce: str) -> tuple[int, int, str] | None:
    """(passed, total, reason) from the one verdict line carrying this run's nonce, or None."""
    lines = [line for line in text.splitlines() if line.split(" ", 1)[0] == nonce]
    if len(lines) != 1:
        return None
    parts = lines[0].split(" ", 3) + [""]
    try:
        passed, total = int(parts[1]), int(parts[2])
    except ValueError:
        return None
    if not 0 <= passed <= total or not 1 <= total <= 10**6:
        return None
    return passed, total, parts[3].strip()


def _score(result: RunResult, nonce: str, partial: bool) -> CodeScore:
    if result.status == "error":
        return CodeScore(0.0, f"sandbox error: {result.stderr[:200]}")
    if result.status in ("timeout", "output_limit"):
        return CodeScore(0.0, result.status)
    verdict = parse_verdict(result.verdict, nonce)
    if verdict is None:
        last = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        return CodeScore(0.0, f"failed: no verdict ({last[:200]})")
    passed, total, reason = verdict
    if reason in ("compile error", "timeout"):
        return CodeScore(0.0, reason)
    if partial:
        if reason.endswith("tests passed"):
            return CodeScore(passed / total, f"{passed}/{total} tests passed")
        return CodeScore(0.0, f"failed before any test ran: {reason}")
    return CodeScore(1.0, "passed") if passed == total else CodeScore(0.0, f"failed: {reason}")


_POOLS: dict[tuple, SandboxPool] = {}
_POOLS_LOCK = threading.Lock()


def sandbox_pool(mode: str = "bwrap", max_workers: int = 4, uid_base: int | None = None, **limits) -> SandboxPool:
    """A shared pool per configuration (pools are costly to build and safe to reuse)."""
    key = (mode, max_workers, uid_base, tuple(sorted(limits.items())))
    with _POOLS_LOCK:
        if key not in _POOLS:
            sandbox = Sandbox(SandboxLimits(**limits), mode=mode, uid_base=uid_base)
            _POOLS[key] = SandboxPool(sandbox, max_workers)
        return _POOLS[key]


def score_programs(prompts, completions, tests, entry_points=None, language: str = "python",
                   partial_credit: bool = False, pool: SandboxPool | None = None) -> list[CodeScore | None]:
    """Run every (prompt, completion, tests) in the pool; None where a sample has no tests."""
    pool = pool or sandbox_pool()
    if language in ("c", "cpp") and not (pool.sandbox.bin_dir and (pool.sandbox.bin_dir / "c_runner").exists()):
        raise SandboxUnavailable("code_tests for C/C++ needs gcc on the host to build its test runner")
    seconds = max(pool.sandbox.limits.wall_seconds - 1.0, 0.5)  # the harness's own deadline, inside the wall
    entry_points = entry_points or [None] * len(completions)
    scores: list[CodeScore | None] = [None] * len(completions)
    jobs, where, nonces = [], [], []
    for i, (p, c, t, ep) in enumerate(zip(prompts, completions, tests, entry_points, strict=True)):
        if t is None or not str(t).strip():
            continue
        text = completion_text(c)
        if not text.strip():
            scores[i] = CodeScore(0.0, "empty completion")
            continue
        try:
            files, argv, secret, nonce = build_job(prompt_text(p) if isinstance(p, list) else (p or ""), text,
                                                   str(t), ep, language, partial_credit, seconds)
        except SyntaxError as exc:
            scores[i] = CodeScore(0.0, f"malformed test code: SyntaxError: {exc.msg}")
            continue
        jobs.append((files, argv, secret))
        where.append(i)
        nonces.append(nonce)
    for i, result, nonce in zip(where, pool.map(jobs), nonces, strict=True):
        scores[i] = _score(result, nonce, partial_credit)
    return scores


def code_tests(prompts, completions, tests=None, test=None, entry_point=None, language: str = "python",
               partial_credit: bool = False, sandbox: str = "bwrap", max_workers: int = 4, cpu_seconds: int = 5,
               wall_seconds: float = 10.0, memory_mb: int = 1024, **_columns) -> list[float | None]:
    """TRL-signature reward: tests come from the `tests` column (or HumanEval's `test`)."""
    tests = tests if tests is not None else test
    if tests is None:
        return [None] * len(completions)
    pool = sandbox_pool(sandbox, max_workers, cpu_seconds=cpu_seconds, wall_seconds=wall_seconds,
                        memory_mb=memory_mb)
    scores = score_programs(prompts, completions, tests, entry_point, language, partial_credit, pool)
    return [None if s is None else s.score for s in scores]
