"""What runs on an agent for one Nx task: pick a free slot, check out the commit, install
dependencies if the lockfile changed, run `nx run <task>` against the remote cache.

The agent process sets the context once at start (`configure`); the task function arrives
pickled by reference (the only function farm/unpickle.py lets in), its request and result
travel as JSON text. Dependencies of the task are part of the `nx run`, never
excluded, so they come back as remote-cache hits instead of being built blind (dte.md 2.2).
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass

from ..farm.protocol import ProtocolError, TaskRequest, TaskResult
from .checkout import Checkouts

LOG_TAIL_LINES = 40
TASK_TIMEOUT_S = 6 * 3600
_RESTORED = re.compile(r"\[(remote cache|local cache)\]")


@dataclass
class AgentContext:
    name: str
    checkouts: Checkouts
    env: dict[str, str]  # the agent's environment: cache URL and this agent's own token


_context: AgentContext | None = None


def configure(context: AgentContext) -> None:
    global _context
    _context = context


def nx_env(base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    # No Nx Cloud, no daemon per slot, plain logs; never NX_SKIP_NX_CACHE (outputs must reach the cache).
    env.update({"NX_NO_CLOUD": "true", "NX_DAEMON": "false", "NX_TUI": "false", "CI": "true",
                "FORCE_COLOR": "0"})
    for key in ("NX_SKIP_NX_CACHE", "NX_SKIP_REMOTE_CACHE"):
        env.pop(key, None)
    for key in [key for key in env if key.startswith("NXFARM_TLS_")]:
        del env[key]  # the agent's cluster key is not the build's business
    return env


def _tail(text: str) -> str:
    return "\n".join(text.rstrip().splitlines()[-LOG_TAIL_LINES:])


def restored_from(task_id: str, output: str) -> str | None:
    """Whether Nx restored this task instead of running it, from its own status line."""
    for line in output.splitlines():
        if f"nx run {task_id}" in line:
            found = _RESTORED.search(line)
            if found:
                return found.group(1)
    return None


def run_task(request_json: str) -> str:
    """Run one TaskRequest (JSON) and answer its TaskResult (JSON). Never raises: a Dask error
    would travel back pickled."""
    if _context is None:
        return TaskResult("?", "?", 1, 0.0, None, "nxfarm agent context not configured: tasks run only on "
                          "`nxfarm agent run` workers", "checkout").to_json()
    try:
        request = TaskRequest.from_json(request_json)
    except ProtocolError as exc:
        return TaskResult("?", _context.name, 1, 0.0, None, f"refused: {exc}", "checkout").to_json()
    return _run(_context, request).to_json()


def _run(context: AgentContext, request: TaskRequest) -> TaskResult:
    started = time.monotonic()
    slot = context.checkouts.acquire()
    phase = "checkout"
    try:
        tree = context.checkouts.checkout(slot, request.repo_url, request.commit)
        workspace = tree / request.workspace_dir
        env = nx_env(context.env)
        phase = "install"
        context.checkouts.install(slot, workspace, env)
        phase = "run"
        nx = workspace / "node_modules" / ".bin" / "nx"
        command = [str(nx) if nx.exists() else "nx", "run", request.task_id, "--outputStyle=static",
                   *request.nx_args]
        result = subprocess.run(command, cwd=workspace, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, timeout=TASK_TIMEOUT_S)
        return TaskResult(request.task_id, context.name, result.returncode, time.monotonic() - started,
                          restored_from(request.task_id, result.stdout), _tail(result.stdout), phase)
    except Exception as exc:  # noqa: BLE001 - CheckoutError, TimeoutExpired, OSError, and anything else
        return TaskResult(request.task_id, context.name, 1, time.monotonic() - started, None,
                          f"{phase} failed on {context.name}: {exc}", phase)
    finally:
        context.checkouts.release(slot)

