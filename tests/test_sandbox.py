"""The sandbox, attacked as an adversary would: OS isolation (bubblewrap) and its limits.

Every test runs real programs in real bubblewrap sandboxes (namespaces as `nobody`); the
harness side (this process) plays the victim: a loopback server, secret files and
environment variables, a canary process, the output folder. Forged verdicts are in
test_checker.py.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gsil_bench.harness.cli import main
from gsil_bench.tasks.sandbox import Limits, SandboxUnavailable, _probe, resolve_mode, run_program

RAW = Limits(timeout=5.0, memory_mb=512)


def _run(src: str, limits: Limits = RAW) -> tuple[str, str]:
    r = run_program(src, limits)
    return r.stdout, r.stderr


def test_a_program_runs_and_its_output_comes_back():
    r = run_program("print('hello'); import sys; print('err', file=sys.stderr)", RAW)
    assert r.status == "exited" and r.returncode == 0
    assert r.stdout == "hello\n" and r.stderr == "err\n"
    assert run_program("raise SystemExit(3)", RAW).status == "failed"


def test_unprivileged_uid_without_capabilities_and_no_new_privs():
    out, _ = _run("import os\nprint(os.getresuid(), os.getresgid())\n"
                  "print(''.join(l for l in open('/proc/self/status') if l.startswith(('Cap', 'NoNewPrivs'))))\n"
                  "try:\n    os.setuid(0)\nexcept OSError as e:\n    print('setuid', e.errno)")
    assert out.splitlines()[0] == "(65534, 65534, 65534) (65534, 65534, 65534)"
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert f"{cap}:\t0000000000000000" in out
    assert "NoNewPrivs:\t1" in out and out.splitlines()[-1] in ("setuid 1", "setuid 22")  # EPERM, or EINVAL: no uid 0 here


def test_no_network_even_to_a_loopback_listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    out, _ = _run(f"import socket\nfor host in ('127.0.0.1', 'localhost', '::1'):\n    try:\n"
                  f"        socket.create_connection((host, {port}), timeout=2)\n        print('CONNECTED')\n"
                  f"    except OSError as e:\n        print(type(e).__name__)")
    with pytest.raises(TimeoutError):
        server.accept()  # nobody came
    server.close()
    assert "CONNECTED" not in out and len(out.splitlines()) == 3


def test_files_outside_are_invisible_even_world_readable_ones(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    public = tmp_path / "public.txt"
    public.write_text("visible?")
    os.chmod(public, 0o644)
    os.chmod(secret, 0o600)
    paths = [secret, public, Path.cwd() / "pyproject.toml", Path(sys.executable), Path.home(), "/etc/shadow",
             "/etc/passwd", Path(__file__)]
    out, _ = _run("import os\n" + "".join(f"print(os.path.exists({str(p)!r}))\n" for p in paths)
                  + "print(sorted(os.listdir('/')))")
    lines = out.splitlines()
    assert lines[:-1] == ["False"] * len(paths)
    assert lines[-1] == "['bin', 'dev', 'lib', 'lib64', 'opt', 'proc', 'sbin', 'tmp', 'usr']"


def test_writes_outside_its_tmpfs_fail_and_nothing_is_left(tmp_path):
    before = sorted(os.listdir(tmp_path))
    targets = ("/usr/x", "/opt/gsil/wire.py", "/x", str(tmp_path / "x"), str(Path.cwd() / "x"))
    out, _ = _run(f"import os\nfor p in {targets!r}:\n    try:\n"
                  "        open(p, 'w').write('pwned')\n        print('WROTE', p)\n    except OSError as e:\n"
                  "        print(type(e).__name__)\nopen('/tmp/mine', 'w').write('ok')\nprint(os.getcwd())")
    assert "WROTE" not in out and out.splitlines()[-1] == "/tmp"
    assert sorted(os.listdir(tmp_path)) == before and not (Path.cwd() / "x").exists()
    assert run_program("import os; print(os.listdir('/tmp'))", RAW).stdout.strip() == "[]"  # fresh every time


def test_other_processes_and_their_environments_are_invisible(monkeypatch):
    token = "judge-key-" + secrets.token_hex(8)
    monkeypatch.setenv("OPENAI_API_KEY", token)
    canary = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env={**os.environ})
    try:
        out, _ = _run("import os\npids = [p for p in os.listdir('/proc') if p.isdigit()]\nprint(pids)\n"
                      "blob = b''\nfor p in pids:\n    try:\n        blob += open(f'/proc/{p}/environ', 'rb').read()\n"
                      "    except OSError:\n        pass\n"
                      f"print({token!r}.encode() in blob, sorted(os.environ), os.getppid())")
    finally:
        canary.kill()
        canary.wait()
    pids, last = out.splitlines()
    assert len(eval(pids)) <= 3  # bwrap's init, the program (and at most one child): nothing of ours
    env = "['HOME', 'LANG', 'OMP_NUM_THREADS', 'PATH', 'PWD', 'PYTHONHASHSEED', 'PYTHONPATH', 'TMPDIR']"
    assert last == f"False {env} 1"  # its parent is the namespace's init, not the harness


def _gone(token: str, within: float = 10.0) -> bool:
    """No process carrying `token` in its command line is left (the kernel kills a PID
    namespace's processes when its init dies; under load the teardown takes a moment)."""
    deadline = time.monotonic() + within
    while _alive_with(token):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _alive_with(token: str) -> list[int]:
    found = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if token.encode() in cmd.read_bytes() and "State:\tZ" not in (cmd.parent / "status").read_text():
                found.append(int(cmd.parent.name))
        except OSError:
            continue
    return found


def test_a_detached_child_with_a_clean_environment_does_not_survive():
    token = "gsil-survivor-" + secrets.token_hex(6)
    src = ("import os, sys\nif os.fork() == 0:\n    os.setsid()\n    os.environ.clear()\n"
           f"    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {token!r}])\n"
           "import time\ntime.sleep(0.5)\nprint('parent done')")
    r = run_program(src, RAW)
    assert r.stdout == "parent done\n"
    assert _gone(token)


def test_signals_cannot_reach_the_harness_or_its_processes():
    canary = subprocess.Popen(["sleep", "30"], user=65534 if os.geteuid() == 0 else None)
    try:
        r = run_program("import os, signal\nfor pid in range(1, 4096):\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
                        "    except OSError:\n        pass\nos.kill(-1, signal.SIGKILL)", RAW)
        assert r.status in ("crashed", "failed", "exited")
        time.sleep(0.2)
        assert canary.poll() is None  # same uid as the sandbox, still alive
    finally:
        canary.send_signal(signal.SIGKILL)
        canary.wait()


def test_infinite_loop_is_killed_at_the_time_limit():
    start = time.monotonic()
    r = run_program("while True:\n    pass", Limits(timeout=1.0))
    assert r.status == "timeout"
    assert time.monotonic() - start < 4.0


def test_huge_memory_fails_cleanly():
    r = run_program("x = bytearray(8 * 1024**3)", RAW)
    assert r.status == "failed" and "MemoryError" in r.stderr


def test_megabytes_of_output_are_capped():
    limits = Limits(timeout=5.0, file_mb=8, output_bytes=4096)
    r = run_program("import sys\nfor _ in range(100000):\n    sys.stdout.write('x' * 1000)", limits)
    assert r.status != "exited"  # the 8 MiB file limit stops it
    assert len(r.stdout) < 4096 + 100 and "bytes cut" in r.stdout


def test_fork_bomb_is_contained():
    token = "gsil-bomb-" + secrets.token_hex(6)
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    src = f"import os, sys\nos.execv(sys.executable, [sys.executable, '-c', {bomb!r}, {token!r}])"
    start = time.monotonic()
    r = run_program(src, Limits(timeout=2.0, memory_mb=512, max_procs=32))
    assert r.status != "exited" and time.monotonic() - start < 15
    assert _gone(token)


def test_parallel_programs_do_not_see_each_other():
    results: dict[int, str] = {}

    def go(i: int) -> None:
        results[i] = run_program(f"import os, time\nopen('/tmp/me', 'w').write('{i}')\ntime.sleep(0.5)\n"
                                 "print(open('/tmp/me').read(), len([p for p in os.listdir('/proc') if p.isdigit()]))",
                                 RAW).stdout.strip()

    threads = [threading.Thread(target=go, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {i: r.split()[0] for i, r in results.items()} == {0: "0", 1: "1", 2: "2"}


def test_killing_its_own_group_cannot_reach_the_harness():
    sibling = subprocess.Popen(["sleep", "60"])  # a process in the harness's own group
    assert os.getpgid(sibling.pid) == os.getpgid(0)
    r = run_program("import os, signal\nos.killpg(0, signal.SIGKILL)", RAW)
    assert r.status == "crashed" and r.returncode == -9
    alive = sibling.poll() is None  # a killpg reaching the harness's group would have killed it
    sibling.kill()
    sibling.wait()
    assert alive


def test_refuses_in_one_line_without_isolation_and_names_the_opt_in(monkeypatch, tmp_path, data_dir, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on the PATH
    _probe.cache_clear()
    comp = tmp_path / "c.jsonl"
    comp.write_text('{"task_id": "HumanEval/0", "completion": "    return True\\n"}\n')
    try:
        with pytest.raises(SandboxUnavailable) as err:
            resolve_mode("bwrap")
        code = main(["eval", "--tasks", "humaneval", "--completions", str(comp), "--limit", "1",
                     "--output", str(tmp_path / "o"), "--data-dir", str(data_dir)])
    finally:
        _probe.cache_clear()
    msg = str(err.value)
    assert "\n" not in msg and "bubblewrap" in msg and " shared.eval.code_sandbox=process" in msg
    cli = capsys.readouterr().err
    assert code == 2 and "cannot isolate model-written code" in cli and "Traceback" not in cli
    assert not (tmp_path / "o" / "humaneval").exists()  # refused before any work
    with pytest.raises(SandboxUnavailable, match="unknown code sandbox 'docker'"):
        resolve_mode("docker")


def test_the_weaker_process_mode_is_explicit_and_still_limited():
    assert resolve_mode("process") == "process"
    r = run_program("import os\nprint(os.getuid() if os.geteuid() else 'root?')", RAW, mode="process")
    uid = int(r.stdout.strip()) if r.status == "exited" else None
    assert uid == os.getuid() if os.geteuid() else uid >= 1 << 30  # root: a fresh uid per candidate
    assert run_program("while True:\n    pass", Limits(timeout=1.0), mode="process").status == "timeout"


def test_the_server_files_are_staged_world_readable_for_private_installs():
    """tox keeps .tox/ at 0700, which the sandbox uid cannot search: the two untrusted-side files
    are then bound from a world-readable copy."""
    from gsil_bench.tasks import sandbox

    folder = sandbox._staged_server()
    assert sandbox._readable_by_nobody(folder) and (os.stat(folder).st_mode & 0o777) == 0o555
    for name in ("sandbox_server.py", "wire.py"):
        assert (folder / name).read_bytes() == (sandbox.HERE / name).read_bytes()
        assert os.stat(folder / name).st_mode & 0o004
