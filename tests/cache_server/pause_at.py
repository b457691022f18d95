"""Runs the cache server, stopping its own process (SIGSTOP) at one start-up phase.

    python pause_at.py PHASE -- cache server arguments...

The test then sends SIGTERM and SIGCONT (tests/cache_server/test_startup_signals.py), so the stop
lands exactly in that phase, every run. Nothing in the server is changed for this: the phase
is marked by wrapping a function the server calls there.

Phases, in start-up order, of a server with `--workers N`:
    storage-open     the supervisor opened the storage, before binding
    first-fork       the supervisor has forked one worker, not the others yet
    all-forked       the supervisor has forked every worker
    worker-start     a worker, before its event loop starts
    worker-loop      a worker whose loop runs, before it listens for stops
"""

from __future__ import annotations

import os
import signal
import sys

from cache_server import cli, workers
from cache_server.http import server


def pause() -> None:
    os.kill(os.getpid(), signal.SIGSTOP)


def wrap_after(owner: object, name: str, when=lambda: True) -> None:
    real = getattr(owner, name)

    def wrapped(*args, **kwargs):
        result = real(*args, **kwargs)
        if when():
            pause()
        return result

    setattr(owner, name, wrapped)


def wrap_before(owner: object, name: str) -> None:
    real = getattr(owner, name)

    def wrapped(*args, **kwargs):
        pause()
        return real(*args, **kwargs)

    setattr(owner, name, wrapped)


def install(phase: str) -> None:
    if phase == "storage-open":
        wrap_before(workers, "bind_all")
    elif phase in ("first-fork", "all-forked"):
        real_fork = os.fork
        forked = [0]
        expected = 1 if phase == "first-fork" else int(sys.argv[sys.argv.index("--workers") + 1])

        def fork() -> int:
            pid = real_fork()
            if pid:
                forked[0] += 1
                if forked[0] == expected:
                    pause()
            return pid

        os.fork = fork
    elif phase == "worker-start":
        wrap_before(workers, "run")
    elif phase == "worker-loop":
        # The handler is made once the loop runs, just before serve() listens for stops.
        wrap_after(server, "CacheHandler")
    else:
        raise SystemExit(f"pause_at: unknown phase {phase!r}")


if __name__ == "__main__":
    phase, separator, *rest = sys.argv[1:]
    assert separator == "--"
    install(phase)
    sys.exit(cli.main(rest))
