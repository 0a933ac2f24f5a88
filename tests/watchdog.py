"""Run a server until the test process that started it goes away (tests/helpers.start_server).

    python tests/watchdog.py GRACE -- SERVER ARGV...

This process leads the process group the server runs in (the test process starts it in a session of
its own) and reads its stdin, a pipe from the test process. At the end of the pipe (the test process
closed it, or ended, however: the kernel closes its files) it sends SIGTERM to its process group, the
server and every process the server started, waits up to GRACE seconds for the server to exit, then
sends SIGKILL to the group, itself included. When the server exits by itself, the rest of the group
gets SIGTERM and this process exits with the server's status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading


def main() -> None:
    grace, sep, argv = float(sys.argv[1]), sys.argv[2], sys.argv[3:]
    if sep != "--" or not argv:
        raise SystemExit("usage: watchdog.py GRACE -- SERVER ARGV...")
    server = subprocess.Popen(argv, stdin=subprocess.DEVNULL)  # in this process group
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group's SIGTERM below is for the server (started already)
    group = os.getpgid(0)

    stopping = threading.Event()

    def watch() -> None:
        while os.read(0, 4096):  # returns b"" at the end of the pipe
            pass
        stopping.set()
        os.killpg(group, signal.SIGTERM)
        try:
            server.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        os.killpg(group, signal.SIGKILL)  # what is left of the group, this process last

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    code = server.wait()
    if stopping.is_set():  # the watcher ends the group, this process included
        watcher.join()
    os.killpg(group, signal.SIGTERM)  # a server that exited by itself: what it started goes too (not this process)
    os._exit(code if code >= 0 else 128 - code)

if __name__ == "__main__":
    main()
