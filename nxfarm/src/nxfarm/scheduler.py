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

from .farm import security as tls
from .farm import unpickle
from .farm.roles import SCHEDULER_POLICY, guard


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
    tls.add_arguments(parser)


async def _serve(args: argparse.Namespace, files: tls.TlsFiles) -> None:
    from distributed import Scheduler

    scheduler = Scheduler(host=args.bind, port=args.port, protocol="tls", security=tls.security(files, "scheduler"),
                          dashboard_address=f"{args.dashboard_bind}:{args.dashboard_port}", worker_ttl=args.worker_ttl)
    guard(scheduler, SCHEDULER_POLICY)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: asyncio.ensure_future(scheduler.close()))
    await scheduler
    print(f"nxfarm scheduler at {scheduler.address}, dashboard http://{args.dashboard_bind}:"
          f"{scheduler.http_server.port}/status", flush=True)
    await scheduler.finished()


def run(args: argparse.Namespace) -> int:
    if args.bind in ("0.0.0.0", "::", ""):
        print(f"scheduler run: --bind {args.bind!r}: bind to the cache host's own address, not all interfaces",
              file=sys.stderr)
        return 2
    files = tls.from_args(args, "scheduler run")
    if files is None:
        return 2
    unpickle.install()
    asyncio.run(_serve(args, files))
    return 0
