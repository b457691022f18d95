"""Where a build runs, given what the probes found. The farm being down must never fail a build
that would pass locally, so every degraded case has a local answer and a one-line reason."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ..probe.cache import CacheProbe


class Mode(str, Enum):
    DISTRIBUTED = "distributed"
    LOCAL = "local"  # on this machine, with the remote cache
    LOCAL_NO_REMOTE_CACHE = "local-no-remote-cache"  # Nx would fail the whole run on this cache


@dataclass(frozen=True)
class Plan:
    mode: Mode
    reason: str


NO_SCHEDULER = "no scheduler configured (NXFARM_SCHEDULER, or `nxfarm farm up` for a farm on this machine)"


def choose_mode(*, cache: CacheProbe, scheduler_error: str | None, workers: int, local_requested: bool,
                scheduler_configured: bool = True) -> Plan:
    if not cache.usable:
        return Plan(Mode.LOCAL_NO_REMOTE_CACHE, f"fallback: building locally without the remote cache: {cache.reason}")
    if local_requested:
        return Plan(Mode.LOCAL, "building locally as asked, with the remote cache")
    if not scheduler_configured:
        return Plan(Mode.LOCAL, f"building locally with the remote cache: {NO_SCHEDULER}")
    if scheduler_error is not None:
        return Plan(Mode.LOCAL, f"fallback: building locally with the remote cache: scheduler unreachable: "
                                f"{scheduler_error}")
    if workers == 0:
        return Plan(Mode.LOCAL, "fallback: building locally with the remote cache: the scheduler has no workers")
    return Plan(Mode.DISTRIBUTED, f"distributing over {workers} worker(s)")
