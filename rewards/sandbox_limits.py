"""What the kernel enforces per sandbox beyond rlimits, and what a deepalign process owns.

- `CgroupSlots`: a cgroup per pool slot that caps the total memory (tmpfs included) and the
  number of processes of everything one program starts. cgroup v1 where the memory and pids
  hierarchies are writable (as root in most containers), cgroup v2 where a writable subtree with
  the memory and pids controllers exists, otherwise none: `mode` says which, and the sandbox then
  falls back to per-process rlimits (address space per process; processes per uid). Cgroups that
  a killed deepalign process left behind are removed at start.
- `reserve_uid_range`: a range of uids no other deepalign process on the machine uses at the same
  time (an exclusive lock on a file per range, held for the process's life), so that two
  processes' sandboxes never share a uid (and with it a process-count limit).
"""

from __future__ import annotations

import atexit
import fcntl
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
UID_LOCKS = Path("/tmp/deepalign-sandbox-uids")
UID_FIRST, UID_SPAN, UID_RANGES = 200_000, 256, 4096


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
        return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _remove_empty(folder: Path) -> None:
    """rmdir a cgroup and its children, deepest first; a cgroup still in use stays (never raises)."""
    try:
        children = [p for p in folder.iterdir() if p.is_dir()]
    except OSError:
        return
    for child in children:
        _remove_empty(child)
    try:
        folder.rmdir()
    except OSError:
        pass


class CgroupSlots:
    """A cgroup per slot of one sandbox, made on first use: `procs(slot)` lists the files a launcher
    writes its pid into. Each instance has its own folder (`<pid>-<n>`), so two pools of one process
    with different limits never share a cgroup.

    The pids controller uncharges an exited process only after an RCU grace period, so on a busy
    machine the count of a slot's finished runs lingers into the next run's (27 of 32 were seen);
    its limit is therefore `max_processes` + PIDS_SLACK, and the exact bound is the per-uid rlimit."""

    _instances = 0
    PIDS_SLACK = 256

    def __init__(self, memory_bytes: int, max_processes: int):
        self.memory_bytes, self.max_processes = memory_bytes, max_processes + self.PIDS_SLACK
        CgroupSlots._instances += 1
        self.name = f"{os.getpid()}-{CgroupSlots._instances}"
        self.mode: str | None = None
        self._roots: list[Path] = []  # this instance's folder in each hierarchy
        self._slots: dict[int, list[Path]] = {}
        for mode, roots in (("v1", self._v1_roots), ("v2", self._v2_roots)):
            try:
                found = roots()
            except OSError:
                found = None
            if found:
                self.mode, self._roots = mode, found
                if self._make_slot(0) is None:
                    self.close()
                    continue
                atexit.register(self.close)
                break

    def procs(self, slot: int) -> list[Path]:
        if not self.mode:
            return []
        dirs = self._slots.get(slot) or self._make_slot(slot)
        return [d / "cgroup.procs" for d in dirs] if dirs else []

    def _v1_roots(self) -> list[Path] | None:
        hierarchies = [CGROUP_ROOT / "memory", CGROUP_ROOT / "pids"]
        if not ((hierarchies[0] / "memory.limit_in_bytes").exists() and (hierarchies[1] / "cgroup.procs").exists()):
            return None
        roots = []
        for hierarchy in hierarchies:
            base = hierarchy / "deepalign"
            base.mkdir(exist_ok=True)
            _clean_leftovers(base)
            roots.append(base / self.name)
            roots[-1].mkdir()
        return roots

    def _v2_roots(self) -> list[Path] | None:
        if not (CGROUP_ROOT / "cgroup.controllers").exists():
            return None
        line = next((x for x in Path("/proc/self/cgroup").read_text().splitlines() if x.startswith("0::")), None)
        if line is None:
            return None
        parent = CGROUP_ROOT / line[3:].lstrip("/")
        _clean_leftovers(parent, prefix="deepalign-")
        root = parent / f"deepalign-{self.name}"
        root.mkdir()
        if not _write(root / "cgroup.subtree_control", "+memory +pids"):
            _remove_empty(root)
            return None
        return [root]

    def _make_slot(self, slot: int) -> list[Path] | None:
        dirs = [root / f"slot-{slot}" for root in self._roots]
        for d in dirs:
            d.mkdir(exist_ok=True)
        if self.mode == "v1":
            mem, pids = dirs
            ok = _write(mem / "memory.limit_in_bytes", str(self.memory_bytes)) and \
                _write(pids / "pids.max", str(self.max_processes))
            if (mem / "memory.memsw.limit_in_bytes").exists():  # no swapping out of the limit either
                _write(mem / "memory.memsw.limit_in_bytes", str(self.memory_bytes))
        else:
            ok = _write(dirs[0] / "memory.max", str(self.memory_bytes)) and \
                _write(dirs[0] / "pids.max", str(self.max_processes))
            _write(dirs[0] / "memory.swap.max", "0")
        if not ok:
            return None
        self._slots[slot] = dirs
        return dirs

    def close(self) -> None:
        for root in self._roots:
            _remove_empty(root)
        self._roots, self._slots, self.mode = [], {}, None


def _clean_leftovers(base: Path, prefix: str = "") -> None:
    """Cgroups of deepalign processes that no longer run (killed before they could clean up)."""
    for folder in base.glob(f"{prefix}*"):
        pid = folder.name.removeprefix(prefix).split("-", 1)[0]
        if folder.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            _remove_empty(folder)


_RESERVED: dict[int, int] = {}  # uid base -> lock fd, held while this process lives


def reserve_uid_range() -> int:
    """The first uid of a range of UID_SPAN uids that no other live deepalign process holds."""
    UID_LOCKS.mkdir(mode=0o1777, exist_ok=True)
    for k in range(UID_RANGES):
        base = UID_FIRST + k * UID_SPAN
        if base in _RESERVED:
            continue
        fd = os.open(UID_LOCKS / f"range-{k}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _RESERVED[base] = fd
        return base
    raise RuntimeError(f"no free sandbox uid range in {UID_LOCKS} ({UID_RANGES} in use)")
