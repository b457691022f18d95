"""`nxfarm agent run`: this machine's task slots as a Dask worker on the farm's scheduler.

No nanny: systemd restarts the process (dte.md 3.1, a frozen nanny delays failover by 30 s).
Every listener, the worker's HTTP endpoint included, binds to the given address only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

from ..farm import security as tls
from ..farm import unpickle
from ..farm.roles import WORKER_POLICY, guard
from .checkout import Checkouts
from .cache_proxy import CacheProxy
from .sandbox import SandboxError, build_user_name, lookup
from .task import AgentContext, configure
from .trust import ALLOWED_ENV, PROTECTED_ENV, TrustPolicy


EPILOG = """examples (what nx-farm-agent.service runs, inside `sops exec-env` of its env file):
  nxfarm agent run --bind 100.101.0.11 --port 8789 --slots 8 --workspace /var/lib/nx-farm/workspace
  nxfarm agent run --bind 127.0.0.1 --slots 2 --workspace ./agent-work --scheduler tls://127.0.0.1:8786 \\
    --allow-repo 'https://git.example/team/*' --protected-branch main \\
    --tls-ca ca.crt --tls-cert agent.crt --tls-key agent.key
exit codes: 0 stopped by a signal, 1 lost the scheduler (systemd restarts it), 2 bad flags, TLS material
  or build users"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scheduler", default=os.environ.get("NXFARM_SCHEDULER"),
                        help="tls://host:port of the farm's scheduler (default: $NXFARM_SCHEDULER)")
    parser.add_argument("--bind", required=True, help="this agent's address (its tailnet IP); never all interfaces")
    parser.add_argument("--port", type=int, default=0, help="worker port (default: any free port)")
    parser.add_argument("--slots", type=int, default=2, help="tasks run at once, each in its own checkout")
    parser.add_argument("--workspace", required=True, type=Path, help="directory for the mirror and slot checkouts")
    parser.add_argument("--name", default=os.environ.get("NXFARM_AGENT_NAME") or socket.gethostname(),
                        help="agent name shown in builds (default: $NXFARM_AGENT_NAME or the host name)")
    parser.add_argument("--sandbox", action="store_true",
                        help="run each slot's commands as its build user nxbuild<slot> (what deployed agents do; "
                             "needs CAP_SETUID and CAP_SETGID, see nx-farm-agent.service)")
    parser.add_argument("--allow-repo", action="append", metavar="URL",
                        help=f"a repository URL (fnmatch pattern) tasks may fetch from; repeatable "
                             f"(default: ${ALLOWED_ENV}, space-separated)")
    parser.add_argument("--protected-branch", action="append", metavar="BRANCH",
                        help=f"a branch (fnmatch pattern) whose commits are trusted; repeatable (default: "
                             f"${PROTECTED_ENV}, else the repository's default branch)")
    tls.add_arguments(parser)


def check(args: argparse.Namespace) -> str | None:
    if not args.scheduler:
        return "agent run: no scheduler: pass --scheduler tls://HOST:PORT or set NXFARM_SCHEDULER"
    if not args.scheduler.startswith("tls://"):
        return f"agent run: --scheduler {args.scheduler!r} must be tls://HOST:PORT (the cluster is mutual TLS only)"
    if args.bind in ("0.0.0.0", "::", ""):
        return f"agent run: --bind {args.bind!r}: bind to this agent's own address, not all interfaces"
    if not 1 <= args.slots <= 256:
        return f"agent run: --slots {args.slots}: must be 1..256"
    if not os.environ.get("NX_SELF_HOSTED_REMOTE_CACHE_SERVER"):
        return "agent run: NX_SELF_HOSTED_REMOTE_CACHE_SERVER is not set: tasks would not share outputs"
    if not TrustPolicy.from_env(os.environ, args.allow_repo, args.protected_branch).repositories:
        return (f"agent run: no repository allowed: pass --allow-repo URL or set {ALLOWED_ENV} "
                "(the stack's trust.repositories); agents fetch from nothing else")
    return None


async def _serve(args: argparse.Namespace, files: tls.TlsFiles) -> int:
    from distributed import Worker

    worker = Worker(
        args.scheduler, name=args.name, nthreads=args.slots, host=args.bind, port=args.port, protocol="tls",
        security=tls.security(files, "worker"), dashboard=False, dashboard_address=f"{args.bind}:0",
        memory_limit=0,  # the work happens in Nx subprocesses; Dask's memory manager would only pause us
        resources={"slots": args.slots},
    )
    guard(worker, WORKER_POLICY)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    stopped = asyncio.ensure_future(stop.wait())
    # A stop asked for while the worker still connects (the scheduler down) is honoured at once.
    started = asyncio.ensure_future(worker.start())
    await asyncio.wait({started, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        started.cancel()
        await worker.close(reason="signal")
        return 0
    started.result()
    print(f"nxfarm agent {args.name}: {args.slots} slot(s) at {worker.address}, scheduler {args.scheduler}",
          flush=True)
    finished = asyncio.ensure_future(worker.finished())
    await asyncio.wait({finished, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        await worker.close(reason="signal")
        return 0
    # The worker closed by itself (it lost the scheduler): exit non-zero so systemd restarts it.
    print(f"nxfarm agent {args.name}: the worker closed ({worker.status}); exiting for a restart", file=sys.stderr,
          flush=True)
    return 1


def run(args: argparse.Namespace) -> int:
    problem = check(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    files = tls.from_args(args, "agent run")
    if files is None:
        return 2
    args.workspace.mkdir(parents=True, exist_ok=True)
    unpickle.install()
    policy = TrustPolicy.from_env(os.environ, args.allow_repo, args.protected_branch)
    try:
        users = lookup([build_user_name(slot) for slot in range(args.slots)]) if args.sandbox else None
    except SandboxError as exc:
        print(f"agent run: {exc}", file=sys.stderr)
        return 2
    proxy = CacheProxy()  # 127.0.0.1: builds reach the cache through it, with task tokens
    configure(AgentContext(args.name, Checkouts(args.workspace, args.slots, users), dict(os.environ), policy, proxy))
    return asyncio.run(_serve(args, files))
