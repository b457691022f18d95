"""Everything `nxfarm build` started stops when it is interrupted.

Nx starts its plugin workers detached (their own session: `isolated-plugin.js` spawns them with
`detached: true`), so a Ctrl-C sent to the terminal's process group misses them, and once their
Nx exits they belong to init and linger until they notice (10-30 s). As a child subreaper,
this process inherits such orphans instead, and can stop every descendant it has.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import signal

import psutil

_PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
# An Nx daemon outlives builds on purpose; one this build happened to start is left alone.
_KEEP = ("nx/src/daemon/server/",)


def adopt_orphans() -> bool:
    """Become a subreaper (Linux 3.4+); False where that is not possible, which only means
    detached grandchildren cannot be found after their parent exits."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _kept(process: psutil.Process) -> bool:
    try:
        return any(marker in part for part in process.cmdline() for marker in _KEEP)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return True


def stop_descendants(grace: float = 3.0) -> int:
    """SIGTERM every descendant of this process (but an Nx daemon), SIGKILL what is left after
    `grace` seconds; returns how many there were."""
    found = [p for p in psutil.Process().children(recursive=True) if not _kept(p)]
    for process in found:
        try:
            process.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(found, timeout=grace)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)
    return len(found)
