"""`nxfarm doctor`: the seed's prerequisites and troubleshooting steps, each failure printed with
the command that fixes it. Exit 0 when everything needed passes, 1 otherwise."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from . import client
from .health import checks, heal
from .health.checks import Check
from .health.command import render
from .probe.cache import probe_cache
from .sops import SopsError, sops_binary

PNPM_VERSION = "10.22.0"  # the seed's
NODE_MIN = (20, 0)
EPILOG = """examples:
  nxfarm doctor                      everything the seed lists
  nxfarm doctor --cache-url http://100.101.0.10:3333
exit codes: 0 all checks pass (skipped ones do not count), 1 something needs fixing"""


def _version(command: list[str]) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (result.stdout or result.stderr).strip().splitlines()[0] if result.returncode == 0 else None


def _numbers(text: str) -> tuple[int, ...]:
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(part) for part in match.groups() if part is not None) if match else ()


def tool_checks() -> list[Check]:
    found = []
    pulumi = _version(["pulumi", "version"])
    found.append(Check("pulumi", True, pulumi) if pulumi else
                 Check("pulumi", False, "the Pulumi CLI is not on PATH (needed to deploy the farm)",
                       "install the Pulumi CLI (pulumi.com/docs/install), then `pulumi login --local`"))
    found += [sops_check(), age_key_check()]
    node = _version(["node", "--version"])
    ok = node is not None and _numbers(node)[:2] >= NODE_MIN
    found.append(Check("node", ok, node or "node is not on PATH",
                       "" if ok else "install Node.js 20 or newer (nodejs.org, or your distribution)"))
    pnpm = _version(["pnpm", "--version"])
    ok = pnpm == PNPM_VERSION
    found.append(Check("pnpm", ok, f"pnpm {pnpm}" if pnpm else "pnpm is not on PATH",
                       "" if ok else f"corepack enable && corepack prepare pnpm@{PNPM_VERSION} --activate"))
    return found


def sops_check() -> Check:
    """The sops nxfarm itself runs: PATH, then beside this interpreter (the venv's sops-binary)."""
    try:
        binary = sops_binary()
    except SopsError:
        return Check("sops", False, "sops is not on PATH nor in nxfarm's environment",
                     "pip install sops-binary into nxfarm's environment (or your distribution's sops 3.9+)")
    version = _version([binary, "--version"])
    ok = version is not None and _numbers(version) >= (3, 9)
    return Check("sops", ok, f"{version or 'unknown version'} ({binary})",
                 "" if ok else "pip install sops-binary into nxfarm's environment (or your distribution's sops 3.9+)")


def age_key_check() -> Check:
    key = Path(os.environ.get("SOPS_AGE_KEY_FILE") or Path.home() / ".config" / "sops" / "age" / "keys.txt")
    if key.is_file() and "AGE-SECRET-KEY-" in key.read_text(errors="replace"):
        return Check("age key", True, str(key))
    if shutil.which("age-keygen"):
        make = f"age-keygen -o {key}"
    elif importlib.util.find_spec("pyrage") is not None:
        make = f"nxfarm sops keygen {key}"
    else:
        make = f"install age (apt install age), then age-keygen -o {key}"
    return Check("age key", False, f"{key} has no age identity",
                 f"{make} (its public key goes in sops.operatorRecipients)")


def direnv_check(directory: Path, environ: dict[str, str]) -> Check | None:
    """Where an `.envrc` is, something has to load it: direnv, or `source .envrc`."""
    envrc = directory / ".envrc"
    if not envrc.is_file():
        return None
    if environ.get("NX_SELF_HOSTED_REMOTE_CACHE_SERVER"):
        return Check("direnv", True, f"{envrc} is loaded (NX_SELF_HOSTED_REMOTE_CACHE_SERVER is set)")
    if shutil.which("direnv") is None:
        return Check("direnv", False, f"{envrc} is not loaded and direnv is not installed",
                     "`source .envrc` in this shell, or install direnv and hook it into your shell (direnv.net)")
    return Check("direnv", False, f"{envrc} is not loaded", "direnv allow (after reading it)")


def tailnet() -> Check:
    check = checks.tailnet_check()
    if check.ok is None:
        return Check("tailnet", False, "tailscale is not installed", "install Tailscale, then `sudo tailscale up`")
    return check


def cache(url: str | None, token: str | None) -> Check:
    if not url:
        return Check("cache", False, "NX_SELF_HOSTED_REMOTE_CACHE_SERVER is not set",
                     "nxfarm init (writes .envrc), or export it: `pulumi stack output cacheUrl`")
    probe = probe_cache(url, token)
    if probe.usable:
        return Check("cache", True, probe.reason)
    fix = (f"put your token in {client.access_token_file()}: `pulumi stack output --show-secrets orchestratorTokens`"
           if probe.status == 401 else "check `tailscale ip -4` and the ACLs; `nxfarm health` on the cache host")
    return Check("cache", False, probe.reason, fix)


def agent_log() -> Check:
    path = heal.log_path()
    if not path.exists():
        return Check("agent log", None, f"{path}: no entries yet")
    lines = path.read_text(errors="replace").splitlines()
    last = lines[-1] if lines else "(empty)"
    failed = "FAILED" in last or "failed" in last
    return Check("agent log", not failed, f"{path}: {last[-120:]}",
                 "journalctl -u nx-farm-agent -n 50; nxfarm restart" if failed else "")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-url", default=os.environ.get("NX_SELF_HOSTED_REMOTE_CACHE_SERVER"),
                        help="default: $NX_SELF_HOSTED_REMOTE_CACHE_SERVER")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    env, _ = client.resolve()
    direnv = direnv_check(Path.cwd(), dict(os.environ))
    found = [*tool_checks(), *([direnv] if direnv else []), tailnet(),
             cache(args.cache_url or env.get(client.CACHE_URL_ENV), env.get(client.CACHE_TOKEN_ENV)), agent_log()]
    found += [checks.unit_check(unit, show) for unit, show in checks.installed_units().items()]
    print(json.dumps([vars(check) for check in found], indent=2) if args.json else render(found))
    return 1 if any(check.ok is False for check in found) else 0
