"""Run untrusted, model-written Python, isolated by the operating system.

Mode `bwrap` (the default): every program runs under bubblewrap in fresh Linux namespaces:
- user: an unprivileged uid (a fresh one per candidate when the harness runs as root),
  no capabilities, no_new_privs (bubblewrap sets it);
- pid: a private PID namespace with its own /proc; when the program's first process
  ends (or is killed, or the harness dies: --die-with-parent) every descendant dies, and
  no process outside (the harness, the judge, other programs) is visible or signalable;
- net: no network at all, not even the host's loopback;
- mount: a read-only view of /usr (the system interpreter and its stdlib) and numpy, a
  fresh size-capped tmpfs at /tmp as the only writable place, nothing else (no harness
  files, home, /etc, run folders); ipc, uts and cgroup namespaces are private too;
- environment: cleared (PATH, LANG, HOME=/tmp only); stdin is the checker's channel; stdout
  and stderr are pipes the trusted side reads with a cap (tasks.capture), never host files;
- /dev and /proc read-only (no tmpfs space in /dev or /dev/shm; no write to its own
  oom_score_adj), no nested user namespaces (--disable-userns), and a seccomp filter
  (tasks.confine) denying memfd, System V IPC, message queues, mounts, namespaces and every
  socket but a unix one.
Resource limits apply through `prlimit`: address space, CPU time, file size, open files,
processes (RLIMIT_NPROC: for the uid outside, and again inside the sandbox, where Linux >= 5.14
counts it per user namespace, so a candidate's processes are capped by themselves even when all
share the harness's uid), no core dumps, no message queues; the wall-clock limit is the
checker's. A root harness runs every candidate under a fresh uid of its own. `choom` gives every
sandboxed process OOM score adjustment 1000 (the kernel's OOM killer takes a candidate before the
harness), set before the drop of privileges; /proc is read-only, so the candidate cannot lower it.
Where a root harness can write the cgroup v1 memory and pids hierarchies, every candidate also
gets a memory cgroup (address space + /tmp, for all its processes together) and a pids cgroup of
its own (tasks.confine); `limits_in_force` says in the log which of these are in force.

Mode `process` is weaker and must be chosen explicitly (`shared.eval.code_sandbox=process`):
the same limits, a fresh working folder, a fresh uid when root, a new session and a
sweep of leftover processes, but the program shares the network, file system and PID
view of the host. `resolve_mode` refuses `bwrap` in one line when it cannot work.

Verdicts never come from here: `tasks.checker` runs the benchmark's tests in a trusted
process and calls into the sandboxed program through a pipe (plain data only, see
`tasks.wire`). `run_program` runs a whole program and reports how it ended (tests use it
to attack the sandbox); `check_many` hands scoring jobs to a pool of checker processes.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import logging
import os
import pickle
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gsil_bench.core.progress import track
from gsil_bench.tasks import confine, wire
from gsil_bench.tasks.capture import Capture, read_until_exit

log = logging.getLogger(__name__)

MODES = ("bwrap", "process")
MARKER = "GSIL_SANDBOX_RUN"
NOBODY = 65534
OWN_PROCS = 4  # what the sandbox itself runs under the candidate's uid: bwrap, its init, slack
WORKER_PROCS = 4  # per worker, outside any sandbox: its checker, the harness's thread for it, slack
UIDS = (1 << 30, 1 << 31)  # per-candidate uids (when root), drawn at random: one candidate per uid
OOM_SCORE_ADJ = 1000  # the kernel's OOM killer takes a sandboxed process before anything of the harness
HERE = Path(__file__).resolve().parent
SITE = "/opt/site"  # numpy inside the sandbox
GSIL = "/opt/gsil"  # sandbox_server.py and wire.py inside the sandbox


class SandboxUnavailable(RuntimeError):
    """The requested isolation cannot be set up here; the message says why and what to do."""


@dataclass(frozen=True)
class Limits:
    timeout: float = 10.0  # wall-clock seconds
    memory_mb: int = 2048  # RLIMIT_AS
    file_mb: int = 64  # RLIMIT_FSIZE (any file written, output included) and the /tmp size
    max_procs: int = 16  # processes/threads one program may run (RLIMIT_NPROC; its own uid when root)
    open_files: int = 256  # RLIMIT_NOFILE
    output_bytes: int = 32 * 1024  # program output kept (head and tail)


@dataclass
class RunResult:
    status: str  # exited (code 0) | failed (other code) | timeout | crashed (killed by a signal)
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float


def server_argv(mode: str) -> list[str]:
    """The command that starts `sandbox_server` inside the sandbox."""
    folder = GSIL if mode == "bwrap" else str(_server_folder())
    return [python(), "-s", "-B", f"{folder}/sandbox_server.py"]


def _server_folder() -> Path:
    """Where the untrusted-side files are read from: this package, or a staged world-readable copy
    when the sandbox uid (nobody, when the harness is root) cannot search this package's folders."""
    return HERE if not _as_nobody() or _readable_by_nobody(HERE) else _staged_server()


def python() -> str:
    """The interpreter run inside the sandbox: $GSIL_SANDBOX_PYTHON, else the system's."""
    return os.environ.get("GSIL_SANDBOX_PYTHON") or shutil.which("python3", path="/usr/bin:/bin") or sys.executable


def _as_nobody() -> bool:
    return os.geteuid() == 0


def _numpy_dirs() -> list[Path]:
    try:
        import numpy
    except ImportError:
        return []
    pkg = Path(numpy.__file__).parent
    return [d for d in (pkg, pkg.with_name("numpy.libs")) if d.is_dir()]


def _readable_by_nobody(path: Path) -> bool:
    """Every ancestor searchable by others (bwrap resolves bind sources as the sandbox uid)."""
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents])


@functools.lru_cache(maxsize=1)
def _staged_server() -> Path:
    """A world-readable copy of the two untrusted-side files, for installs whose folders the sandbox
    uid cannot search (tox keeps .tox/ private, 0700): a fresh mkdtemp folder, removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="gsil-sandbox-"))
    for name in ("sandbox_server.py", "wire.py"):
        shutil.copyfile(HERE / name, folder / name)
        os.chmod(folder / name, 0o444)
    os.chmod(folder, 0o555)
    atexit.register(_remove_staged, folder)
    return folder


def _remove_staged(folder: Path) -> None:
    os.chmod(folder, 0o700)
    shutil.rmtree(folder, ignore_errors=True)


def _bwrap_argv(limits: Limits, seccomp_fd: int | None) -> list[str]:
    argv = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--clearenv",
            "--ro-bind", "/usr", "/usr"]
    for top in ("bin", "sbin", "lib", "lib64", "lib32"):
        p = Path("/") / top
        if p.is_symlink():
            argv += ["--symlink", os.readlink(p), str(p)]
        elif p.is_dir():
            argv += ["--ro-bind", str(p), str(p)]
    exe = Path(python()).resolve()
    if not str(exe).startswith("/usr/"):
        argv += ["--ro-bind", str(exe.parents[1]), str(exe.parents[1])]
    for d in _numpy_dirs():
        if not _as_nobody() or _readable_by_nobody(d):
            argv += ["--ro-bind", str(d), f"{SITE}/{d.name}"]
    for name in ("sandbox_server.py", "wire.py"):
        argv += ["--ro-bind", str(_server_folder() / name), f"{GSIL}/{name}"]
    # /dev read-only: its device nodes still work, but neither /dev nor /dev/shm is tmpfs space to fill
    # /proc read-only: the program cannot lower its own OOM score (/proc/self/oom_score_adj)
    argv += ["--proc", "/proc", "--remount-ro", "/proc", "--dev", "/dev", "--remount-ro", "/dev",
             "--size", str(limits.file_mb << 20),
             "--tmpfs", "/tmp", "--remount-ro", "/", "--chdir", "/tmp", "--uid", str(NOBODY), "--gid", str(NOBODY),
             "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8", "--setenv", "HOME", "/tmp",
             "--setenv", "TMPDIR", "/tmp", "--setenv", "OMP_NUM_THREADS", "1", "--setenv", "PYTHONHASHSEED", "0",
             "--setenv", "PYTHONPATH", SITE]
    if _bwrap_disables_userns():
        argv += ["--unshare-user", "--disable-userns"]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    return argv + ["--"]


@functools.cache
def _bwrap_disables_userns() -> bool:
    """bubblewrap >= 0.8 can forbid nested user namespaces (the seccomp filter forbids them too)."""
    try:
        return "--disable-userns" in subprocess.run(["bwrap", "--help"], capture_output=True, text=True).stdout
    except OSError:
        return False


def _seccomp_fd() -> int | None:
    """A pipe holding the seccomp filter (tasks.confine), read by bwrap; None where the ABI is unknown."""
    if not confine.supported():
        return None
    r, w = os.pipe()
    os.write(w, _SECCOMP())
    os.close(w)
    return r


_SECCOMP = functools.cache(confine.program)


def _prlimit_argv(limits: Limits, nproc: int) -> list[str]:
    return ["prlimit", f"--as={limits.memory_mb << 20}", f"--cpu={int(limits.timeout) + 2}",
            f"--fsize={limits.file_mb << 20}", f"--nofile={limits.open_files}", "--core=0", "--msgqueue=0",
            f"--nproc={nproc}", "--"]


def _privileges_argv(uid: int | None) -> list[str]:
    """OOM score adjustment 1000, then (root) the drop to the candidate's uid. Set by root, the score is also
    the floor the process may lower it to (the kernel's oom_score_adj_min), so the candidate keeps it."""
    choom = ["choom", "-n", str(OOM_SCORE_ADJ), "--"]
    return choom if uid is None else choom + ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]


def candidate_uid() -> int | None:
    """A fresh uid for one candidate when the harness is root (RLIMIT_NPROC is counted per uid, so
    one candidate's processes never count against another's); None otherwise."""
    return UIDS[0] + secrets.randbelow(UIDS[1] - UIDS[0]) if _as_nobody() else None


def candidate_procs(limits: Limits) -> int:
    """Processes and threads one candidate may run, its sandbox's own included: RLIMIT_NPROC inside its
    user namespace (bwrap; the kernel counts it per namespace), and for its own uid when the harness is root."""
    return limits.max_procs + OWN_PROCS


def nproc_limit(limits: Limits, workers: int = 1, base: int | None = None) -> int:
    """RLIMIT_NPROC outside the sandbox, for the uid the program runs as. Root: its own uid, so the cap fits
    one program. Otherwise the harness's uid, shared: what it already runs (`base`, counted now if not
    given) plus, per worker, one candidate and the worker itself."""
    if _as_nobody():
        return candidate_procs(limits)
    base = confine.harness_procs() if base is None else base
    return base + (candidate_procs(limits) + WORKER_PROCS) * max(1, workers)


class Spawned:
    """One sandboxed process: `argv` run under the mode's isolation and limits, as its own uid (root)."""

    def __init__(self, mode: str, limits: Limits, argv: list[str], *, stdin: Any, stdout: Any, stderr: Any,
                 nproc: int | None = None) -> None:
        self.mode, self.marker = mode, f"{MARKER}={secrets.token_hex(8)}"
        self.workdir: Path | None = None
        self.uid = candidate_uid()
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        cmd = _privileges_argv(self.uid) + _prlimit_argv(limits, nproc_limit(limits) if self.uid is not None
                                                         else nproc or nproc_limit(limits))
        fds: tuple[int, ...] = ()
        if mode == "bwrap":
            sfd = _seccomp_fd()
            fds = () if sfd is None else (sfd,)
            # RLIMIT_NPROC again inside: counted in the candidate's own user namespace, so its processes are
            # capped by themselves even where every candidate runs as the harness's uid
            inner = ["prlimit", f"--nproc={candidate_procs(limits)}", "--"] if confine.nproc_per_userns() else []
            cmd += _bwrap_argv(limits, sfd) + inner + argv
            cwd = "/"
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="gsil-sandbox-"))
            if self.uid is not None:
                os.chown(self.workdir, self.uid, self.uid)
            cwd = str(self.workdir)
            env.update(HOME=cwd, TMPDIR=cwd, OMP_NUM_THREADS="1", PYTHONHASHSEED="0",
                       PYTHONPATH=":".join(str(d.parent) for d in _numpy_dirs()[:1]),
                       **{MARKER: self.marker.split("=", 1)[1]})
            cmd += argv
        self.cgroups = confine.candidate_cgroups((limits.memory_mb + limits.file_mb) << 20, nproc_limit(limits)) \
            if self.uid is not None else None
        if self.cgroups is not None:
            cmd = self.cgroups.wrap(cmd)
        self.start = time.monotonic()
        try:
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=stderr,
                                         start_new_session=True, close_fds=True, pass_fds=fds)
        except BaseException:
            if self.cgroups is not None:
                self.cgroups.remove()
            raise
        finally:
            for fd in fds:
                os.close(fd)

    def kill(self) -> int | None:
        """Kill the program and everything it started; return its exit status if it had
        ended by itself (negative: killed by a signal), None if it was still running."""
        rc = self.proc.poll()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        if self.cgroups is not None:
            self.cgroups.remove()
        if rc is not None and self.mode == "bwrap" and rc > 128:  # bwrap reports a signal as 128 + n
            rc = 128 - rc
        if self.mode == "process":
            confine.sweep(self.marker.encode())
            if self.workdir is not None:
                confine.remove_tree(self.workdir)
        return rc


@functools.cache
def _probe() -> str:
    """'' when a bwrap sandbox starts and runs Python here, else why not."""
    if shutil.which("bwrap") is None:
        return "bwrap is not installed (Debian/Ubuntu package: bubblewrap)"
    for tool in ("prlimit", "choom") + (("setpriv",) if _as_nobody() else ()):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (package util-linux)"
    r = run_program("print(6 * 7)", Limits(timeout=30), mode="bwrap")
    if r.status != "exited" or r.stdout.strip() != "42":
        why = (r.stderr.strip().splitlines() or [r.status])[-1]
        return f"a test sandbox did not start ({why}); user namespaces may be disabled"
    return ""


def limits_in_force(mode: str, limits: Limits = Limits(), workers: int = 1, base: int | None = None) -> str:
    """One line for the log: what really bounds one candidate here, and what `workers` candidates share
    (`base`: what the harness's uid runs besides them, see `nproc_limit`)."""
    root = _as_nobody()
    uid = "its own uid" if root else f"the harness's uid {os.getuid()} (shared by all candidates)"
    parts = [f"code sandbox {mode}: each candidate runs as {uid}", f"address space {limits.memory_mb} MiB per process",
             _procs_in_force(mode, limits, workers, base), f"files {limits.file_mb} MiB",
             f"output through a pipe, closed after {limits.file_mb} MiB", _oom_in_force(mode)]
    if mode == "bwrap":
        parts += [f"/tmp {limits.file_mb} MiB", "/dev and /proc read-only",
                  "no nested user namespaces" + (" (bwrap --disable-userns and seccomp)" if _bwrap_disables_userns()
                                                 else " (seccomp)"),
                  "seccomp: memfd, System V shm, semaphores and message queues, POSIX message queues, mounts, "
                  "namespaces, sockets other than unix denied" if confine.supported()
                  else f"no seccomp filter (unknown machine {platform.machine()})"]
    if confine.cgroup_v1_parents() is not None and root:
        return "; ".join(parts + [f"cgroup v1 per candidate: memory {limits.memory_mb + limits.file_mb} MiB for all "
                                  f"its processes and /tmp together, {candidate_procs(limits)} processes and threads"])
    cg = confine.cgroup_v2_subtree()
    worst = candidate_procs(limits) * limits.memory_mb
    parts.append((f"cgroup v2 subtree {cg} found but not used" if cg else "no delegated cgroup v2 subtree")
                 + f": memory per candidate is bounded by processes x address space ({worst} MiB), not by a cgroup")
    return "; ".join(parts)


def _procs_in_force(mode: str, limits: Limits, workers: int, base: int | None) -> str:
    per = candidate_procs(limits)
    if _as_nobody():
        return f"{per} processes and threads per candidate (RLIMIT_NPROC of its own uid)"
    base = confine.harness_procs() if base is None else base
    shared = (f"{nproc_limit(limits, workers, base)} for the harness's uid in all ({per + WORKER_PROCS} per worker x "
              f"{workers} workers, and {base} it ran already)")
    if mode == "bwrap" and confine.nproc_per_userns():
        return f"{per} processes and threads per candidate (RLIMIT_NPROC in its own user namespace); {shared}"
    return f"no process cap per candidate: {shared}, which one candidate can take"


def _oom_in_force(mode: str) -> str:
    if mode == "bwrap":
        return f"OOM score adjustment {OOM_SCORE_ADJ} (/proc read-only: it cannot lower it)"
    if _as_nobody() and confine.oom_floor_holds():
        return f"OOM score adjustment {OOM_SCORE_ADJ}, also its floor (set before the drop to its uid)"
    return f"OOM score adjustment {OOM_SCORE_ADJ}, which it can lower back to the harness's"


def resolve_mode(requested: str) -> str:
    """Check that `requested` isolation works here; raise SandboxUnavailable saying why if not."""
    if requested not in MODES:
        raise SandboxUnavailable(f"unknown code sandbox {requested!r}; expected one of {', '.join(MODES)}")
    if requested == "bwrap":
        why = _probe()
        if why:
            raise SandboxUnavailable(
                f"cannot isolate model-written code: {why}. Install bubblewrap and allow user namespaces, "
                "or accept the weaker sandbox without OS isolation explicitly with shared.eval.code_sandbox=process")
    else:
        log.warning("code sandbox 'process': model-written code is NOT isolated by the OS (shared network, "
                    "files and process view); use it only for trusted completions")
    return requested


@functools.cache
def _log_limits(mode: str, limits: Limits, workers: int, base: int | None) -> None:
    log.info(limits_in_force(mode, limits, workers, base))


def run_program(source: str, limits: Limits = Limits(), *, mode: str = "bwrap") -> RunResult:
    """Run `source` as a whole program in the sandbox and report how it ended (no verdict)."""
    out, err = (Capture(limits.output_bytes, limits.file_mb << 20) for _ in range(2))
    try:
        sb = Spawned(mode, limits, [python(), "-s", "-B", "-"], stdin=subprocess.PIPE, stdout=out.wfd, stderr=err.wfd)
    except BaseException:
        out.close()
        err.close()
        raise
    out.started()
    err.started()
    assert sb.proc.stdin is not None
    try:
        sb.proc.stdin.write(source.encode())
        sb.proc.stdin.close()
    except BrokenPipeError:
        pass
    timed_out = not read_until_exit(sb.proc.pid, (out, err), sb.start + limits.timeout)
    rc = sb.kill()
    seconds = time.monotonic() - sb.start
    status = "timeout" if timed_out or rc is None else "exited" if rc == 0 else "crashed" if rc < 0 else "failed"
    return RunResult(status, rc, out.finish(), err.finish(), seconds)


@functools.lru_cache(maxsize=1)
def checker_boot() -> str:
    """Source that starts `tasks.checker` from the very file this process would import. The checker
    runs isolated (-I: no PYTHONPATH, no working directory): from a wheel (site-packages, a --target
    folder) the folder holding `gsil_bench/` goes first on its path; an editable install needs
    nothing (setuptools' finder, loaded from site-packages, maps the checkout's folders). A checker
    that imported another copy refuses to start."""
    spec = importlib.util.find_spec("gsil_bench.tasks.checker")
    assert spec is not None and spec.origin is not None
    origin = Path(spec.origin).resolve()
    roots = [str(origin.parents[2])] if origin.parents[1].name == "gsil_bench" else []
    return (f"import os, sys; sys.path[:0] = {roots!r}; import gsil_bench.tasks.checker as c; "
            f"assert os.path.realpath(c.__file__) == {str(origin)!r}, 'the checker imported ' + c.__file__; c.main()")


class CheckerPool:
    """Long-lived trusted checker processes (tasks.checker), one per worker; each job gets a
    fresh sandbox inside its checker. A checker that dies or hangs is replaced. `base`: what the harness's
    uid runs besides the candidates (not root: see `nproc_limit`), counted now when not given."""

    def __init__(self, mode: str, workers: int, base: int | None = None) -> None:
        self.mode, self.workers = mode, workers
        self.base = confine.harness_procs() if base is None and not _as_nobody() else (base or 0)
        self._idle: list[subprocess.Popen] = []
        self._all: list[subprocess.Popen] = []
        self._lock = threading.Lock()

    def _start(self) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-I", "-B", "-c", checker_boot(), self.mode, str(self.workers),
                                 str(self.base)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        with self._lock:
            self._all.append(proc)
        return proc

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            proc = self._idle.pop() if self._idle else None
        proc = proc or self._start()
        assert proc.stdin is not None and proc.stdout is not None
        parts = [job[p][2] for p in ("base", "plus") if job.get(p)] or [job["limits"].timeout]
        budget = sum(parts) + 60
        timer = threading.Timer(budget, proc.kill)
        timer.start()
        try:
            data = pickle.dumps(job)
            proc.stdin.write(len(data).to_bytes(8, "big") + data)
            proc.stdin.flush()
            n = int.from_bytes(_read(proc.stdout, 8), "big")
            verdict = pickle.loads(_read(proc.stdout, n))
        except (OSError, EOFError, pickle.UnpicklingError) as err:
            proc.kill()
            proc.wait()
            return {"status": "crashed", "seconds": budget, "detail": f"the checker process died ({err})",
                    "output": "", "returncode": None}
        finally:
            timer.cancel()
        with self._lock:
            self._idle.append(proc)
        return verdict

    def close(self) -> None:
        for proc in self._all:
            if proc.poll() is None:
                try:
                    assert proc.stdin is not None
                    proc.stdin.close()
                    proc.wait(timeout=5)
                except (OSError, subprocess.TimeoutExpired):
                    proc.kill()
                    proc.wait()


def _read(fh: Any, n: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise EOFError("the checker closed its channel")
    return data


def check_many(jobs: Sequence[dict[str, Any]], *, mode: str, workers: int | None = None,
               desc: str = "execute") -> list[dict[str, Any]]:
    """Score jobs (see tasks.checker) on a pool of `workers` checkers, keeping order."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    base = None if _as_nobody() else confine.harness_procs()
    for limits in {replace(job["limits"], timeout=0.0) for job in jobs}:
        _log_limits(mode, limits, workers, base)  # once per process and set of limits (time limits vary by problem)
    pool = CheckerPool(mode, workers, base)
    try:
        with ThreadPoolExecutor(max_workers=workers) as ex:
            futures = [ex.submit(pool.run, job) for job in jobs]
            return [f.result() for f in track(futures, desc=desc)]
    finally:
        pool.close()


__all__ = ["Limits", "RunResult", "SandboxUnavailable", "check_many", "resolve_mode", "run_program", "wire"]
