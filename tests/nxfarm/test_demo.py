"""`nxfarm demo` end to end (real cache server, scheduler, agents and Nx): it builds on the agents,
the second build comes whole from the cache, and nothing it started outlives it, even on Ctrl-C."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import psutil
import pytest

from tests.nx_client.workspace import NX_CLIENT_DIR

from .farm_procs import NXFARM, clean_env

pytestmark = pytest.mark.skipif(not (NX_CLIENT_DIR / "node_modules").exists(), reason="nx client not installed")


def leftovers(state) -> list[str]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(str(state) in part for part in process.info["cmdline"] or []):
                found.append(" ".join(process.info["cmdline"]))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def listening(ports: set[int]) -> set[int]:
    return {c.laddr.port for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.laddr.port in ports}


def demo(state, **popen):
    return subprocess.Popen([NXFARM, "demo", "--state", str(state), "--node-modules",
                             str(NX_CLIENT_DIR / "node_modules")], env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def test_demo_builds_on_the_agents_then_from_the_cache_and_leaves_nothing(tmp_path):
    state = tmp_path / "state"
    process = demo(state)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    where = re.search(r"where build 1 ran its tasks: agent-1 (\d+), agent-2 (\d+)", output)
    assert where and int(where[1]) + int(where[2]) == 9, output
    assert "build 2 cache hit rate: 9/9 from the remote cache (100%)" in output
    assert "demo: next, your own workspace on a farm that stays up: make install, then nxfarm farm up" in output
    ports = {int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", output)}
    assert len(ports) >= 2
    assert leftovers(state) == [] and listening(ports) == set()
    assert not state.exists(), "the state directory is removed unless --keep"


def _sigint_default() -> None:
    # A job started with `&` by a non-interactive shell (a CI script, say) inherits SIGINT ignored,
    # and Python keeps an ignored SIGINT ignored: the demo would never see this test's Ctrl+C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_everything(tmp_path):
    state = tmp_path / "state"
    process = demo(state, preexec_fn=_sigint_default)
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if "build 1:" in line:
            time.sleep(3)  # agents are busy now
            process.send_signal(signal.SIGINT)
            break
    rest, _ = process.communicate(timeout=120)
    output = "".join(lines) + rest
    assert process.returncode == 130, output
    assert "demo: interrupted" in output and "demo: farm stopped" in output
    deadline = time.monotonic() + 10
    while leftovers(state) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers(state) == []
