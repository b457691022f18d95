"""Running the developer's own Nx: the task graph it would run, and the final local pass."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

CACHE_URL_ENV = "NX_SELF_HOSTED_REMOTE_CACHE_SERVER"
CACHE_TOKEN_ENV = "NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN"
_TASK_LINE = re.compile(r"^>\s+nx run (\S+)(.*)$")


class NxError(RuntimeError):
    pass


@dataclass(frozen=True)
class NxInvocation:
    targets: tuple[str, ...]
    projects: tuple[str, ...] = ()
    affected: bool = False
    base: str | None = None
    head: str | None = None
    extra: tuple[str, ...] = field(default=())  # passed to every task (e.g. --configuration=production)

    def argv(self) -> list[str]:
        if self.affected:
            argv = ["affected", "-t", *self.targets]
            argv += [f"--base={self.base}"] if self.base else []
            argv += [f"--head={self.head}"] if self.head else []
        else:
            argv = ["run-many", "-t", *self.targets]
            argv += [f"--projects={','.join(self.projects)}"] if self.projects else []
        return argv + list(self.extra)


def find_workspace(start: Path) -> Path:
    for directory in (start, *start.parents):
        if (directory / "nx.json").is_file():
            return directory
    raise NxError(f"no nx.json in {start} or above: run nxfarm build inside an Nx workspace (or pass --workspace)")


def nx_command(workspace: Path) -> list[str]:
    if shutil.which("node") is None:
        raise NxError("Node.js is not installed (no `node` on PATH), and Nx runs on it: install Node.js 20 or "
                      "newer (nodejs.org, or your distribution's nodejs), then run nxfarm build again")
    local = workspace / "node_modules" / ".bin" / "nx"
    if local.exists():
        return [str(local)]
    if shutil.which("npx"):
        return ["npx", "--no-install", "nx"]
    raise NxError(f"nx is not installed in {workspace} (no node_modules/.bin/nx) and npx is missing: install dependencies first")


def base_env(env: dict[str, str] | None = None) -> dict[str, str]:
    out = dict(os.environ if env is None else env)
    out.setdefault("NX_TUI", "false")  # plain lines, which we stream and read
    for key in [key for key in out if key.startswith("NXFARM_TLS_")]:
        del out[key]
    return out


def task_graph_json(workspace: Path, invocation: NxInvocation, env: dict[str, str]) -> dict:
    result = subprocess.run([*nx_command(workspace), *invocation.argv(), "--graph=stdout"], cwd=workspace,
                            env={**env, "NX_DAEMON": env.get("NX_DAEMON", "false")}, capture_output=True, text=True,
                            timeout=600)
    text = result.stdout
    start = text.find("{")
    if result.returncode != 0 or start < 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise NxError(f"nx {' '.join(invocation.argv())} --graph=stdout failed ({result.returncode}): "
                      + " | ".join(last))
    try:
        return json.loads(text[start:])
    except json.JSONDecodeError as exc:
        raise NxError(f"nx printed a task graph that is not JSON: {exc}") from None


def classify(rest: str) -> str:
    if "[remote cache]" in rest:
        return "remote cache"
    if "[local cache]" in rest:
        return "local cache"
    if "existing outputs match the cache" in rest:
        return "outputs already here"
    return "executed here"


def final_pass(workspace: Path, invocation: NxInvocation, env: dict[str, str]) -> tuple[int, dict[str, str]]:
    """Run the same Nx command here, streaming its output; returns its exit code and how each
    task was satisfied (read from Nx's own `> nx run <task>` lines)."""
    process = subprocess.Popen([*nx_command(workspace), *invocation.argv(), "--outputStyle=static"], cwd=workspace,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    how: dict[str, str] = {}
    assert process.stdout is not None
    for line in process.stdout:
        sys.stdout.write(line)
        match = _TASK_LINE.match(line.strip())
        if match:
            how[match.group(1)] = classify(match.group(2))
    sys.stdout.flush()
    return process.wait(), how
