"""SIGTERM at each start-up phase of a two-worker server: it stops, promptly and cleanly.

Each phase is reached deterministically: the server process stops itself (SIGSTOP) there
(pause_at.py), the test sends SIGTERM to the supervisor as systemd would, then lets it go on.
Before the fix, a stop that came while the supervisor was forking reached only the workers
forked so far (`first-fork`: the server never exited), and one that came while a worker's
event loop was starting made that worker exit 1 (`worker-start`, `worker-loop`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cache_server.auth import Scope, token_line

HERE = Path(__file__).resolve().parent
PHASES = ["storage-open", "first-fork", "all-forked", "worker-start", "worker-loop"]


def state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def tree(pid: int) -> list[int]:
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        children = []
    return [pid, *children]


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("phase", PHASES)
def test_sigterm_at_each_start_up_phase_stops_the_server(tmp_path, phase):
    tokens = tmp_path / "tokens"
    tokens.write_text(token_line("writer", Scope.READWRITE, "writer-token-9f2c"))
    err = open(tmp_path / "server.err", "wb")
    proc = subprocess.Popen([sys.executable, str(HERE / "pause_at.py"), phase, "--", "--bind", "127.0.0.1:0",
                             "--storage", str(tmp_path / "storage"), "--tokens", str(tokens), "--workers", "2",
                             "--access-log", "off"], stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for(lambda: [p for p in tree(proc.pid) if state(p) == "T"], 30, f"the server to pause at {phase}")
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)  # the supervisor, if it runs, passes the stop on to the paused worker meanwhile
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            for pid in tree(proc.pid):  # a worker that pauses later is let go too
                if state(pid) == "T":
                    os.kill(pid, signal.SIGCONT)
            time.sleep(0.02)
        assert proc.poll() is not None, f"still running 15 s after SIGTERM at {phase}: {tree(proc.pid)}"
    finally:
        if proc.poll() is None:
            for pid in tree(proc.pid):
                os.kill(pid, signal.SIGKILL)
            proc.wait()
        err.close()
    log = (tmp_path / "server.err").read_text()
    assert proc.returncode in (0, -signal.SIGTERM), log
    assert "Traceback" not in log and "failed" not in log, log
