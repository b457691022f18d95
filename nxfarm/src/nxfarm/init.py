"""`nxfarm init [WORKSPACE]`: make an Nx workspace ready for the farm, for the Nx it has.

What it changes, never overriding a value the workspace already sets:
  nx.json  `targetDefaults.<build|test|lint>.cache: true` (Nx 17+); the seed's legacy
           `tasksRunnerOptions.default.options` (`cacheableOperations`, `cacheDirectory`) is
           migrated to those, and the block removed when nothing else is in it. Nx before 17
           gets `cacheableOperations` instead, which is what it understands.
  .envrc   the remote cache URL, the token read from ~/.config/nx-farm/access-token (outside
           the repository; `make cache` writes it for a cache on this machine); direnv loads
           it on `cd` after `direnv allow`, or `source .envrc` in each shell without direnv, and NX_CACHE_DIRECTORY=$HOME/.local/state/nx-cache (the
           seed's cache directory; `~` in nx.json would be a directory named `~`).
Idempotent; `--dry-run` prints the diff and writes nothing.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import client

TARGETS = ("build", "test", "lint")
SEED_CACHE_DIR = "$HOME/.local/state/nx-cache"
TOKEN_FILE = "${XDG_CONFIG_HOME:-$HOME/.config}/nx-farm/access-token"
LEGACY_RUNNERS = (None, "nx/tasks-runners/default", "@nrwl/workspace/tasks-runners/default")
EPILOG = """examples:
  nxfarm init --dry-run                    show what would change in ./nx.json and ./.envrc
  nxfarm init ~/src/app --cache-url http://100.101.0.10:3333
exit codes: 0 done or nothing to change, 2 not an Nx workspace or unreadable nx.json"""


@dataclass
class InitPlan:
    nx_json: dict
    envrc: str
    notes: list[str] = field(default_factory=list)


def parse_version(text: str | None) -> tuple[int, int] | None:
    match = re.search(r"(\d+)\.(\d+)", text or "")
    return (int(match[1]), int(match[2])) if match else None


def nx_version(workspace: Path) -> tuple[int, int] | None:
    installed = workspace / "node_modules" / "nx" / "package.json"
    if installed.is_file():
        return parse_version(json.loads(installed.read_text()).get("version"))
    package = workspace / "package.json"
    if package.is_file():
        data = json.loads(package.read_text())
        spec = {**data.get("dependencies", {}), **data.get("devDependencies", {})}.get("nx")
        return parse_version(spec)
    return None


def _exported(envrc: str) -> set[str]:
    return set(re.findall(r"^\s*export\s+([A-Z_][A-Z0-9_]*)=", envrc, re.MULTILINE))


def plan(nx_json: dict, version: tuple[int, int] | None, envrc: str, cache_url: str | None) -> InitPlan:
    """Pure: the new nx.json and .envrc, and what the developer should know."""
    config = copy.deepcopy(nx_json)
    notes: list[str] = []
    cache_dir: str | None = None
    modern = version is None or version >= (17, 0)
    if version is None:
        notes.append("could not tell the Nx version (no node_modules/nx, no nx in package.json): assuming Nx 17+")

    runners = config.get("tasksRunnerOptions")
    legacy = runners.get("default") if isinstance(runners, dict) else None
    cacheable: list[str] = []
    if modern and isinstance(legacy, dict):
        options = legacy.setdefault("options", {})
        cacheable = list(options.pop("cacheableOperations", []) or [])
        cache_dir = options.pop("cacheDirectory", None)
        if not options:
            legacy.pop("options")
        if legacy.get("runner") in LEGACY_RUNNERS and not set(legacy) - {"runner"}:
            assert isinstance(runners, dict)
            del runners["default"]
            if not runners:
                del config["tasksRunnerOptions"]
            notes.append("migrated the legacy tasksRunnerOptions (cacheableOperations, cacheDirectory) and removed it")
        else:
            notes.append(f"kept tasksRunnerOptions.default (runner {legacy.get('runner')!r} or options of yours); "
                         "its cacheableOperations/cacheDirectory moved")

    if modern:
        defaults = config.setdefault("targetDefaults", {})
        for target in dict.fromkeys([*TARGETS, *cacheable]):
            entry = defaults.setdefault(target, {})
            if "cache" not in entry:
                entry["cache"] = True
            elif entry["cache"] is not True:
                notes.append(f"kept targetDefaults.{target}.cache = {json.dumps(entry['cache'])} (your setting)")
    else:
        assert version is not None  # not modern implies a known, older version
        runner = config.setdefault("tasksRunnerOptions", {}).setdefault(
            "default", {"runner": "nx/tasks-runners/default", "options": {}})
        operations = runner.setdefault("options", {}).setdefault("cacheableOperations", [])
        operations.extend(t for t in TARGETS if t not in operations)
        notes.append(f"Nx {version[0]}.{version[1]} predates targetDefaults.cache: using cacheableOperations")
    if version is not None and version < (20, 8):
        notes.append(f"Nx {version[0]}.{version[1]} has no self-hosted remote cache (NX_SELF_HOSTED_REMOTE_CACHE_SERVER "
                     "needs Nx 20.8+): upgrade with `npx nx migrate latest`")

    if cache_dir and not cache_dir.startswith("~") and "cacheDirectory" not in config:
        config["cacheDirectory"] = cache_dir
    home_cache = cache_dir is None or cache_dir.startswith("~")
    if cache_dir and cache_dir.startswith("~"):
        cache_dir_env = cache_dir.replace("~", "$HOME", 1)
    else:
        cache_dir_env = SEED_CACHE_DIR

    present = _exported(envrc)
    wanted = {
        "NX_SELF_HOSTED_REMOTE_CACHE_SERVER": cache_url or "http://CACHE-HOST:3333",
        "NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN": f'"$(cat "{TOKEN_FILE}" 2>/dev/null)"',
    }
    if home_cache and "cacheDirectory" not in config:
        wanted["NX_CACHE_DIRECTORY"] = f'"{cache_dir_env}"'
    missing = {key: value for key, value in wanted.items() if key not in present}
    if not cache_url and "NX_SELF_HOSTED_REMOTE_CACHE_SERVER" in missing:
        notes.append("set the cache URL in .envrc (or rerun with --cache-url): `pulumi stack output cacheUrl`")
    if missing:
        block = ("# nx-farm (nxfarm init): the farm's remote cache; the token stays outside the repository.\n"
                 "# Loaded by direnv (`direnv allow`), or by `source .envrc` in a shell without direnv.\n")
        block += "".join(f"export {key}={value}\n" for key, value in missing.items())
        envrc = envrc + ("\n" if envrc and not envrc.endswith("\n") else "") + ("\n" if envrc else "") + block
    return InitPlan(config, envrc, notes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workspace", nargs="?", type=Path, default=Path("."), help="the Nx workspace (default: .)")
    parser.add_argument("--cache-url", default=os.environ.get("NX_SELF_HOSTED_REMOTE_CACHE_SERVER"),
                        help="the farm's cache URL (default: $NX_SELF_HOSTED_REMOTE_CACHE_SERVER)")
    parser.add_argument("--dry-run", action="store_true", help="print the diff, write nothing")


def _diff(path: Path, old: str, new: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"a/{path.name}", f"b/{path.name}"))


def run(args: argparse.Namespace) -> int:
    workspace = args.workspace.resolve()
    nx_path, envrc_path = workspace / "nx.json", workspace / ".envrc"
    try:
        old_nx = nx_path.read_text()
        nx_json = json.loads(old_nx)
    except FileNotFoundError:
        print(f"nxfarm init: {workspace} has no nx.json: run it in an Nx workspace (npx nx init makes one)",
              file=sys.stderr)
        return 2
    except (OSError, json.JSONDecodeError) as exc:
        print(f"nxfarm init: {nx_path}: cannot read it as JSON ({exc}); comments are not supported", file=sys.stderr)
        return 2
    old_envrc = envrc_path.read_text() if envrc_path.exists() else ""
    version = nx_version(workspace)
    result = plan(nx_json, version, old_envrc, args.cache_url)
    new_nx = old_nx if result.nx_json == nx_json else json.dumps(result.nx_json, indent=2) + "\n"
    diffs = [d for d in (_diff(nx_path, old_nx, new_nx), _diff(envrc_path, old_envrc, result.envrc)) if d]
    shown = f"Nx {version[0]}.{version[1]}" if version else "Nx (version unknown)"
    for note in result.notes:
        print(f"note: {note}")
    if not diffs:
        print(f"{workspace}: {shown}, nothing to change")
        return 0
    print("".join(diffs), end="")
    if args.dry_run:
        print(f"dry run: {shown}; nothing written")
        return 0
    if new_nx != old_nx:
        nx_path.write_text(new_nx)
    if result.envrc != old_envrc:
        envrc_path.write_text(result.envrc)
    token = client.access_token_file()
    where = (f"the token is read from {token}" if token.is_file() else
             f"put your token in {token} (mode 600; `make cache` writes it for a cache on this machine)")
    print(f"{workspace}: {shown} configured; {where}. Load .envrc with `direnv allow` (direnv), or "
          f"`source .envrc` in each shell")
    return 0
