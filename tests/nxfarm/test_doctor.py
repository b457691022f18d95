"""`nxfarm doctor` on this machine, for real: the tools it finds or not, a real age key, a real
cache server (token right and wrong), the agent log. Every failure comes with its fix."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyrage

from tests.cache_server.server_proc import WRITE_TOKEN, CacheServer

NXFARM = str(Path(sys.executable).with_name("nxfarm"))


def doctor(env: dict[str, str], cwd: Path | None = None) -> tuple[int, dict[str, dict]]:
    result = subprocess.run([NXFARM, "doctor", "--json"], capture_output=True, text=True, env=env, cwd=cwd)
    return result.returncode, {check["name"]: check for check in json.loads(result.stdout)}


def test_doctor_reports_each_prerequisite_with_its_fix(tmp_path):
    key = tmp_path / "keys.txt"
    key.write_text(str(pyrage.x25519.Identity.generate()) + "\n")
    state = tmp_path / "state"
    state.mkdir()
    (state / "nx-agent.log").write_text("2026-11-26T10:00:00Z nxfarm health: restarted nx-farm-agent.service (attempt 1): ok\n")
    server = CacheServer(tmp_path).start()
    # PATH: node only, as the tutorial runs it (.venv/bin/nxfarm doctor, the venv not activated):
    # sops is found in nxfarm's own environment, and pulumi, pnpm and tailscale are surely absent.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "node").symlink_to(shutil.which("node"))
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "SOPS_AGE_KEY_FILE": str(key),
           "XDG_STATE_HOME": str(state), "NX_SELF_HOSTED_REMOTE_CACHE_SERVER": server.url,
           "NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN": WRITE_TOKEN, "NO_PROXY": "127.0.0.1"}
    try:
        code, found = doctor(env)
        assert code == 1
        assert {name for name, check in found.items() if check["ok"]} == {"sops", "age key", "node", "cache", "agent log"}
        assert found["pnpm"]["fix"] == "corepack enable && corepack prepare pnpm@10.22.0 --activate"
        assert "install the Pulumi CLI" in found["pulumi"]["fix"]
        assert found["tailnet"]["ok"] is False and "install Tailscale" in found["tailnet"]["fix"]
        assert all(check["fix"] for check in found.values() if check["ok"] is False), "every failure has its fix"

        _, wrong = doctor({**env, "NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN": "nope",
                           "SOPS_AGE_KEY_FILE": str(tmp_path / "none")})
        assert "rejects the token (401)" in wrong["cache"]["detail"] and "orchestratorTokens" in wrong["cache"]["fix"]
        # no age-keygen here: the fix is one that works with what nxfarm's environment has
        fix = wrong["age key"]["fix"]
        assert fix.startswith(f"nxfarm sops keygen {tmp_path / 'none'} "), fix
        made = subprocess.run([NXFARM, *fix.split(" (")[0].split()[1:]], capture_output=True, text=True, env=env)
        assert made.returncode == 0 and "Public key: age1" in made.stderr, made.stderr
        assert doctor({**env, "SOPS_AGE_KEY_FILE": str(tmp_path / "none")})[1]["age key"]["ok"] is True
    finally:
        server.stop()
    _, down = doctor(env)
    assert "unreachable" in down["cache"]["detail"] and "tailscale ip -4" in down["cache"]["fix"]
    table = subprocess.run([NXFARM, "doctor"], capture_output=True, text=True, env=env)
    assert table.returncode == 1 and table.stdout.splitlines()[0].split() == ["CHECK", "STATE", "DETAIL", "FIX"]


def test_an_envrc_nothing_loads_is_a_failure_with_both_ways_to_load_it(tmp_path):
    (tmp_path / ".envrc").write_text("export NX_SELF_HOSTED_REMOTE_CACHE_SERVER=http://127.0.0.1:9\n")
    env = {"PATH": "/nonexistent", "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state")}
    _, found = doctor(env, cwd=tmp_path)
    assert found["direnv"]["ok"] is False and "source .envrc" in found["direnv"]["fix"]
    assert "direnv is not installed" in found["direnv"]["detail"]
    _, loaded = doctor({**env, "NX_SELF_HOSTED_REMOTE_CACHE_SERVER": "http://127.0.0.1:9"}, cwd=tmp_path)
    assert loaded["direnv"]["ok"] is True
    _, elsewhere = doctor(env, cwd=tmp_path / "state" if (tmp_path / "state").mkdir() is None else None)
    assert "direnv" not in elsewhere, "no .envrc here: nothing to load"


def test_an_unreachable_cache_on_a_port_containing_401_is_not_taken_for_a_token_problem():
    # The fix used to be chosen by looking for "401" in the message, which names the port.
    import socket

    from nxfarm import doctor as doctor_module

    # Below the ephemeral range (32768-60999 on Linux): a port there may be bound by any process
    # that asked for port 0 (a Dask worker left by an earlier test answered one once), or be the
    # source port of this very connect (a TCP self-connect), and then something answers.
    for port in range(24010, 24020):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        break  # free: nothing listens there once the probe socket is closed
    check = doctor_module.cache(f"http://127.0.0.1:{port}", "token")
    assert check.ok is False and "unreachable" in check.detail
    assert "tailscale ip -4" in check.fix
