"""Ctrl-C during `nxfarm build` stops everything it started, Nx's detached plugin workers too."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import pytest

from tests.nx_client.workspace import NX_CLIENT_DIR

from .farm_procs import NXFARM, clean_env
from .own_workspace import own_workspace
from .test_local_farm import processes_naming

pytestmark = pytest.mark.skipif(not (NX_CLIENT_DIR / "node_modules").exists(), reason="nx client not installed")


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a CI job started with `&` inherits SIGINT ignored


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    found = []
    for p in processes:
        try:
            p.cmdline()
            found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def _plugin_workers(workspace) -> list[psutil.Process]:
    return [p for p in _alive(processes_naming(workspace)) if "plugin-worker" in " ".join(p.cmdline())]


def test_ctrl_c_leaves_no_nx_process_behind(tmp_path):
    workspace = own_workspace(tmp_path / "ws")
    env = clean_env(tmp_path / "home", XDG_STATE_HOME=str(tmp_path / "state"))
    process = subprocess.Popen([NXFARM, "build", "-t", "build", "--yes"], cwd=workspace, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               preexec_fn=_sigint_default)
    deadline = time.monotonic() + 60
    while not (workers := _plugin_workers(workspace)):  # Nx runs them while it computes the project graph
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
        time.sleep(0.01)
    running = [*workers, *_alive(psutil.Process(process.pid).children(recursive=True))]
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: its whole foreground group
    rest, _ = process.communicate(timeout=30)
    assert process.returncode == 130, rest
    assert "nxfarm: interrupted" in rest
    _, alive = psutil.wait_procs([p for p in running if p.is_running()], timeout=2)
    assert alive == [], [" ".join(p.cmdline()) for p in _alive(alive)]
