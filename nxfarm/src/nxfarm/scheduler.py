"""`nxfarm scheduler run`: the farm's Dask scheduler, mutual TLS only, bound to one address.

The dashboard has no authentication (dte.md 3.1), so it listens on 127.0.0.1 by default:
operators reach it through SSH (`ssh -L 8787:127.0.0.1:8787 <cache host>`), nobody else at all.
A short worker TTL makes a silently vanished agent (host off, tailnet down) count as lost
within seconds instead of Dask's default five minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from concurrent.futures import Executor, ThreadPoolExecutor

from pathlib import Path

from .farm import security as tls
from .farm import unpickle
from .farm.roles import HISTORY_OP, REPORT_RUN_OP, SCHEDULER_POLICY, guard, peer_identity
from .runs.report import RunReport
from .runs.store import RunStore, StoreError

MAX_REPORT_BYTES = 8 << 20
MAX_HISTORY_TASKS = 20_000


EPILOG = """example (what nx-farm-scheduler.service runs, TLS material from its env file):
  nxfarm scheduler run --bind 100.101.0.10 --port 8786 --dashboard-port 8787 --worker-ttl 30s
exit codes: 0 stopped by a signal, 2 bad flags or TLS material"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bind", required=True, help="address to listen on (the cache host's tailnet IP)")
    parser.add_argument("--port", type=int, default=8786, help="scheduler port (default 8786)")
    parser.add_argument("--dashboard-port", type=int, default=8787, help="dashboard port (default 8787)")
    parser.add_argument("--dashboard-bind", default="127.0.0.1",
                        help="dashboard address (default 127.0.0.1: it has no authentication)")
    parser.add_argument("--worker-ttl", default="30s", help="drop an agent silent this long (default 30s)")
    parser.add_argument("--runs-db", type=Path, default=None,
                        help="SQLite file that keeps every build's report (orchestrators send them after each "
                             "build); none: reports are refused")
    parser.add_argument("--pages-bind", default=None,
                        help="address for the run pages (read-only HTML of the run store; the cache host's "
                             "tailnet IP): none, no pages")
    parser.add_argument("--pages-port", type=int, default=8790, help="run pages port (default 8790; 0: any free)")
    tls.add_arguments(parser)


def report_handler(store: RunStore | None, io: Executor):  # noqa: ANN201 - a Dask handler
    """The scheduler's `nxfarm_report_run`: a report (JSON text) from an orchestrator's build,
    stored under the member its certificate names. Answers `{"status": "OK", "stored": bool}`
    (False for a resend) or `{"status": "refused", "why": ...}`; never raises to the sender."""
    async def report_run(comm=None, report: str = "") -> dict:  # noqa: ANN001 - a distributed Comm
        if store is None:
            return {"status": "refused", "why": "this scheduler keeps no run store (--runs-db)"}
        if not isinstance(report, str) or len(report) > MAX_REPORT_BYTES:
            return {"status": "refused", "why": f"a report is JSON text of at most {MAX_REPORT_BYTES} bytes"}
        _, member = peer_identity(comm.extra_info.get("peercert") if comm is not None else None)
        try:
            parsed = RunReport.from_json(report)
        except ValueError as exc:
            return {"status": "refused", "why": str(exc)[:300]}
        stored = await asyncio.get_running_loop().run_in_executor(io, store.add, parsed, member)
        return {"status": "OK", "stored": stored}

    return report_run


def history_handler(store: RunStore | None, io: Executor):  # noqa: ANN201 - a Dask handler
    """The scheduler's `nxfarm_history`: for a build's task ids, what the run store knows
    (RunStore.history); empty without a store. Never raises to the sender."""
    async def history(comm=None, tasks: list | tuple | None = None) -> dict:  # noqa: ANN001 - a distributed Comm
        # Dask's msgpack hands lists over as tuples.
        if store is None or not isinstance(tasks, (list, tuple)) or len(tasks) > MAX_HISTORY_TASKS \
                or not all(isinstance(task, str) and len(task) < 500 for task in tasks):
            return {"status": "OK", "durations": {}, "target_medians": {}, "recent_agents": {}}
        found = await asyncio.get_running_loop().run_in_executor(io, store.history, list(tasks))
        return {"status": "OK", **found}

    return history


async def _serve(args: argparse.Namespace, files: tls.TlsFiles, store: RunStore | None) -> None:
    from distributed import Scheduler

    scheduler = Scheduler(host=args.bind, port=args.port, protocol="tls", security=tls.security(files, "scheduler"),
                          dashboard_address=f"{args.dashboard_bind}:{args.dashboard_port}", worker_ttl=args.worker_ttl)
    # One thread for the run store, off the scheduler's loop: its SQLite connection serves one
    # caller at a time anyway (RunStore's lock), so more threads would only wait on each other.
    io = ThreadPoolExecutor(1, thread_name_prefix="nxfarm-runs")
    scheduler.handlers[REPORT_RUN_OP] = report_handler(store, io)
    scheduler.handlers[HISTORY_OP] = history_handler(store, io)
    guard(scheduler, SCHEDULER_POLICY)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: asyncio.ensure_future(scheduler.close()))
    await scheduler
    pages = ""
    if store is not None and args.pages_bind:
        from .runs import web

        _, port = web.serve(store, io, args.pages_bind, args.pages_port)
        shown = f"[{args.pages_bind}]" if ":" in args.pages_bind else args.pages_bind
        pages = f", run pages http://{shown}:{port}/"
    print(f"nxfarm scheduler at {scheduler.address}, dashboard http://{args.dashboard_bind}:"
          f"{scheduler.http_server.port}/status{pages}", flush=True)
    await scheduler.finished()


def run(args: argparse.Namespace) -> int:
    for flag, value in (("--bind", args.bind), ("--pages-bind", args.pages_bind)):
        if value in ("0.0.0.0", "::", ""):
            print(f"scheduler run: {flag} {value!r}: bind to the cache host's own address, not all interfaces",
                  file=sys.stderr)
            return 2
    if args.pages_bind and not args.runs_db:
        print("scheduler run: --pages-bind needs --runs-db (the pages show the run store)", file=sys.stderr)
        return 2
    files = tls.from_args(args, "scheduler run")
    if files is None:
        return 2
    try:
        store = RunStore(args.runs_db) if args.runs_db else None
    except (StoreError, OSError) as exc:
        print(f"scheduler run: --runs-db: {exc}", file=sys.stderr)
        return 2
    unpickle.install()
    try:
        asyncio.run(_serve(args, files, store))
    finally:
        if store is not None:
            store.close()
    return 0
