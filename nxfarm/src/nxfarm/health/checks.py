"""What `nxfarm health` looks at. Parsers are pure; the probes around them run tools and HTTP."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass

# Every service nx-farm installs; a host checks the ones it has.
FARM_UNITS = ("nx-farm-cache.service", "nx-farm-scheduler.service", "nx-farm-agent.service")
# A unit in one of these file states was turned off on purpose (`systemctl disable --now`, which is
# also how `pulumi up` removes an agent): health reports it, and nothing restarts it.
TURNED_OFF = ("disabled", "masked", "masked-runtime")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: not applicable here (e.g. tailscale not installed); never a failure
    detail: str
    fix: str = ""


def parse_tailscale_status(text: str) -> Check:
    """`tailscale status --json`: the backend must be Running and this node online."""
    try:
        status = json.loads(text)
    except json.JSONDecodeError:
        return Check("tailnet", False, "tailscale status --json printed no JSON", "sudo systemctl restart tailscaled")
    state = status.get("BackendState", "?")
    me = status.get("Self") or {}
    name = me.get("HostName") or me.get("DNSName") or "this node"
    addresses = ", ".join(me.get("TailscaleIPs") or []) or "no address"
    if state != "Running":
        fix = "sudo tailscale up" if state in ("Stopped", "NeedsLogin", "NoState") else "sudo systemctl restart tailscaled"
        return Check("tailnet", False, f"tailscale is {state}", fix)
    if me.get("Online") is False:
        return Check("tailnet", False, f"{name} ({addresses}) is running but offline", "sudo systemctl restart tailscaled")
    return Check("tailnet", True, f"{name} online ({addresses})")


def tailnet_check(timeout: float = 5) -> Check:
    binary = shutil.which("tailscale")
    if binary is None:
        return Check("tailnet", None, "tailscale not installed (skipped)")
    try:
        result = subprocess.run([binary, "status", "--json"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Check("tailnet", False, f"tailscale status did not answer within {timeout:g}s",
                     "sudo systemctl restart tailscaled")
    if result.returncode != 0 and not result.stdout.strip().startswith("{"):
        return Check("tailnet", False, (result.stderr.strip().splitlines() or ["tailscale status failed"])[-1],
                     "sudo systemctl start tailscaled && sudo tailscale up")
    return parse_tailscale_status(result.stdout)


def parse_cache_health(url: str, status: int, body: bytes) -> Check:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return Check("cache", False, f"{url}/health answered {status} without JSON")
    if status == 200 and data.get("status") == "ok":
        return Check("cache", True, f"{url} ok ({data.get('entries', '?')} entries)")
    problems = "; ".join(data.get("problems") or [])
    last = data.get("last_storage_error") or {}
    error = problems or last.get("message") or "see the server's log"
    return Check("cache", False, f"{url} is {data.get('status', status)}: {error}",
                 "journalctl -u nx-farm-cache -n 50 (on the cache host)")


def cache_check(url: str | None, timeout: float = 3) -> Check:
    if not url:
        return Check("cache", None, "no cache URL (--cache-url or NX_SELF_HOSTED_REMOTE_CACHE_SERVER)")
    url = url.rstrip("/")
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return parse_cache_health(url, response.status, response.read())
    except urllib.error.HTTPError as exc:
        return parse_cache_health(url, exc.code, exc.read())
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Check("cache", False, f"{url} unreachable: {reason}", "nxfarm health on the cache host; tailscale ping it")


def systemctl_show(unit: str) -> dict[str, str]:
    properties = "LoadState,ActiveState,SubState,MainPID,NRestarts,UnitFileState"
    result = subprocess.run(["systemctl", "show", unit, "-p", properties], capture_output=True, text=True)
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def installed_units() -> dict[str, dict[str, str]]:
    """The farm units this host has, each with its `systemctl_show` (one call per unit)."""
    if shutil.which("systemctl") is None:
        return {}
    shows = {unit: systemctl_show(unit) for unit in FARM_UNITS}
    return {unit: show for unit, show in shows.items() if show.get("LoadState") == "loaded"}


def turned_off(show: dict[str, str]) -> bool:
    return show.get("UnitFileState") in TURNED_OFF


def unit_check(unit: str, show: dict[str, str]) -> Check:
    state, sub = show.get("ActiveState", "unknown"), show.get("SubState", "")
    if state == "active":
        return Check(unit, True, f"active ({sub}), pid {show.get('MainPID', '?')}")
    if turned_off(show):
        return Check(unit, None, f"{state} ({sub}), {show['UnitFileState']}: not restarted",
                     f"sudo systemctl enable --now {unit}")
    return Check(unit, False, f"{state} ({sub})", f"sudo systemctl restart {unit}; journalctl -u {unit} -n 50")
