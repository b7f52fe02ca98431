"""`code_tests` (compiler feedback, V2 §4): run the completion's program against the `tests`
column in the sandbox; 1.0 if every test passes (or the fraction passed with partial_credit).

Program assembly (Python):
- the program is the last fenced code block of the completion (```python ... ```), or the whole
  completion when it has none;
- HumanEval format (an `entry_point` column): if the program does not define the entry point it
  is a function body, and the prompt (signature + docstring) is put in front of it; the test code
  (`tests`, or HumanEval's `test`) follows, then `check(<entry_point>)`;
- otherwise program + tests (plain asserts).
With partial_credit every `assert` in the tests is rewritten to record pass/fail and go on, and
the score is passed / executed.

C and C++ (`language: c | cpp`): the program and the tests (which hold `main`) are compiled with
the system compiler inside the sandbox and run there.

Every 0 has a reason (`score_programs` returns them): empty completion, failed, timeout,
output_limit, compile error, sandbox error.
"""

from __future__ import annotations

import ast
import re
import threading
from dataclasses import dataclass

from rewards.sandbox import RunResult, Sandbox, SandboxLimits, SandboxPool
from rewards.text import completion_text, prompt_text

_FENCE = re.compile(r"```[ \t]*([\w+#-]*)[ \t]*\n(.*?)```", re.DOTALL)
_LANG_TAGS = {"python": {"python", "py", "python3", ""}, "c": {"c", ""}, "cpp": {"cpp", "c++", "cc", ""}}
RESULT_MARK = "__DEEPALIGN_TESTS__"


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


class _CountAsserts(ast.NodeTransformer):
    def visit_Assert(self, node: ast.Assert):
        call = ast.Call(func=ast.Name("__da_check", ast.Load()),
                        args=[ast.Lambda(args=ast.arguments([], [], None, [], [], None, []), body=node.test)],
                        keywords=[])
        return ast.copy_location(ast.Expr(call), node)


_PARTIAL_PRELUDE = f"""
import atexit as __da_atexit
__da_counts = [0, 0]
def __da_check(condition):
    __da_counts[1] += 1
    try:
        ok = bool(condition())
    except Exception:
        ok = False
    __da_counts[0] += ok
__da_atexit.register(lambda: print("{RESULT_MARK}", __da_counts[0], __da_counts[1], flush=True))
"""


def counted_tests(tests: str) -> str:
    """Rewrite every assert so that it records pass/fail instead of stopping the program."""
    tree = _CountAsserts().visit(ast.parse(tests))
    return _PARTIAL_PRELUDE + ast.unparse(ast.fix_missing_locations(tree))


def python_program(prompt: str, completion: str, tests: str, entry_point: str | None, partial: bool) -> str:
    code = extract_program(completion, "python")
    if entry_point and not re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
        code = prompt + code  # a HumanEval-style body continuation
    test_code = counted_tests(tests) if partial else tests
    parts = [code, test_code]
    if entry_point and re.search(r"def\s+check\s*\(", tests):
        parts.append(f"check({entry_point})")
    return "\n\n".join(parts) + "\n"


_POOLS: dict[tuple, SandboxPool] = {}
_POOLS_LOCK = threading.Lock()


def sandbox_pool(mode: str = "bwrap", max_workers: int = 4, uid_base: int = Sandbox.UID_BASE,
                 **limits) -> SandboxPool:
    """A shared pool per configuration (pools are costly to build and safe to reuse)."""
    key = (mode, max_workers, uid_base, tuple(sorted(limits.items())))
    with _POOLS_LOCK:
        if key not in _POOLS:
            _POOLS[key] = SandboxPool(Sandbox(SandboxLimits(**limits), mode=mode, uid_base=uid_base), max_workers)
        return _POOLS[key]


def _job(prompt, completion, tests, entry_point, language, partial):
    if language == "python":
        return {"main.py": python_program(prompt, completion, tests, entry_point, partial)}, ["python", "-I", "main.py"]
    if language in ("c", "cpp"):
        compiler, ext, std = ("gcc", "c", "-std=c11") if language == "c" else ("g++", "cpp", "-std=c++17")
        source = extract_program(completion, language) + "\n\n" + tests + "\n"
        compile_cmd = f"{compiler} {std} -O1 -o prog main.{ext} -lm 2> compile.txt"
        script = f"{compile_cmd} || {{ cat compile.txt >&2; exit 97; }}; ./prog"
        return {f"main.{ext}": source}, ["/bin/sh", "-c", script]
    raise ValueError(f"code_tests: unsupported language {language!r} (python, c, cpp)")


def _score(result: RunResult, partial: bool, language: str) -> CodeScore:
    if result.status == "error":
        return CodeScore(0.0, f"sandbox error: {result.stderr[:200]}")
    if result.status in ("timeout", "output_limit"):
        return CodeScore(0.0, result.status)
    if language != "python" and result.returncode == 97:
        return CodeScore(0.0, "compile error")
    if partial:
        marks = [line.split() for line in result.stdout.splitlines() if line.startswith(RESULT_MARK)]
        if marks and int(marks[-1][2]) > 0:
            passed, total = int(marks[-1][1]), int(marks[-1][2])
            return CodeScore(passed / total, f"{passed}/{total} tests passed")
        return CodeScore(0.0, "failed before any test ran")
    if result.ok:
        return CodeScore(1.0, "passed")
    last = (result.stderr.strip().splitlines() or ["failed"])[-1]
    return CodeScore(0.0, f"failed: {last[:200]}")


def score_programs(prompts, completions, tests, entry_points=None, language: str = "python",
                   partial_credit: bool = False, pool: SandboxPool | None = None) -> list[CodeScore | None]:
    """Run every (prompt, completion, tests) in the pool; None where a sample has no tests."""
    pool = pool or sandbox_pool()
    entry_points = entry_points or [None] * len(completions)
    scores: list[CodeScore | None] = [None] * len(completions)
    jobs, where = [], []
    for i, (p, c, t, ep) in enumerate(zip(prompts, completions, tests, entry_points, strict=True)):
        if t is None or not str(t).strip():
            continue
        text = completion_text(c)
        if not text.strip():
            scores[i] = CodeScore(0.0, "empty completion")
            continue
        try:
            jobs.append(_job(prompt_text(p) if isinstance(p, list) else (p or ""), text, str(t), ep, language,
                             partial_credit))
        except SyntaxError as exc:
            scores[i] = CodeScore(0.0, f"malformed test code: {exc.msg}")
            continue
        where.append(i)
    for i, result in zip(where, pool.map(jobs), strict=True):
        scores[i] = _score(result, partial_credit, language)
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
