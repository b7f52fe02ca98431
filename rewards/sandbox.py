"""Running untrusted programs: bubblewrap isolation plus resource limits, and a pool.

Each program runs in a fresh directory under `bwrap` with
- no network (a new, empty network namespace: even loopback is unreachable), new pid, ipc, uts
  and cgroup namespaces, and `--die-with-parent`, so killing the sandbox kills all it spawned;
- a read-only view of /usr, /etc and the Python installation only: the host's home, the
  project checkout and /tmp are not visible; a private writable /tmp and the working directory;
- rlimits (via `prlimit`): CPU seconds, address space, processes, file size, open files, no
  core dumps; when deepalign runs as root each pool slot runs as its own unprivileged uid, so the
  process limit is per sandbox and a fork bomb in one cannot starve another;
- a wall-clock timeout and an output cap, after which the whole process group is killed.
Without bwrap, `Sandbox(mode="bwrap")` refuses to run; `mode="rlimit"` (opt-in, with a
warning) keeps the rlimits, timeout and output cap but not the isolation, and runs as the
calling user (as root the kernel does not enforce the process limit).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path


class SandboxUnavailable(RuntimeError):
    """The requested sandbox mode cannot run on this machine."""


@dataclass
class SandboxLimits:
    cpu_seconds: int = 5
    memory_mb: int = 1024
    max_processes: int = 32
    file_size_mb: int = 16
    open_files: int = 64
    wall_seconds: float = 10.0
    output_bytes: int = 64 * 1024


@dataclass
class RunResult:
    """status: ok (exit 0) | failed (non-zero exit) | timeout | output_limit | error (could not run)."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def python_executable() -> str:
    """The base interpreter (not a venv's): it is all a test program needs, the stdlib."""
    for name in ("python3", "python"):
        path = Path(sys.base_prefix) / "bin" / name
        if path.exists():
            return str(path)
    return sys.executable


class Sandbox:
    UID_BASE = 61000

    def __init__(self, limits: SandboxLimits | None = None, mode: str = "bwrap", workdir: str | None = None,
                 uid_base: int = UID_BASE):
        if mode not in ("bwrap", "rlimit"):
            raise ValueError(f"sandbox mode must be 'bwrap' or 'rlimit', got {mode!r}")
        self.limits = limits or SandboxLimits()
        self.mode = mode
        self.bwrap = shutil.which("bwrap")
        self.prlimit = shutil.which("prlimit")
        self.setpriv = shutil.which("setpriv")
        if mode == "bwrap" and self.bwrap is None:
            raise SandboxUnavailable(
                "bubblewrap (bwrap) is not installed: `apt-get install bubblewrap`, or set the sandbox mode to "
                "'rlimit' to accept rlimit-only isolation (no filesystem or network isolation)"
            )
        if mode == "rlimit":
            warnings.warn("code sandbox in rlimit-only mode: programs can read the filesystem and use the network",
                          stacklevel=2)
        if self.prlimit is None:
            raise SandboxUnavailable("prlimit (util-linux) is needed to apply resource limits")
        self.workdir = workdir
        self.uid_base = uid_base  # slot k runs as uid uid_base + k (when deepalign runs as root)
        self.as_root = os.geteuid() == 0
        if self.as_root and self.setpriv is None:
            raise SandboxUnavailable("setpriv (util-linux) is needed to drop root inside the sandbox")
        self.python = python_executable()

    def _limits_argv(self) -> list[str]:
        lim = self.limits
        return [self.prlimit, f"--cpu={lim.cpu_seconds}", f"--as={lim.memory_mb * 2**20}",
                f"--nproc={lim.max_processes}", f"--fsize={lim.file_size_mb * 2**20}",
                f"--nofile={lim.open_files}", "--core=0", "--"]

    def _bwrap_argv(self, work: Path, user: int | None) -> list[str]:
        if user is None:  # unprivileged: bwrap makes a user namespace and drops every capability
            argv = [self.bwrap, "--unshare-all", "--cap-drop", "ALL"]
        else:  # as root: mount with root's rights, then setpriv drops to the slot's uid inside
            argv = [self.bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
                    "--unshare-cgroup-try"]
        argv += ["--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
        for name in ("bin", "lib", "lib64", "sbin"):
            host = Path("/") / name
            if host.is_symlink():
                argv += ["--symlink", os.readlink(host), f"/{name}"]
            elif host.exists():
                argv += ["--ro-bind", str(host), f"/{name}"]
        prefix = Path(sys.base_prefix)
        if not str(prefix).startswith("/usr"):
            argv += ["--ro-bind", str(prefix), str(prefix)]
        argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--bind", str(work), "/sandbox",
                 "--chdir", "/sandbox", "--clearenv", "--setenv", "HOME", "/sandbox",
                 "--setenv", "PATH", f"{prefix}/bin:/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8", "--"]
        if user is not None:
            argv += [self.setpriv, f"--reuid={user}", f"--regid={user}", "--clear-groups", "--"]
        return argv

    def run(self, files: dict[str, str | bytes], argv: list[str], slot: int = 0) -> RunResult:
        """Write `files` into a fresh directory and run `argv` there (`python` = the base interpreter)."""
        argv = [self.python if a == "python" else a for a in argv]
        work = Path(tempfile.mkdtemp(prefix="deepalign-sandbox-", dir=self.workdir))
        start = time.perf_counter()
        try:
            for name, content in files.items():
                path = work / name
                path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
            user = None
            if self.as_root:
                user = self.uid_base + slot
                os.chown(work, user, user)
                for name in files:
                    os.chown(work / name, user, user)
            os.chmod(work, 0o700)
            if self.mode == "bwrap":
                cmd = self._limits_argv() + self._bwrap_argv(work, user) + argv
                return self._execute(cmd, "/", None, start)
            # rlimit mode runs as the calling user: the interpreter may live where no other uid can
            # read it; as root, the kernel then does not enforce the process limit (weaker mode).
            return self._execute(self._limits_argv() + argv, str(work), None, start)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _execute(self, cmd: list[str], cwd: str, user: int | None, start: float) -> RunResult:
        cap = self.limits.output_bytes
        try:
            proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True, user=user, group=user,
                                    extra_groups=[] if user is not None else None,
                                    env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        except OSError as exc:
            return RunResult("error", None, "", f"could not start sandbox: {exc}", time.perf_counter() - start)
        overflow = threading.Event()
        buffers: dict[str, bytearray] = {"out": bytearray(), "err": bytearray()}

        def drain(stream, key):
            while chunk := stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536):
                room = cap - len(buffers[key])
                buffers[key] += chunk[: max(room, 0)]
                if len(chunk) > room:
                    overflow.set()
                    _kill(proc)
                    break
            stream.close()

        readers = [threading.Thread(target=drain, args=(proc.stdout, "out"), daemon=True),
                   threading.Thread(target=drain, args=(proc.stderr, "err"), daemon=True)]
        for r in readers:
            r.start()
        timed_out = False
        try:
            proc.wait(timeout=self.limits.wall_seconds)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill(proc)
            proc.wait()
        for r in readers:
            r.join(timeout=2)
        out = buffers["out"].decode("utf-8", errors="replace")
        err = buffers["err"].decode("utf-8", errors="replace")
        seconds = time.perf_counter() - start
        if timed_out:
            return RunResult("timeout", None, out, err, seconds)
        if overflow.is_set():
            return RunResult("output_limit", proc.returncode, out, err, seconds)
        return RunResult("ok" if proc.returncode == 0 else "failed", proc.returncode, out, err, seconds)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class SandboxPool:
    """Runs many programs in parallel, at most `max_workers` at a time, each in its own slot."""

    def __init__(self, sandbox: Sandbox, max_workers: int = 4):
        self.sandbox = sandbox
        self.max_workers = max_workers
        self._slots: queue.Queue[int] = queue.Queue()
        for i in range(max_workers):
            self._slots.put(i)
        self._executor = cf.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="sandbox")

    def _run(self, files, argv) -> RunResult:
        slot = self._slots.get()
        try:
            return self.sandbox.run(files, argv, slot)
        finally:
            self._slots.put(slot)

    def map(self, jobs: list[tuple[dict[str, str | bytes], list[str]]]) -> list[RunResult]:
        """Results in the order of `jobs` ((files, argv) pairs)."""
        return list(self._executor.map(lambda job: self._run(*job), jobs))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
