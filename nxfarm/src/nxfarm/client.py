"""Where a developer's farm settings come from, the same for `nxfarm build`, `status` and `doctor`.

1. the environment (NXFARM_SCHEDULER, NXFARM_TLS_*, NX_SELF_HOSTED_REMOTE_CACHE_*), as `.envrc`
   from `nxfarm init` or a shell profile sets it;
2. else, while one is up, the local farm of `nxfarm farm up` (its settings file in its state
   directory);
3. the cache token, when the environment has none: ~/.config/nx-farm/access-token, the one file
   a token is handed over in (`make cache` writes it; the server's own `cache-tokens` next to it
   holds only hashes).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path

CACHE_URL_ENV = "NX_SELF_HOSTED_REMOTE_CACHE_SERVER"
CACHE_TOKEN_ENV = "NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN"
SCHEDULER_ENV = "NXFARM_SCHEDULER"
# "workspace": agents run on this machine and fetch commits from the workspace's own repository
FETCH_FROM_ENV = "NXFARM_FETCH_FROM"
FARM_ENV_KEYS = (SCHEDULER_ENV, CACHE_URL_ENV)


def config_dir(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get("XDG_CONFIG_HOME") or Path(environ.get("HOME") or Path.home()) / ".config") / "nx-farm"


def state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get("XDG_STATE_HOME") or Path(environ.get("HOME") or Path.home()) / ".local" / "state") / "nx-farm"


def access_token_file(environ: Mapping[str, str] = os.environ) -> Path:
    return config_dir(environ) / "access-token"


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=value` lines as `render_env_file` writes them (values shell-quoted)."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.removeprefix("export ").partition("=")
            parts = shlex.split(value)
            found[key.strip()] = parts[0] if parts else ""
    return found


def render_env_file(values: Mapping[str, str], comment: str) -> str:
    """Pure: a file both `source` (sh, bash, zsh) and `read_env_file` read."""
    lines = [f"# {line}" for line in comment.splitlines()]
    return "\n".join([*lines, *(f"export {key}={shlex.quote(value)}" for key, value in values.items())]) + "\n"


def resolve(environ: Mapping[str, str] = os.environ) -> tuple[dict[str, str], str]:
    """(the environment to build with, where its farm settings came from)."""
    env = dict(environ)
    source = "the environment"
    if not any(env.get(key) for key in FARM_ENV_KEYS):
        from .localfarm.record import running_farm

        farm = running_farm(state_dir(environ))
        if farm is not None:
            env.update(read_env_file(farm.client_env))
            source = f"the local farm (nxfarm farm up, {farm.state})"
        else:
            source = "none (no farm configured)"
    if env.get(CACHE_URL_ENV) and not env.get(CACHE_TOKEN_ENV):
        token_file = access_token_file(environ)
        if token_file.is_file():
            env[CACHE_TOKEN_ENV] = token_file.read_text().strip()
    return env, source
