"""`nxfarm discover` on `tailscale status --json` documents shaped like Tailscale's ipnstate.Status."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from components.settings import NAME_PATTERN
from nxfarm.discover import agent_name, devices

ROOT = Path(__file__).parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "tailscale"
NXFARM = str(Path(sys.executable).with_name("nxfarm"))


def discover(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NXFARM, "discover", *args], capture_output=True, text=True, cwd=cwd)


def test_only_linux_devices_of_this_tailnet_are_candidates():
    found = {d.name: d for d in devices(json.loads((FIXTURES / "status-running.json").read_text()))}
    assert set(found) == {"cache", "agent-desk", "beast-box", "old-nuc"}, "no phone, Windows, shared or expired node"
    assert found["beast-box"].host_name == "Beast-Box" and found["beast-box"].address == "100.101.0.20"
    assert found["old-nuc"].online is False and found["cache"].tags == ("tag:nx-cache",)


def test_new_candidates_and_the_exact_config_commands():
    result = discover("--from", str(FIXTURES / "status-running.json"), "--stack-file", "Pulumi.homelab.yaml")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:3]]
    assert rows == [["beast-box", "100.101.0.20", "linux", "online", "-"],
                    ["old-nuc", "100.101.0.21", "linux", "offline", "-"]]
    commands = [line for line in result.stdout.splitlines() if line.startswith("pulumi config set")]
    assert commands[0] == "pulumi config set --stack homelab --path 'nx-farm:agents[3].name' beast-box"
    assert commands[1] == "pulumi config set --stack homelab --path 'nx-farm:agents[3].host' 100.101.0.20"
    assert "ssh-keyscan -t ed25519 100.101.0.20" in commands[2]
    assert commands[4].endswith("'nx-farm:agents[4].name' old-nuc")
    # Both are untagged: each is told to join tagged, since operators reach tagged machines only.
    assert result.stdout.count("untagged: on it, `sudo tailscale up --advertise-tags=tag:nx-agent`") == 2
    for command in commands:
        shlex.split(command)  # each line is one valid shell command


def test_names_are_valid_agent_names():
    for host_name in ("Beast-Box", "my_box.local", "ÜBER", "---"):
        assert re.fullmatch(NAME_PATTERN, agent_name(host_name)), host_name


def test_a_logged_out_client_or_bad_input_is_a_clear_error(tmp_path):
    result = discover("--from", str(FIXTURES / "status-needslogin.json"))
    assert result.returncode == 2 and "tailscale is NeedsLogin: run `sudo tailscale up` first" in result.stderr
    (tmp_path / "bad.json").write_text("{")
    result = discover("--from", str(tmp_path / "bad.json"))
    assert result.returncode == 2 and "--from" in result.stderr


def test_without_a_stack_file_every_candidate_is_listed(tmp_path):
    result = discover("--from", str(FIXTURES / "status-running.json"), cwd=tmp_path)
    assert result.returncode == 0 and "no stack file" in result.stdout
    assert "agent-desk" in result.stdout and "agents[0].name" in result.stdout
    assert "cache " not in result.stdout.split("to add them")[0], "the tagged cache host is never an agent candidate"
