"""A server a test starts (tests/helpers.managed_server: the llama.cpp server of the `llama_server` fixture,
vLLM's) is stopped whatever ends the test run: a pytest run is started on a test that holds a server, ended
mid-way (SIGTERM, Ctrl-C's SIGINT, SIGKILL), and afterwards no process it started is left running.

The processes are found from outside, in /proc (every descendant of the child pytest), not from what the
helper knows it started; the cheap server has a worker process of its own, as vLLM's server has engine
processes, so stopping only the process the test started would leave one."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

CONFTEST = f'''import importlib.util
import sys

sys.path.insert(0, {str(TESTS)!r})  # tests/helpers.py
spec = importlib.util.spec_from_file_location("gsil_tests_conftest", {str(TESTS / "conftest.py")!r})
shared = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shared)
llama_server = shared.llama_server  # the suite's own fixture, as the suite runs it
'''

HOLDS_LLAMA = '''import time
from pathlib import Path


def test_holds_the_llama_server(llama_server):
    Path("ready").write_text(llama_server)
    time.sleep(600)
'''

HOLDS_HTTP = '''import sys
import time
from pathlib import Path

from helpers import managed_server

WITH_A_WORKER = "import subprocess, sys; subprocess.run([sys.executable, '-m', 'http.server', *sys.argv[1:]])"


def test_holds_a_server(tmp_path):
    port = int(Path("port").read_text())
    argv = [sys.executable, "-c", WITH_A_WORKER, str(port), "--bind", "127.0.0.1"]
    with managed_server(argv, tmp_path / "server.log", ready=f"http://127.0.0.1:{port}/"):
        Path("ready").write_text("up")
        time.sleep(600)
'''


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every live descendant of `pid`, read from /proc."""
    parent: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parent[int(entry.name)] = (int(fields[1]), fields[19])
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [(c, start) for c, (pp, start) in parent.items() if pp == p]
        found += kids
        todo += [c for c, _ in kids]
    return found


def _alive(pid: int, started: str) -> bool:
    """The process `pid` that started at `started` still runs (not gone, not a zombie, not a reused pid)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == started and fields[0] != "Z"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_and_end(tmp_path: Path, test_text: str, how: signal.Signals, startup: float) -> tuple[list, int]:
    """Start pytest on `test_text` (in its own process group, as a terminal runs it), wait until its test
    holds the server, send `how`, wait for pytest to end; (the servers it had started, its exit status)."""
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_child.py").write_text(test_text)
    (tmp_path / "port").write_text(str(_free_port()))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-s", "test_child.py"],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    servers: list[tuple[int, str]] = []
    try:
        deadline = time.time() + startup
        while not (tmp_path / "ready").is_file():
            if child.poll() is not None or time.time() > deadline:
                out = child.stdout.read().decode() if child.poll() is not None else "(still running)"
                pytest.fail(f"the child test run never held its server:\n{out[-3000:]}")
            time.sleep(0.2)
        servers = _descendants(child.pid)
        assert len(servers) >= 2, f"the child test run holds no server (its processes: {servers})"
        if how == signal.SIGINT:
            os.killpg(child.pid, how)  # Ctrl-C: the terminal signals the foreground process group
        else:
            child.send_signal(how)
        child.wait(timeout=60)
        deadline = time.time() + 30  # SIGKILL: the kernel's parent-death signal, then the server's own shutdown
        while any(_alive(*s) for s in servers) and time.time() < deadline:
            time.sleep(0.2)
        return servers, child.returncode
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        for pid, started in servers:  # never leave one behind, even when the test fails
            if _alive(pid, started):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_the_llama_server_fixture_is_stopped_when_the_run_is_terminated(tmp_path):
    """SIGTERM (what CI, `timeout` and `kill` send) to a run holding the `llama_server` fixture: no
    llama.cpp server is left; the run still ends as terminated."""
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is a test dependency")
    servers, code = run_and_end(tmp_path, HOLDS_LLAMA, signal.SIGTERM, startup=240)
    left = [pid for pid, started in servers if _alive(pid, started)]
    assert not left, f"SIGTERM ended the test run but left its llama.cpp server running (pid {left})"
    assert code == -signal.SIGTERM


@pytest.mark.parametrize("how", [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGKILL, id="SIGKILL"),
                                 pytest.param(signal.SIGINT, id="SIGINT", marks=pytest.mark.slow)])
def test_a_managed_server_is_stopped_however_the_run_ends(tmp_path, how):
    """A server with a worker process: SIGTERM and kill -9 (no teardown runs: the test process's end closes
    the watchdog's pipe) and Ctrl-C (pytest's teardown stops it; slow: the fixture's ordinary exit)."""
    servers, code = run_and_end(tmp_path, HOLDS_HTTP, how, startup=60)
    left = [pid for pid, started in servers if _alive(pid, started)]
    assert not left, f"{how.name} ended the test run but left its server running (pid {left})"
    assert code != 0
