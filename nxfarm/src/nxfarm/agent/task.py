"""What runs on an agent for one Nx task: pick a free slot, check out the commit, install
dependencies if the lockfile changed, run `nx run <task>` against the remote cache.

The agent process sets the context once at start (`configure`). The build reaches the cache
through the agent's proxy with a token valid for this task only (cache_proxy.py). The task
function arrives pickled by reference (the only function farm/unpickle.py lets in), its
request and result travel as JSON text. Dependencies of the task are part of the `nx run`, never
excluded, so they come back as remote-cache hits instead of being built blind (dte.md 2.2).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..farm.protocol import ProtocolError, TaskRequest, TaskResult
from .cache_proxy import CacheProxy, Grant
from .checkout import CheckoutError, Checkouts
from .sandbox import as_user
from .trust import BRANCH_TOKEN_ENV, TRUSTED, TrustPolicy, cache_namespace

LOG_TAIL_LINES = 40
TASK_TIMEOUT_S = 6 * 3600
_RESTORED = re.compile(r"\[(remote cache|local cache)\]")


CACHE_URL_ENV = "NX_SELF_HOSTED_REMOTE_CACHE_SERVER"
CACHE_TOKEN_ENV = "NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN"


@dataclass
class AgentContext:
    name: str
    checkouts: Checkouts
    env: dict[str, str]  # the agent's environment: cache URL, its trusted and branch tokens
    policy: TrustPolicy = TrustPolicy(())
    proxy: CacheProxy | None = None  # when set, builds get a task token for it instead of a cache token


_context: AgentContext | None = None


def configure(context: AgentContext) -> None:
    global _context
    _context = context


def nx_env(base: dict[str, str], tier: str = TRUSTED, namespace: str = TRUSTED, tree: Path | None = None,
           ) -> dict[str, str]:
    """The environment of one task's Nx: the cache URL and token of its tier only (a branch
    task never sees the trusted token), Nx's own cache and workspace data inside the slot
    (wiped with it when the tier changes), and none of the agent's cluster material."""
    env = dict(base)
    # No Nx Cloud, no daemon per slot, plain logs; never NX_SKIP_NX_CACHE (outputs must reach the cache).
    env.update({"NX_NO_CLOUD": "true", "NX_DAEMON": "false", "NX_TUI": "false", "CI": "true",
                "FORCE_COLOR": "0"})
    for key in ("NX_SKIP_NX_CACHE", "NX_SKIP_REMOTE_CACHE", BRANCH_TOKEN_ENV):
        env.pop(key, None)
    for key in [key for key in env if key.startswith("NXFARM_TLS_")]:
        del env[key]  # the agent's cluster key is not the build's business
    if tier != TRUSTED:
        env[CACHE_TOKEN_ENV] = base.get(BRANCH_TOKEN_ENV, "")
        env[CACHE_URL_ENV] = base.get(CACHE_URL_ENV, "").rstrip("/") + f"/ns/{namespace}"
    if tree is not None:
        # Nx 24 keeps its local cache under ~/.nx/<workspace id>/ by default, shared by every
        # slot and tier of this user: a pull request could plant `[local cache]` hits there.
        env["NX_CACHE_DIRECTORY"] = str(tree / ".nx" / "cache")
        env["NX_WORKSPACE_DATA_DIRECTORY"] = str(tree / ".nx" / "workspace-data")
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


def _run_build(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run the build in a process group of its own; past TASK_TIMEOUT_S, the whole group is
    killed (Nx's workers and whatever the build started), not only its first process."""
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=TASK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return 124, f"{output}\nnxfarm: killed after {TASK_TIMEOUT_S} s"
    return process.returncode, output


def _run(context: AgentContext, request: TaskRequest) -> TaskResult:
    started = time.monotonic()
    slot = context.checkouts.acquire()
    phase = "checkout"
    tier = ""
    task_token: str | None = None
    try:
        refusal = context.policy.refusal(request.repo_url)
        if refusal:
            raise CheckoutError(refusal)
        context.checkouts.fetch(request.repo_url, request.commit)
        tier = context.checkouts.tier(context.policy, request.repo_url, request.commit)
        namespace = cache_namespace(tier, request.namespace)
        if tier != TRUSTED and not context.env.get(BRANCH_TOKEN_ENV):
            raise CheckoutError(f"commit {request.commit[:12]} is not on a protected branch and this agent has no "
                                f"branch-tier cache token ({BRANCH_TOKEN_ENV}): it builds trusted commits only")
        tree = context.checkouts.checkout(slot, request.repo_url, request.commit, f"{tier} {namespace}")
        workspace = tree / request.workspace_dir
        env = context.checkouts.env(slot, nx_env(context.env, tier, namespace, tree))
        if context.proxy is not None:
            # The build sees a task token for the agent's proxy, never the agent's own token.
            user = context.checkouts.user(slot)
            task_token = context.proxy.grant(Grant(env[CACHE_URL_ENV], env[CACHE_TOKEN_ENV],
                                                   user.uid if user is not None else None))
            env.update({CACHE_URL_ENV: context.proxy.url, CACHE_TOKEN_ENV: task_token})
        phase = "install"
        context.checkouts.install(slot, workspace, env)
        phase = "run"
        nx = workspace / "node_modules" / ".bin" / "nx"
        command = [str(nx) if nx.exists() else "nx", "run", request.task_id, "--outputStyle=static",
                   *request.nx_args]
        code, output = _run_build(as_user(command, context.checkouts.user(slot)), workspace, env)
        return TaskResult(request.task_id, context.name, code, time.monotonic() - started,
                          restored_from(request.task_id, output), _tail(output), phase, tier)
    except Exception as exc:  # noqa: BLE001 - CheckoutError, TimeoutExpired, OSError, and anything else
        return TaskResult(request.task_id, context.name, 1, time.monotonic() - started, None,
                          f"{phase} failed on {context.name}: {exc}", phase, tier)
    finally:
        if task_token is not None and context.proxy is not None:
            context.proxy.revoke(task_token)
        context.checkouts.release(slot)

