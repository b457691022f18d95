"""`nxfarm health` pieces that need no systemd: status parsing, backoff, the log, the table."""

from __future__ import annotations

import json

import pytest

from nxfarm.health import checks, heal
from nxfarm.health.command import render

# Shapes of `tailscale status --json` (ipnstate.Status in tailscale's ipn/ipnstate): running,
# logged out, and running with this node offline.
RUNNING = {"Version": "1.80.2", "BackendState": "Running", "TailscaleIPs": ["100.101.0.11"],
           "Self": {"ID": "n1", "HostName": "agent-desk", "DNSName": "agent-desk.tail1234.ts.net.",
                    "OS": "linux", "TailscaleIPs": ["100.101.0.11", "fd7a:115c:a1e0::b"], "Online": True},
           "Peer": {}, "Health": []}


def test_tailscale_status_shapes():
    assert checks.parse_tailscale_status(json.dumps(RUNNING)) == checks.Check(
        "tailnet", True, "agent-desk online (100.101.0.11, fd7a:115c:a1e0::b)")
    stopped = checks.parse_tailscale_status(json.dumps({**RUNNING, "BackendState": "NeedsLogin", "Self": None}))
    assert stopped.ok is False and stopped.detail == "tailscale is NeedsLogin" and stopped.fix == "sudo tailscale up"
    offline = checks.parse_tailscale_status(json.dumps({**RUNNING, "Self": {**RUNNING["Self"], "Online": False}}))
    assert offline.ok is False and "offline" in offline.detail
    assert checks.parse_tailscale_status("not json").ok is False


def test_cache_health_answers():
    ok = checks.parse_cache_health("http://c:3333", 200, json.dumps({"status": "ok", "entries": 3}).encode())
    assert ok.ok and "3 entries" in ok.detail
    degraded = checks.parse_cache_health("http://c:3333", 200, json.dumps(
        {"status": "degraded", "problems": ["free disk below --min-free-disk"]}).encode())
    assert degraded.ok is False and "free disk below" in degraded.detail
    assert checks.parse_cache_health("http://c:3333", 502, b"<html>").ok is False
    down = checks.cache_check("http://127.0.0.1:9", timeout=1)
    assert down.ok is False and "unreachable" in down.detail
    assert checks.cache_check(None).ok is None


def test_unit_states():
    assert checks.unit_check("nx-farm-agent.service", {"ActiveState": "active", "SubState": "running",
                                                       "MainPID": "42"}).ok
    failed = checks.unit_check("nx-farm-agent.service", {"ActiveState": "failed", "SubState": "failed",
                                                         "UnitFileState": "enabled"})
    assert failed.ok is False and "systemctl restart nx-farm-agent.service" in failed.fix


@pytest.mark.parametrize("file_state", ["disabled", "masked", "masked-runtime"])
def test_a_unit_turned_off_on_purpose_is_skipped_not_failed(file_state):
    """What `pulumi up` leaves while removing an agent: heal must not start it again."""
    show = {"ActiveState": "inactive", "SubState": "dead", "UnitFileState": file_state}
    off = checks.unit_check("nx-farm-agent.service", show)
    assert off.ok is None and f"{file_state}: not restarted" in off.detail
    assert off.fix == "sudo systemctl enable --now nx-farm-agent.service"
    assert checks.unit_check("nx-farm-agent.service", {**show, "ActiveState": "active"}).ok


def test_backoff_doubles_and_resets_when_healthy(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    restarts = []
    monkeypatch.setattr(heal.subprocess, "run", lambda args, **kw: restarts.append(args) or
                        type("R", (), {"returncode": 0, "stderr": ""})())
    state = heal.HealState(tmp_path / "heal.json", "boot-1")
    unit = "nx-farm-agent.service"
    assert heal.heal([], [unit], 1000.0, state)[0].startswith("restarted nx-farm-agent.service (attempt 1)")
    assert "next restart in 60s" in heal.heal([], [unit], 1000.0, heal.HealState(tmp_path / "heal.json", "boot-1"))[0]
    assert heal.heal([], [unit], 1060.0, heal.HealState(tmp_path / "heal.json", "boot-1"))[0].startswith("restarted")
    assert "next restart in 120s" in heal.heal([], [unit], 1060.0, heal.HealState(tmp_path / "heal.json", "boot-1"))[0]
    assert len(restarts) == 2
    heal.heal([unit], [], 1100.0, heal.HealState(tmp_path / "heal.json", "boot-1"))
    assert heal.heal([], [unit], 1101.0, heal.HealState(tmp_path / "heal.json", "boot-1"))[0].startswith("restarted"), \
        "seen healthy: a new failure is restarted at once"
    log = (tmp_path / "nx-agent.log").read_text().splitlines()
    assert len(log) == 5 and all(" nxfarm health: " in line for line in log)
    assert heal.wait_needed(heal.Attempts(count=30, last=0.0), 0.0) == heal.MAX_S


def test_backoff_follows_time_since_boot_not_the_wall_clock(tmp_path, monkeypatch):
    """The wall clock set back a day between two timer runs changes nothing; a reboot starts afresh."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.setattr(heal.subprocess, "run", lambda args, **kw: type("R", (), {"returncode": 0, "stderr": ""})())
    boot, since_boot = heal.clock()
    assert boot and since_boot > 0
    unit = "nx-farm-agent.service"
    real_time = heal.time.time
    assert heal.heal([], [unit], since_boot, heal.HealState(tmp_path / "heal.json", boot))[0].startswith("restarted")
    monkeypatch.setattr(heal.time, "time", lambda: real_time() - 86400)
    later = since_boot + 61
    assert heal.heal([], [unit], later, heal.HealState(tmp_path / "heal.json", boot))[0].startswith("restarted"), \
        "61 s after the first restart the second is due, whatever the wall clock says"
    assert "next restart in" in heal.heal([], [unit], later, heal.HealState(tmp_path / "heal.json", boot))[0]
    assert heal.heal([], [unit], 5.0, heal.HealState(tmp_path / "heal.json", "another-boot"))[0] \
        .startswith("restarted (attempt 1)".replace("restarted", f"restarted {unit}"))


def test_table_marks_failures():
    text = render([checks.Check("tailnet", None, "tailscale not installed (skipped)"),
                   checks.Check("cache", False, "down", "fix it")])
    lines = text.splitlines()
    assert lines[0].split() == ["CHECK", "STATE", "DETAIL", "FIX"]
    assert lines[1].split()[:2] == ["tailnet", "skip"] and lines[2].split()[:2] == ["cache", "FAIL"]


def test_restart_refuses_what_is_not_a_farm_unit(capsys):
    from nxfarm.cli import main

    assert main(["restart", "sshd.service"]) == 2
    assert "not a farm unit: sshd.service" in capsys.readouterr().err


def test_health_exit_code_follows_the_real_cache_server(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from tests.cache_server.server_proc import CacheServer

    nxfarm = str(Path(sys.executable).with_name("nxfarm"))
    server = CacheServer(tmp_path).start()
    try:
        up = subprocess.run([nxfarm, "health", "--cache-url", server.url], capture_output=True, text=True)
        assert up.returncode == 0, up.stdout + up.stderr
        assert any(line.split()[:2] == ["cache", "ok"] for line in up.stdout.splitlines())
        as_json = subprocess.run([nxfarm, "health", "--json", "--cache-url", server.url], capture_output=True, text=True)
        assert {c["name"]: c["ok"] for c in json.loads(as_json.stdout)}["cache"] is True
    finally:
        server.stop()
    down = subprocess.run([nxfarm, "health", "--cache-url", server.url], capture_output=True, text=True)
    assert down.returncode == 1
    assert any(line.split()[:2] == ["cache", "FAIL"] and "unreachable" in line for line in down.stdout.splitlines())
