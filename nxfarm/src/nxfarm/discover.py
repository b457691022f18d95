"""`nxfarm discover`: tailnet devices that could be agents and are not in the stack yet, with the
exact `pulumi config set --path` commands that add them.

A candidate is a Linux device of this tailnet (agents run systemd units) that is not shared in
from another tailnet, whose key has not expired, and that the stack does not already name as
its cache host or an agent (by name or address). Offline devices are listed, marked offline.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml  # type: ignore[import-untyped]

PROJECT = "nx-farm"
EPILOG = """examples:
  nxfarm discover                                  ask tailscale, compare with the only Pulumi.*.yaml here
  nxfarm discover --stack-file Pulumi.homelab.yaml
  nxfarm discover --from status.json               a saved `tailscale status --json`
exit codes: 0 listed (possibly none), 2 bad input (unreadable status or stack file)"""


@dataclass(frozen=True)
class Device:
    name: str          # a valid agent name derived from the host name
    host_name: str
    address: str       # first IPv4 tailnet address
    os: str
    online: bool
    tags: tuple[str, ...]


class DiscoverError(ValueError):
    pass


def agent_name(host_name: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", host_name.lower()).strip("-")[:63]
    return name or "agent"


def devices(status: dict) -> list[Device]:
    """Peers of a running client that could host an agent."""
    if status.get("BackendState") != "Running":
        raise DiscoverError(f"tailscale is {status.get('BackendState', 'not running')}: run `sudo tailscale up` first")
    found = []
    for peer in (status.get("Peer") or {}).values():
        if peer.get("OS") != "linux" or peer.get("ShareeNode") or peer.get("Expired"):
            continue
        addresses = [a for a in peer.get("TailscaleIPs") or [] if ":" not in a]
        if not addresses:
            continue
        host_name = peer.get("HostName") or peer.get("DNSName", "").split(".")[0]
        found.append(Device(agent_name(host_name), host_name, addresses[0], peer["OS"], bool(peer.get("Online")),
                            tuple(peer.get("Tags") or ())))
    return sorted(found, key=lambda d: (not d.online, d.name))


def stack_members(stack: dict) -> tuple[set[str], set[str], int]:
    """(names, hosts, number of agents) the stack config already has."""
    config = stack.get("config") or {}
    agents = config.get(f"{PROJECT}:agents") or []
    cache = config.get(f"{PROJECT}:cacheHost") or {}
    names = {a.get("name") for a in agents if isinstance(a, dict)} | {cache.get("name")}
    hosts = {a.get("host") for a in agents if isinstance(a, dict)} | {cache.get("host"), cache.get("bindAddress")}
    return {n for n in names if n}, {h for h in hosts if h}, len(agents)


def new_candidates(found: list[Device], stack: dict) -> list[Device]:
    names, hosts, _ = stack_members(stack)
    return [d for d in found if d.name not in names and d.address not in hosts and "tag:nx-cache" not in d.tags]


def config_commands(device: Device, index: int, stack_name: str | None) -> list[str]:
    stack = ["--stack", stack_name] if stack_name else []
    key = f"{PROJECT}:agents[{index}]"

    def set_(field: str, value: str, raw: bool = False) -> str:
        shown = value if raw else shlex.quote(value)
        return " ".join(["pulumi", "config", "set", *stack, "--path", shlex.quote(f"{key}.{field}"), shown])

    ip = device.address
    return [
        set_("name", device.name),
        set_("host", ip),
        set_("hostKey", f'"$(ssh-keyscan -t ed25519 {ip} 2>/dev/null | cut -d" " -f2-)"', raw=True),
        set_("ageRecipient", f'"$(ssh root@{ip} age-keygen -y /etc/nx-farm/agent-age.key)"', raw=True),
    ]


def table(found: list[Device]) -> str:
    rows = [("NAME", "ADDRESS", "OS", "STATE", "TAGS")]
    rows += [(d.name, d.address, d.os, "online" if d.online else "offline", ",".join(d.tags) or "-") for d in found]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", type=Path, help="read `tailscale status --json` from this file")
    parser.add_argument("--stack-file", type=Path, help="the stack config (default: the only Pulumi.*.yaml here)")


def _load_status(source: Path | None) -> dict:
    if source is not None:
        try:
            return json.loads(source.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DiscoverError(f"--from {source}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        result = subprocess.run(["tailscale", "status", "--json"], capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        raise DiscoverError("tailscale is not installed here: install it, or pass --from FILE") from None
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        raise DiscoverError(f"tailscale status --json failed: {result.stderr.strip()}") from None


def _stack_file(given: Path | None) -> Path | None:
    if given is not None:
        return given
    found = sorted(Path.cwd().glob("Pulumi.*.yaml"))
    return found[0] if len(found) == 1 else None


def run(args: argparse.Namespace) -> int:
    try:
        found = devices(_load_status(args.source))
        path = _stack_file(args.stack_file)
        try:
            stack = yaml.safe_load(path.read_text()) or {} if path else {}
        except (OSError, yaml.YAMLError) as exc:
            raise DiscoverError(f"--stack-file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except DiscoverError as exc:
        print(f"nxfarm discover: {exc}", file=sys.stderr)
        return 2
    candidates = new_candidates(found, stack)
    if path is None:
        print("(no stack file: pass --stack-file to leave out devices the stack already has)")
    if not candidates:
        print("no new agent candidates on this tailnet")
        return 0
    print(table(candidates))
    _, _, count = stack_members(stack)
    stack_name = path.name.removeprefix("Pulumi.").removesuffix(".yaml") if path else None
    print("\nto add them (make the age key on each agent first: age-keygen -o /etc/nx-farm/agent-age.key):")
    for offset, device in enumerate(candidates):
        print(f"# {device.name}" + ("" if device.online else " (offline now)"))
        if not device.tags:
            # The farm's policy grants operators SSH to tagged machines only (docs/how-to/add-an-agent.md).
            print("#   untagged: on it, `sudo tailscale up --advertise-tags=tag:nx-agent` before `pulumi up`,"
                  " or the deploy cannot reach it over SSH")
        for command in config_commands(device, count + offset, stack_name):
            print(command)
    return 0
