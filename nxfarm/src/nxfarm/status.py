"""`nxfarm status`: the farm as this machine sees it, one row per part, with the same settings
`nxfarm build` would use (the environment, else the local farm). Exit 0 when every part is up,
1 when one is down or nothing is configured."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

from . import client as farm_settings
from .build.report import table

EPILOG = """examples:
  nxfarm status           a table: cache, scheduler, each agent
  nxfarm status --json    the same for scripts
exit codes: 0 everything up, 1 something down or no farm configured"""


@dataclass
class Part:
    role: str  # cache | scheduler | agent
    name: str
    address: str
    up: bool
    detail: str
    facts: dict[str, Any] = field(default_factory=dict)


def cache_root(url: str) -> str:
    """The server's root from a client's cache URL (which may name a namespace: .../ns/<name>)."""
    parts = urllib.parse.urlsplit(url)
    path = re.sub(r"/ns/[^/]+/?$", "", parts.path).rstrip("/")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _counter(metrics: str, name: str) -> int:
    match = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", metrics, re.MULTILINE)
    return int(float(match[1])) if match else 0


def cache_part(url: str, health: dict[str, Any], metrics: str) -> Part:
    """Pure: the cache row from its /health JSON and /metrics text."""
    from dask.utils import format_bytes  # not at import: every nxfarm command loads this module

    hits, misses = _counter(metrics, "nxcache_hits_total"), _counter(metrics, "nxcache_misses_total")
    rate = f"hit rate {100 * hits // (hits + misses)}% ({hits}/{hits + misses} since start)" if hits + misses \
        else "no reads since start"
    problems = health.get("problems") or []
    detail = f"{health.get('entries', 0)} entries, {format_bytes(health.get('bytes', 0))}, {rate}"
    if problems:
        detail += "; degraded: " + "; ".join(problems)
    facts = {key: health.get(key) for key in ("status", "entries", "bytes", "uptime_s")}
    return Part("cache", "-", url, True, detail, {**facts, "hits": hits, "misses": misses})


def probe_cache(url: str, timeout: float) -> Part:
    root = cache_root(url)
    try:
        with urllib.request.urlopen(f"{root}/health", timeout=timeout) as response:
            health = json.loads(response.read())
        with urllib.request.urlopen(f"{root}/metrics", timeout=timeout) as response:
            metrics = response.read().decode(errors="replace")
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return Part("cache", "-", root, False, f"unreachable: {reason}")
    return cache_part(root, health, metrics)


def task_of(key: Any) -> str:
    """The Nx task in a dispatched key (`nxfarm-<build>-<project:target>`)."""
    text = str(key)
    return text.split("-", 2)[2] if text.startswith("nxfarm-") and text.count("-") >= 2 else text


def agent_parts(workers: dict[str, dict[str, Any]], processing: dict[str, list[Any]], now: float,
                expected: list[str]) -> list[Part]:
    """Pure: one row per connected agent, and a `down` row for each expected one that is not."""
    parts = []
    for address, info in sorted(workers.items(), key=lambda item: str(item[1].get("name", item[0]))):
        name, slots = str(info.get("name", address)), int(info.get("nthreads", 1))
        tasks = [task_of(key) for key in processing.get(address, [])]
        busy = min(len(tasks), slots)
        seen = max(0.0, now - float(info.get("last_seen", now)))
        running = ", ".join(tasks[:busy]) if tasks else "idle"
        waiting = f", {len(tasks) - busy} waiting" if len(tasks) > busy else ""
        parts.append(Part("agent", name, address, True,
                          f"{busy}/{slots} slots busy: {running}{waiting}; seen {seen:.1f}s ago",
                          {"slots": slots, "busy": busy, "running": tasks[:busy], "last_seen_s": round(seen, 1)}))
    connected = {part.name for part in parts}
    parts += [Part("agent", name, "-", False, "not connected to the scheduler") for name in expected
              if name not in connected]
    return parts


def probe_scheduler(address: str, env: dict[str, str], timeout: float, expected: list[str]) -> list[Part]:
    from .farm import security as tls
    from .farm.connect import SchedulerUnreachable, open_client

    try:
        files = tls.resolve(environ=env)
    except tls.TlsConfigError as exc:
        return [Part("scheduler", "-", address, False, f"configuration error: {exc}")]
    try:
        client = open_client(address, files, timeout)
    except SchedulerUnreachable as exc:
        return [Part("scheduler", "-", address, False, f"unreachable: {exc}"),
                *agent_parts({}, {}, time.time(), expected)]
    try:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        processing = client.processing()
    finally:
        client.close(timeout=2)
    agents = agent_parts(workers, processing, time.time(), expected)
    return [Part("scheduler", "-", address, True, f"{len(workers)} agent(s) connected"), *agents]


def collect(env: dict[str, str], timeout: float) -> list[Part]:
    parts = []
    cache_url = env.get(farm_settings.CACHE_URL_ENV)
    parts.append(probe_cache(cache_url, timeout) if cache_url else
                 Part("cache", "-", "-", False, f"not configured ({farm_settings.CACHE_URL_ENV})"))
    scheduler = env.get(farm_settings.SCHEDULER_ENV)
    expected: list[str] = []
    if env.get(farm_settings.FETCH_FROM_ENV) == "workspace":  # the local farm: it knows its agents
        from .localfarm.record import running_farm

        farm = running_farm(farm_settings.state_dir())
        expected = sorted(farm.slots) if farm else []
    parts += probe_scheduler(scheduler, env, timeout, expected) if scheduler else \
        [Part("scheduler", "-", "-", False, f"not configured ({farm_settings.SCHEDULER_ENV}, or nxfarm farm up)")]
    return parts


def render(parts: list[Part]) -> str:
    return table(["ROLE", "NAME", "ADDRESS", "STATE", "DETAIL"],
                 [[p.role, p.name, p.address, "up" if p.up else "DOWN", p.detail] for p in parts])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds for each probe (default 3)")


def run(args: argparse.Namespace) -> int:
    env, source = farm_settings.resolve()
    parts = collect(env, args.timeout)
    ok = all(part.up for part in parts)
    if args.json:
        print(json.dumps({"ok": ok, "settings_from": source, "parts": [asdict(p) for p in parts]}, indent=2))
    else:
        print(f"farm settings: {source}")
        print(render(parts))
    sys.stdout.flush()
    return 0 if ok else 1
