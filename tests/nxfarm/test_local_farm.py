"""`nxfarm farm up/down/env` and `nxfarm status` for real: a farm on 127.0.0.1 that outlives the
command that started it, a build of a workspace that is not the demo's (other projects, branch
`master`, no remote) with nothing configured but the farm being up, and a `down` that leaves
no process behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request

import psutil
import pytest

from tests.nx_client.workspace import NX_CLIENT_DIR

from .farm_procs import NXFARM, clean_env, final_pass_rows
from .own_workspace import PACKAGES, own_workspace

pytestmark = pytest.mark.skipif(not (NX_CLIENT_DIR / "node_modules").exists(), reason="nx client not installed")


def nxfarm(env: dict[str, str], *args: str, cwd=None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NXFARM, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def processes_naming(path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(str(path) in part for part in process.info["cmdline"] or []):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def status(env: dict[str, str]) -> tuple[int, dict]:
    result = nxfarm(env, "status", "--json")
    return result.returncode, json.loads(result.stdout)


def test_farm_up_builds_my_own_workspace_then_down_leaves_nothing(tmp_path):
    env = clean_env(tmp_path / "home", XDG_STATE_HOME=str(tmp_path / "state"))
    state = tmp_path / "state" / "nx-farm" / "local-farm"
    up = nxfarm(env, "farm", "up", "--agents", "2", "--slots", "2")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        record = json.loads((state / "farm.json").read_text())
        assert set(record["pids"]) == {"cache", "scheduler", "agent-1", "agent-2"}
        assert all(psutil.pid_exists(pid) for pid in record["pids"].values()), "it outlives `farm up`"
        again = nxfarm(env, "farm", "up")
        assert again.returncode == 0 and "already up" in again.stdout
        assert json.loads((state / "farm.json").read_text())["pids"] == record["pids"]

        code, seen = status(env)
        assert code == 0 and seen["ok"] and "the local farm" in seen["settings_from"]
        agents = {part["name"]: part for part in seen["parts"] if part["role"] == "agent"}
        assert {name: part["facts"]["slots"] for name, part in agents.items()} == {"agent-1": 2, "agent-2": 2}
        table = nxfarm(env, "status")
        assert table.returncode == 0 and table.stdout.splitlines()[1].split() == ["ROLE", "NAME", "ADDRESS", "STATE",
                                                                                 "DETAIL"]

        workspace = own_workspace(tmp_path / "my-monorepo")
        build = nxfarm(env, "build", "-t", "build", "--yes", cwd=workspace, timeout=600)
        assert build.returncode == 0, build.stdout[-4000:] + build.stderr
        assert "nxfarm: using the local farm" in build.stdout
        rows = final_pass_rows(build.stdout)
        assert set(rows) == {f"{name}:build" for name in PACKAGES}
        assert all(ran.startswith("agent-") and final == "remote cache" for ran, final in rows.values()), rows
        assert (workspace / "packages" / "web" / "build" / "out.txt").read_text().startswith("web built from")

        pages = re.search(r"runs: (http://127\.0\.0\.1:\d+/)", up.stdout)
        assert pages, up.stdout
        with urllib.request.urlopen(pages.group(1), timeout=10) as response:
            runs = response.read().decode()
        assert runs.count('class="run"') == 1 and "run-many -t build" in runs, "the build is on the run pages"

        hits = [part for part in status(env)[1]["parts"] if part["role"] == "cache"][0]["facts"]
        assert hits["hits"] >= len(PACKAGES), hits  # the final pass restored every task from this cache

        exported = nxfarm(env, "farm", "env")
        assert exported.returncode == 0
        assert re.search(r"^export NX_SELF_HOSTED_REMOTE_CACHE_SERVER=http://127\.0\.0\.1:\d+/ns/local$",
                         exported.stdout, re.M)

        os.killpg(record["pids"]["agent-2"], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while (result := status(env))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        code, seen = result
        down_parts = [part["name"] for part in seen["parts"] if not part["up"]]
        assert code == 1 and down_parts == ["agent-2"], seen
    finally:
        down = nxfarm(env, "farm", "down")
    assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr
    assert processes_naming(state) == []
    assert not (state / "farm.json").exists() and (state / "cache").is_dir(), "the cache is kept"
    code, seen = status(env)
    assert code == 1 and seen["settings_from"].startswith("none")
    gone = nxfarm(env, "farm", "env")
    assert gone.returncode == 2 and "nxfarm farm up" in gone.stderr


def test_farm_down_never_signals_a_pid_that_is_no_longer_the_farms(tmp_path):
    state = tmp_path / "farm"
    state.mkdir()
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)  # holds a PID the record names
    try:
        (state / "farm.json").write_text(json.dumps({"state": str(state), "cache_url": "http://127.0.0.1:9",
                                                     "scheduler": "tls://127.0.0.1:9",
                                                     "pids": {"cache": stranger.pid}}))
        down = nxfarm(clean_env(tmp_path / "home"), "farm", "down", "--state", str(state))
        assert down.returncode == 0 and "it was no longer running" in down.stdout
        assert stranger.poll() is None, "a process whose command line does not name the farm is not the farm's"
    finally:
        stranger.kill()
        stranger.wait()
