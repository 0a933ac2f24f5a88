"""What confines a sandboxed candidate beyond rlimits: a seccomp filter, and cgroups.

Process accounting: `user_threads` counts what a uid runs (RLIMIT_NPROC's count), `nproc_per_userns`
says whether the kernel counts it per user namespace; `oom_floor_holds`
says whether an OOM score set here also becomes the floor of the processes below; `sweep` and
`remove_tree` clean up after a program of the weaker `process` mode.

Cgroups: where the harness is root and the cgroup v1 memory and pids hierarchies are writable
(containers like these machines), every candidate gets a memory cgroup and a pids cgroup of its
own (`CandidateCgroups`): all its processes together are held to one memory limit and one
process limit. A delegated cgroup v2 subtree is detected (`cgroup_v2_subtree`) and named in
the log, but not used: no machine here has one to test it on.

`program()` is a classic BPF program that bubblewrap loads (`--seccomp FD`).

rlimits bound each process, not what a program can pin outside its address space or set up
around it. The filter makes these calls fail with EPERM (benchmark programs never need them):
- memory outside RLIMIT_AS: memfd_create, memfd_secret, System V shared memory, semaphores and
  message queues (shmget, semget, msgget: none is counted by any rlimit, and without a memory
  cgroup nothing else bounds them), mq_open, userfaultfd;
- mounts and namespaces (a nested user namespace could mount an uncapped tmpfs): mount, umount2,
  pivot_root, the new mount API (fsopen ... mount_setattr), unshare, setns, and clone with any
  CLONE_NEW* flag; clone3 answers ENOSYS (its flags sit behind a pointer a filter cannot read), so
  the C library falls back to clone;
- kernel attack surface no program here needs: bpf, perf_event_open, io_uring_setup, keyctl,
  add_key, request_key.
`socket` for any family but AF_UNIX fails with EAFNOSUPPORT, as on a kernel built without networking:
the sandbox has no network, and the socket buffers of its own loopback (TCP memory) are kernel memory
that no memory cgroup v1 counts, bounded only by the whole machine's `tcp_mem`; unix sockets stay
(multiprocessing uses them; their buffers are counted in the memory cgroup).
A syscall of another ABI (i386 through int 0x80, x32 numbers on x86-64) fails whatever it is.
Written by hand (no libseccomp): the program is a dozen lines of BPF and has no dependency.
Syscall numbers: linux/arch/x86/entry/syscalls/syscall_64.tbl and include/uapi/asm-generic/unistd.h.
"""

from __future__ import annotations

import atexit
import errno
import functools
import logging
import os
import platform
import secrets
import shutil
import signal
import struct
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]
NR, ARCH, ARG0_LOW = 0, 4, 16
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
LD_W_ABS, JEQ_K, JGE_K, JSET_K, RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
AF_UNIX = 1
CLONE_NEW = 0x00000080 | 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
X32_BIT = 0x40000000

DENIED = ("memfd_create", "memfd_secret", "shmget", "semget", "msgget", "mq_open", "userfaultfd", "mount", "umount2", "pivot_root",
          "fsopen", "fsconfig", "fsmount", "fspick", "open_tree", "move_mount", "mount_setattr", "unshare",
          "setns", "bpf", "perf_event_open", "io_uring_setup", "keyctl", "add_key", "request_key")
ABIS = {  # machine: (AUDIT_ARCH_*, syscall numbers)
    "x86_64": (0xC000003E, dict(
        memfd_create=319, memfd_secret=447, shmget=29, semget=64, msgget=68, mq_open=240, userfaultfd=323, mount=165, umount2=166,
        pivot_root=155, fsopen=430, fsconfig=431, fsmount=432, fspick=433, open_tree=428, move_mount=429,
        mount_setattr=442, unshare=272, setns=308, bpf=321, perf_event_open=298, io_uring_setup=425, keyctl=250,
        add_key=248, request_key=249, clone=56, clone3=435, socket=41)),
    "aarch64": (0xC00000B7, dict(
        memfd_create=279, memfd_secret=447, shmget=194, semget=190, msgget=186, mq_open=180, userfaultfd=282, mount=40, umount2=39,
        pivot_root=41, fsopen=430, fsconfig=431, fsmount=432, fspick=433, open_tree=428, move_mount=429,
        mount_setattr=442, unshare=97, setns=268, bpf=280, perf_event_open=241, io_uring_setup=425, keyctl=219,
        add_key=217, request_key=218, clone=220, clone3=435, socket=198)),
}


def supported() -> bool:
    return platform.machine() in ABIS


def program(machine: str | None = None) -> bytes:
    """The filter for this machine's ABI as `struct sock_filter[]` bytes (native byte order)."""
    arch, nrs = ABIS[machine or platform.machine()]
    ins: list[tuple[int, int | str, int | str, int]] = [(LD_W_ABS, 0, 0, ARCH), (JEQ_K, 0, "deny", arch),
                                                        (LD_W_ABS, 0, 0, NR)]
    if arch == ABIS["x86_64"][0]:
        ins.append((JGE_K, "deny", 0, X32_BIT))
    ins += [(JEQ_K, "deny", 0, nrs[name]) for name in DENIED]
    ins += [(JEQ_K, 0, 2, nrs["socket"]), (LD_W_ABS, 0, 0, ARG0_LOW), (JEQ_K, "allow", "nofamily", AF_UNIX)]
    ins += [(JEQ_K, "enosys", 0, nrs["clone3"]), (JEQ_K, 0, "allow", nrs["clone"]),
            (LD_W_ABS, 0, 0, ARG0_LOW), (JSET_K, "deny", "allow", CLONE_NEW)]
    labels = {"allow": len(ins), "deny": len(ins) + 1, "enosys": len(ins) + 2, "nofamily": len(ins) + 3}
    ins += [(RET_K, 0, 0, RET_ALLOW), (RET_K, 0, 0, RET_ERRNO | errno.EPERM), (RET_K, 0, 0, RET_ERRNO | errno.ENOSYS),
            (RET_K, 0, 0, RET_ERRNO | errno.EAFNOSUPPORT)]
    out = b""
    for i, (code, jt, jf, k) in enumerate(ins):
        jt = labels[jt] - i - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - i - 1 if isinstance(jf, str) else jf
        out += struct.pack("=HBBI", code, jt, jf, k)
    return out


def cgroup_v2_subtree() -> Path | None:
    """This process's cgroup v2 folder when it offers the memory and pids controllers and is writable
    (a delegated subtree), else None (cgroup v1, or a v2 tree without those controllers or rights)."""
    try:
        own = next(x[3:] for x in Path("/proc/self/cgroup").read_text().splitlines() if x.startswith("0::"))
    except (OSError, StopIteration):
        return None
    for mount in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        folder = Path(mount + own.rstrip("/"))
        try:
            controllers = set((folder / "cgroup.controllers").read_text().split())
        except OSError:
            continue
        if {"memory", "pids"} <= controllers and os.access(folder, os.W_OK):
            return folder
    return None


def user_threads(uid: int) -> int:
    """Processes/threads the kernel counts against `uid` for RLIMIT_NPROC (Linux /proc)."""
    count = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if fields.get("Uid", "").split()[:1] == [str(uid)]:
            count += int(fields.get("Threads", "1").strip() or 1)
    return count


def harness_procs() -> int:
    """What the harness's uid runs now (counted against RLIMIT_NPROC with its candidates when not root)."""
    return user_threads(os.getuid()) if Path("/proc").is_dir() else 0


@functools.cache
def nproc_per_userns() -> bool:
    """Whether the kernel counts RLIMIT_NPROC per user namespace (Linux >= 5.14, the ucounts rework):
    then a limit set inside a candidate's own namespace caps its processes alone."""
    try:
        major, minor = (int(x) for x in platform.release().split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 14)


CAP_SYS_RESOURCE = 24


def oom_floor_holds() -> bool:
    """Whether an OOM score this process sets is also a floor for the processes below it: the kernel records
    it as their oom_score_adj_min only when the writer has CAP_SYS_RESOURCE (root in a container may not)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return False
    eff = next((line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")), "0")
    return bool(int(eff, 16) >> CAP_SYS_RESOURCE & 1)


def sweep(marker: bytes) -> int:
    """SIGKILL every process whose environment carries this run's marker (process mode)."""
    killed = 0
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in env.read_bytes().split(b"\0"):
                os.kill(int(env.parent.name), signal.SIGKILL)
                killed += 1
        except (OSError, ValueError):
            continue
    return killed


def remove_tree(path: Path) -> None:
    """Remove a process-mode working folder, whatever the program did to its modes."""
    def fix(func: Any, p: str, _exc: Any) -> None:  # the program may have made files read-only
        try:
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix)


CGROUP_ROOT = Path("/sys/fs/cgroup")
_LEFT: list[Path] = []  # cgroups that were still busy when their candidate ended: removed at exit


@functools.cache
def cgroup_v1_parents() -> dict[str, Path] | None:
    """Where per-candidate cgroups can be made: this process's folders in writable cgroup v1 memory
    and pids hierarchies (a root harness in a container), else None."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:  # setpriv (util-linux) drops to the candidate's uid
        return None
    found: dict[str, Path] = {}
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in set(controllers.split(",")) & {"memory", "pids"}:
                found[c] = CGROUP_ROOT / c / path.lstrip("/")
        for folder in found.values():
            probe = folder / f"gsil-probe-{os.getpid()}"
            probe.mkdir()
            probe.rmdir()
    except (OSError, ValueError):
        return None
    return found if set(found) == {"memory", "pids"} else None


class CandidateCgroups:
    """One candidate's memory and pids cgroups (v1): everything it runs counts against one memory
    limit and one process limit. Made before it starts, emptied and removed after it ends."""

    def __init__(self, parents: dict[str, Path], memory_bytes: int, pids: int) -> None:
        name = f"gsil-{secrets.token_hex(6)}"
        self.memory, self.pids = parents["memory"] / name, parents["pids"] / name
        self.memory.mkdir()
        self.pids.mkdir()
        (self.memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
        try:  # with swap accounting, swap counts too (absent without it)
            (self.memory / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
        except OSError:
            pass
        (self.pids / "pids.max").write_text(str(pids))

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv` started inside both cgroups: a shell joins them as root, then execs `argv`, which drops to
        the candidate's uid (tasks.sandbox) before anything of the candidate's runs (no window in which it
        runs outside them)."""
        join = 'echo $$ > "$1" && echo $$ > "$2" && shift 2 && exec "$@"'
        return ["/bin/sh", "-c", join, "sh", str(self.memory / "cgroup.procs"), str(self.pids / "cgroup.procs"), *argv]

    def remove(self) -> None:
        """Kill what is left in the candidate's cgroups and remove them (retried briefly, then at exit)."""
        for folder in (self.pids, self.memory):
            _kill_members(folder)
            if not _rmdir(folder, 2.0):
                _LEFT.append(folder)


def candidate_cgroups(memory_bytes: int, pids: int) -> CandidateCgroups | None:
    """A memory and a pids cgroup for one candidate, where they can be made (else None: rlimits alone)."""
    parents = cgroup_v1_parents()
    if parents is None:
        return None
    try:
        return CandidateCgroups(parents, memory_bytes, pids)
    except OSError as err:
        log.warning("no cgroups for a candidate (%s): its limits are the rlimits alone", err)
        return None


def _kill_members(folder: Path) -> None:
    try:
        pids = [int(p) for p in (folder / "cgroup.procs").read_text().split()]
    except OSError:
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _rmdir(folder: Path, within: float) -> bool:
    deadline = time.monotonic() + within
    while True:
        try:
            folder.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:  # EBUSY while the killed processes are being reaped
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)


@atexit.register
def _remove_left() -> None:
    for folder in _LEFT:
        _kill_members(folder)
        _rmdir(folder, 1.0)
