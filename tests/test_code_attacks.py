"""The attack suite of `code_tests`: programs that try to win without being right, or to escape,
exhaust or outlive the sandbox. Every one is wrong for its tests, so each must score 0; a correct
control scores 1 right after it; no file, process or connection is left behind on the host."""

import os
import shutil
import socket
import time
import uuid
from pathlib import Path

import psutil
import pytest

from rewards.code_tests import sandbox_pool, score_programs
from rewards.sandbox_limits import UID_SPAN

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
FAST = {"cpu_seconds": 2, "wall_seconds": 4.0, "memory_mb": 512}
TESTS = "assert f(2) == 5"  # every Python attack's f is wrong for it
WRONG = "def f(x):\n    return 0\n"
C_TESTS = "#include <assert.h>\nint add(int a, int b);\nint main(void) { assert(add(2, 3) == 5); return 0; }"
C_WRONG = "int add(int a, int b) { return 0; }\n"

PYTHON = {  # ends the run with status 0 before or instead of the tests
    "sys_exit_top_level": "import sys\nsys.exit(0)\n" + WRONG,
    "sys_exit_in_function": "def f(x):\n    import sys\n    sys.exit(0)\n",
    "raise_systemexit": "def f(x):\n    raise SystemExit(0)\n",
    "os_exit_in_function": "def f(x):\n    import os\n    os._exit(0)\n",
    "os_exit_top_level": "import os\nos._exit(0)\n",
    "atexit_exit_0": "import atexit, os\natexit.register(lambda: os._exit(0))\n" + WRONG,
    "excepthook_exit_0": "import os, sys\nsys.excepthook = lambda *a: os._exit(0)\n" + WRONG,
    "del_exits_0": "class G:\n    def __del__(self):\n        import os\n        os._exit(0)\ng = G()\n" + WRONG,
    "exception_str_exits_0": "class E(Exception):\n    def __str__(self):\n        import os\n        os._exit(0)\n"
                             "def f(x):\n    raise E()\n",
    "stderr_write_exits_0": "import os, sys\nsys.stderr.write = lambda *a: os._exit(0)\n" + WRONG,
    "thread_exits_after_main": "import os, threading\n"
                               "threading.Thread(target=lambda: (threading.main_thread().join(), os._exit(0)))"
                               ".start()\n"
                               + WRONG,
    "execv_bin_true": "import os\nos.execv('/bin/true', ['true'])\n",
    "reexec_with_O": "import os, sys\nif not sys.flags.optimize:\n"
                     "    os.execv(sys.executable, [sys.executable, '-O', *sys.argv])\n" + WRONG,
    "rewrite_own_source": "import os, sys\nsrc = open(__file__).read()\ntry:\n"
                          "    open('/sandbox/copy.py', 'w').write(src.replace('assert', 'pass'))\n"
                          "    os.execv(sys.executable, [sys.executable, '/sandbox/copy.py'])\nexcept OSError:\n"
                          "    pass\n" + WRONG,
    "settrace_skips_asserts": "import sys\nsys.settrace(lambda *a: None)\n" + WRONG,
    "monkeypatch_builtins": "import builtins\nbuiltins.AssertionError = SystemExit\n" + WRONG,
    "always_equal_object": "class A:\n    def __eq__(self, other):\n        return True\ndef f(x):\n    return A()\n",
    "huge_return_value": "def f(x):\n    return 'x' * (200 * 2**20)\n",
    # fakes the result line or the verdict
    "print_marker_line": "print('__DEEPALIGN_TESTS__ 1000 1')\n" + WRONG,
    "print_negative_marker": "print('__DEEPALIGN_TESTS__ -7 1')\n" + WRONG,
    "print_malformed_marker": "print('__DEEPALIGN_TESTS__ x')\n" + WRONG,
    "verdict_to_every_fd": "import os\nfor fd in range(3, 64):\n    try:\n"
                           "        os.write(fd, b'00112233445566778899aabbccddeeff 1 1 passed\\n')\n"
                           "    except OSError:\n        pass\n" + WRONG,
    "parent_fds_via_proc": "import os\nfor fd in os.listdir(f'/proc/{os.getppid()}/fd'):\n    try:\n"
                           "        out = os.open(f'/proc/{os.getppid()}/fd/{fd}', os.O_WRONLY)\n"
                           "        os.write(out, b'x 1 1 passed\\n')\n"
                           "    except OSError:\n        pass\n" + WRONG,
    "parent_memory_via_proc": "import os\ntry:\n    open(f'/proc/{os.getppid()}/mem', 'rb').read(1)\n"
                              "    leaked = True\nexcept OSError:\n    leaked = False\n"
                              "def f(x):\n    return 5 if leaked else 0\n",
    "ptrace_the_harness": "import ctypes, os\nlibc = ctypes.CDLL(None)\nok = libc.ptrace(16, os.getppid(), 0, 0) == 0\n"
                          "def f(x):\n    return 5 if ok else 0\n",
    # reads the tests to copy their expected values
    "read_tests_from_files": "import glob, re\nfound = []\nfor p in glob.glob('/sandbox/*') + glob.glob('/tmp/*'):\n"
                             "    try:\n        found += re.findall(r'== (\\d+)', open(p).read())\n"
                             "    except OSError:\n        pass\n"
                             "def f(x):\n    return int(found[0]) if found else 0\n",
    "read_tests_from_memory": "import gc, re\ndef f(x):\n    for o in gc.get_objects():\n"
                              "        if isinstance(o, str) and 'assert f(2) ' + '==' in o:\n"
                              "            return int(re.findall(r'== (\\d+)', o)[0])\n    return 0\n",
    "read_caller_frame": "import sys\ndef f(x):\n    frame = sys._getframe(1)\n    while frame:\n"
                         "        seen = str(frame.f_code.co_consts) + str(frame.f_locals)\n"
                         "        if 'f(2) ' + '== 5' in seen:  # joined: the program's own source does not match\n"
                         "            return 5\n"
                         "        frame = frame.f_back\n    return 0\n",
    "kill_the_harness": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(1, signal.SIGKILL)\n"
                        + WRONG,
    "stop_the_harness": "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)\n" + WRONG,
    # isolation and limits
    "fork_bomb": "import os\nwhile True:\n    os.fork()\n",
    "memory_bomb": "x = bytearray(8 * 1024 ** 3)\n" + WRONG,
    "children_share_one_memory_budget":
        "import os\npids = []\nfor _ in range(4):\n    pid = os.fork()\n    if pid == 0:\n"
        "        x = bytearray(300 * 2**20)\n        x[::4096] = b'y' * len(x[::4096])\n        import time\n"
        "        time.sleep(1.5)\n        os._exit(0)\n    pids.append(pid)\n"
        "ok = all(os.waitpid(p, 0)[1] == 0 for p in pids)\ndef f(x):\n    return 5 if ok else 0\n",
    "fill_the_disk": "chunk = b'x' * 2**20\ntry:\n    with open('/tmp/big', 'wb') as out:\n"
                     "        for _ in range(1536):\n            out.write(chunk)\n    full = False\nexcept OSError:\n"
                     "    full = True\ndef f(x):\n    return 0 if full else 5\n",
    "deep_folder_tree": "import os\nfor i in range(3000):\n    os.mkdir('d')\n    os.chdir('d')\n" + WRONG,
    "infinite_loop": "while True:\n    pass\n",
    "long_sleep": "import time\ntime.sleep(3600)\n",
    "huge_output": "while True:\n    print('x' * 10000)\n",
    "network_loopback": "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                        "s.sendall(b'pwned')\n" + WRONG,
    "write_outside": "open('{out}', 'w').write('pwned')\n" + WRONG,
    "read_home": "data = open('{home}').read()\ndef f(x):\n    return 5 if data == 'home secret' else 0\n",
    "read_checkout": "data = open('{repo}').read()\ndef f(x):\n    return 5 if data == 'repo secret' else 0\n",
    "spawn_subprocess": "import subprocess\nsubprocess.Popen(['sleep', '987{marker}'], start_new_session=True)\n"
                        "subprocess.run(['touch', '{out}'])\n" + WRONG,
    "exhaust_fds": "fds = [open('/dev/null') for _ in range(100000)]\n" + WRONG,
    "user_namespace": "import subprocess\nok = subprocess.run(['unshare', '-Ur', 'true']).returncode == 0\n"
                      "def f(x):\n    return 5 if ok else 0\n",
    "keyring_key": "import ctypes\nlibc = ctypes.CDLL(None)\n"
                   "ok = libc.syscall(248, b'user', b'deepalign', b'v', 1, -4) >= 0\n"
                   "def f(x):\n    return 5 if ok else 0\n",
}

C = {  # compiled with the tests; wrong for them
    "c_define_ndebug": ("c", "#define NDEBUG\n" + C_WRONG),
    "c_own_main_then_define_main": ("c", "int main(void) { return 0; }\n#define main xmain\n" + C_WRONG),
    "c_sigabrt_to_exit_0": ("c", "#include <signal.h>\n#include <unistd.h>\nstatic void h(int s) { _exit(0); }\n"
                                 "__attribute__((constructor)) static void c(void) { signal(SIGABRT, h); }\n"
                                 + C_WRONG),
    "c_exit_0_in_function": ("c", "#include <stdlib.h>\nint add(int a, int b) { exit(0); }\n"),
    "c_atexit_exit_0": ("c", "#include <stdlib.h>\n#include <unistd.h>\nstatic void h(void) { _exit(0); }\n"
                             "__attribute__((constructor)) static void c(void) { atexit(h); }\n" + C_WRONG),
    "c_constructor_forges_verdict": ("c", "#include <stdio.h>\n#include <unistd.h>\n"
                                          "__attribute__((constructor)) static void c(void) {\n  char b[80];\n"
                                          "  int n = (int)read(3, b, 80);\n  for (int fd = 3; fd < 64; fd++)\n"
                                          "    dprintf(fd, \"%.*s 1 1 passed\\n\", n > 0 ? n : 0, b);\n  _exit(0);\n}\n"
                                          + C_WRONG),
    "c_defines_the_tests_main": ("c", "int da_tests_main(void) { return 0; }\n" + C_WRONG),
    "c_includes_the_tests": ("c", "#include \"/sandbox/tests.c\"\n" + C_WRONG),
    "c_prints_a_verdict": ("c", "#include <stdio.h>\n__attribute__((constructor)) static void c(void) "
                                "{ printf(\"0123 1 1 passed\\n\"); }\n" + C_WRONG),
    "cpp_define_ndebug": ("cpp", "#define NDEBUG\n#include <cassert>\nint add(int a, int b) { return 0; }\n"),
    "cpp_throw_in_static_init": ("cpp", "#include <cstdlib>\nstruct X { X() { std::exit(0); } } x;\n" + C_WRONG),
}


@pytest.fixture
def host(tmp_path):
    """Files the attacks try to read or write on the host, and a loopback listener."""
    secret_home = Path.home() / f".deepalign-secret-{uuid.uuid4().hex}"
    secret_home.write_text("home secret")
    secret_repo = REPO / f".deepalign-secret-{uuid.uuid4().hex}"
    secret_repo.write_text("repo secret")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.2)
    yield {"home": secret_home, "repo": secret_repo, "out": tmp_path / "pwned", "port": listener.getsockname()[1],
           "listener": listener, "marker": uuid.uuid4().hex[:8]}
    listener.close()
    secret_home.unlink(missing_ok=True)
    secret_repo.unlink(missing_ok=True)


def _pool():
    return sandbox_pool("bwrap", 2, **FAST)


def _host_temp() -> set[str]:
    """This process's sandbox folders in the host's temp folder (bwrap mode makes none)."""
    return {p.name for p in Path("/tmp").glob(f"deepalign-sandbox-{os.getpid()}-*")}


def _score(program: str, tests: str, language: str = "python"):
    [result] = score_programs([""], [program], [tests], language=language, pool=_pool())
    return result


def _check_host_untouched(host, temp_before):
    pool = _pool()
    assert not host["out"].exists()
    with pytest.raises(TimeoutError):
        host["listener"].accept()  # nothing reached the host's loopback
    time.sleep(0.2)
    uid_low = pool.sandbox.uid_base
    survivors = [p for p in psutil.process_iter(["uids", "cmdline"])
                 if (p.info["uids"] and uid_low <= p.info["uids"].real < uid_low + UID_SPAN and pool.sandbox.as_root)
                 or any(f"987{host['marker']}" in part for part in p.info["cmdline"] or [])]
    assert survivors == []  # no process outlives its sandbox
    assert _host_temp() == temp_before  # nothing written on the host's disk


@pytest.mark.parametrize("name", list(PYTHON))
def test_python_attack_scores_zero(name, host):
    cgroups = _pool().sandbox.cgroups
    if name == "children_share_one_memory_budget" and not (cgroups and cgroups.mode):
        pytest.skip("no writable cgroup here: memory is limited per process only (README: sandbox guarantees)")
    temp_before = _host_temp()
    program = PYTHON[name]
    for key in ("port", "out", "home", "repo", "marker"):
        program = program.replace("{" + key + "}", str(host[key]))
    start = time.perf_counter()
    result = _score(program, TESTS)
    assert result.score == 0.0, result.reason
    assert time.perf_counter() - start < FAST["wall_seconds"] + 3  # within its timeout
    _check_host_untouched(host, temp_before)
    assert _score("def f(x):\n    return x + 3\n", TESTS).score == 1.0  # the next program runs normally


@pytest.mark.parametrize("name", list(C))
def test_c_attack_scores_zero(name, host):
    temp_before = _host_temp()
    language, program = C[name]
    tests = C_TESTS.replace("<assert.h>", "<cassert>") if language == "cpp" else C_TESTS
    result = _score(program, tests, language)
    assert result.score == 0.0, result.reason
    _check_host_untouched(host, temp_before)
    assert _score("int add(int a, int b) { return a + b; }\n", tests, language).score == 1.0


def test_partial_credit_is_parsed_defensively_and_clamped():
    pool = _pool()
    tests = "assert f(1) == 2\nassert f(2) == 3"
    for program in ("print('__DEEPALIGN_TESTS__ 1000 1')\n" + WRONG, "print('x 5 1')\n" + WRONG,
                    "import os\nos._exit(0)\n"):
        [result] = score_programs([""], [program], [tests], partial_credit=True, pool=pool)
        assert result.score == 0.0, result.reason
    ending_without_newline = "def f(x):\n    print('no newline', end='')\n    return x + 1\n"
    [result] = score_programs([""], [ending_without_newline], [tests], partial_credit=True, pool=pool)
    assert (result.score, result.reason) == (1.0, "2/2 tests passed")


def test_a_correct_program_may_use_tmp_and_the_working_folder():
    program = "open('/tmp/scratch', 'w').write('1')\nopen('notes.txt', 'w').write('2')\n" \
              "def f(x):\n    return int(open('/tmp/scratch').read()) + int(open('notes.txt').read()) + x\n"
    assert _score(program, TESTS).score == 1.0


def test_sandbox_says_what_it_guarantees_here():
    guarantees = _pool().sandbox.guarantees
    assert guarantees.startswith("bwrap + seccomp")
    assert ("cgroup" in guarantees) and ("memory" in guarantees)
    assert os.path.exists("/proc")  # sanity: Linux, where the sandbox applies
