"""Server settings: command-line flags with environment fallbacks, validated up front.

Standalone on purpose: the cache server never imports `nxfarm`.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
from dataclasses import dataclass
from fractions import Fraction

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)", re.IGNORECASE)
_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024, "kb": 1000,
    "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gib": 1024**3, "gb": 1000**3,
    "t": 1024**4, "tib": 1024**4, "tb": 1000**4,
}  # fmt: skip
_MAX_SIZE = 1 << 60  # an exbibyte: anything larger is a typo


class ConfigError(Exception):
    """A bad flag or value; the message names it and says what would work."""


def parse_size(text: str, flag: str) -> int:
    match = _SIZE.fullmatch(text.strip())
    unit = match and match[2].lower()
    if not match or unit not in _UNITS:
        raise ConfigError(f"{flag}: {text!r} is not a size (examples: 50GiB, 512MiB, 1000000)")
    size = int(Fraction(match[1]) * _UNITS[unit])  # exact: a float would overflow on a long number
    if size > _MAX_SIZE:
        raise ConfigError(f"{flag}: {text[:40]!r} is larger than 1 EiB")
    return size


def parse_bind(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT`; the host must be an IP address, so nothing binds by surprise."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"--bind: {text!r} is not HOST:PORT (example: 127.0.0.1:3333, [::1]:3333)")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"--bind: {host!r} is not an IP address (example: 127.0.0.1:3333, 100.64.0.1:3333)") from None
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"--bind: port {port_text!r} must be 0-65535")
    return host, int(port_text)


MAX_WORKERS = 64
EVENT_LOOPS = ("uvloop", "asyncio")


def auto_workers() -> int:
    """One per core this process may run on, at most 8: past that the disk decides."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def parse_workers(text: str) -> int:
    text = str(text).strip()
    if text == "auto":
        return auto_workers()
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise ConfigError(f"--workers: {text!r} must be a number from 1 to {MAX_WORKERS}, or 'auto'")
    return int(text)


def auto_max_connections() -> int:
    """What this process's file descriptors allow: a connection may hold three at once (its socket,
    an upload's file, a download's file), with room for the rest of the server."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, min(10_000, (soft - 64) // 3))


def parse_max_connections(text: str) -> int:
    if text == "auto":
        return auto_max_connections()
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise ConfigError(f"--max-connections must be a number of connections or 'auto', not {text!r}")


def parse_event_loop(text: str) -> str:
    if text not in EVENT_LOOPS:
        raise ConfigError(f"--event-loop: {text!r} must be one of: {', '.join(EVENT_LOOPS)}")
    return text


def state_home() -> str:
    return os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")


def config_home() -> str:
    return os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")


def default_storage() -> str:
    return os.path.join(state_home(), "nx-farm", "cache")


def default_tokens() -> str:
    return os.path.join(config_home(), "nx-farm", "cache-tokens")


@dataclass(frozen=True)
class Settings:
    binds: list[tuple[str, int]]
    storage: str
    tokens: str
    tokens_explicit: bool
    max_size: int
    max_artifact_size: int
    min_free_disk: int | None
    fsync: bool
    memory_cache: int
    url_prefix: str
    body_timeout: float
    idle_timeout: float
    drain_timeout: float
    scrub_interval: float
    scrub_rate: int
    access_log: str
    workers: int = 1
    event_loop: str = "uvloop"
    max_connections: int = 10_000
    max_connections_per_address: int = 512
    first_byte_timeout: float = 10.0
    max_entries: int = 0
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    s3_timeout: float = 5.0
    local_tier: str = ""
    local_tier_size: int = 0
    bucket_check_interval: float = 60.0

    @property
    def on_s3(self) -> bool:
        return self.storage.startswith("s3://")

    @staticmethod
    def register_arguments(parser: argparse.ArgumentParser) -> None:
        env = os.environ.get
        add = parser.add_argument
        add("--bind", action="append", metavar="HOST:PORT",
            help="address to listen on; repeat for several (env NXFARM_CACHE_BIND, default 127.0.0.1:3333)")
        add("--storage", default=env("NXFARM_CACHE_STORAGE") or default_storage(), metavar="DIR|s3://BUCKET/PREFIX",
            help="cache directory, or an S3 bucket and key prefix (credentials from AWS_ACCESS_KEY_ID and "
                 "AWS_SECRET_ACCESS_KEY, or the file AWS_SHARED_CREDENTIALS_FILE names) (env NXFARM_CACHE_STORAGE, "
                 "default %(default)s)")
        add("--s3-endpoint", default=env("NXFARM_CACHE_S3_ENDPOINT"), metavar="URL",
            help="the S3-compatible store's URL, e.g. http://nas:9000 (path-style requests; default: AWS)")
        add("--s3-region", default=env("NXFARM_CACHE_S3_REGION", "us-east-1"), metavar="REGION",
            help="region the requests are signed for (default %(default)s)")
        add("--s3-timeout", type=float, default=5.0, metavar="SECONDS",
            help="give up on the store after this long without an answer: GET is a miss, PUT a 403 "
                 "(default %(default)s)")
        add("--local-tier", default=env("NXFARM_CACHE_LOCAL_TIER") or default_storage() + "-tier", metavar="DIR",
            help="with s3:// storage: local directory every body passes through, and where recent ones are "
                 "kept and served from (default %(default)s)")
        add("--bucket-check-interval", type=float, default=60.0, metavar="SECONDS",
            help="with s3:// storage: how often this frontend publishes what it used and enforces --max-size "
                 "on the bucket (default %(default)s)")
        add("--local-tier-size", default=env("NXFARM_CACHE_LOCAL_TIER_SIZE", "10GiB"), metavar="SIZE",
            help="with s3:// storage: how much the local tier keeps (LRU); 0 keeps nothing (default %(default)s)")
        add("--tokens", default=env("NXFARM_CACHE_TOKENS"), metavar="FILE",
            help="tokens file, lines '<name> <read|readwrite> sha256:<hex>' (env NXFARM_CACHE_TOKENS; "
                 f"default {default_tokens()}, created with one generated token if missing)")
        add("--max-size", default=env("NXFARM_CACHE_MAX_SIZE", "50GiB"), metavar="SIZE",
            help="total size cap; least recently used entries are evicted (default %(default)s)")
        add("--max-artifact-size", default=env("NXFARM_CACHE_MAX_ARTIFACT_SIZE", "2GiB"), metavar="SIZE",
            help="largest accepted upload; bigger ones get 413 (default %(default)s)")
        add("--max-entries", type=int, default=env("NXFARM_CACHE_MAX_ENTRIES", "0"), metavar="N",
            help="most entries kept; least recently used ones are evicted. Entries also use inodes: besides "
                 "this cap, 1%% of the filesystem's inodes (at most 10000) are kept free. 0 = no cap "
                 "(env NXFARM_CACHE_MAX_ENTRIES, default %(default)s)")
        add("--min-free-disk", default=env("NXFARM_CACHE_MIN_FREE_DISK"), metavar="SIZE",
            help="free space to leave on the filesystem (default: 5%% of it, at most 2GiB)")
        add("--no-fsync", action="store_true", default=env("NXFARM_CACHE_NO_FSYNC") == "1",
            help="do not fsync uploads before publishing (faster; a power loss may lose recent entries, "
                 "which are then detected and served as misses)")
        add("--memory-cache", default=env("NXFARM_CACHE_MEMORY_CACHE", "64MiB"), metavar="SIZE",
            help="keep bodies of small entries (up to 64KiB each) in memory, up to SIZE in all; 0 disables "
                 "(default %(default)s)")
        add("--url-prefix", default=env("NXFARM_CACHE_URL_PREFIX", ""), metavar="PATH",
            help="serve /PATH/v1/cache/... (for a server URL with a path; default none)")
        add("--body-timeout", type=float, default=30.0, metavar="SECONDS",
            help="abort an upload when no body bytes arrive for this long (default %(default)s)")
        add("--idle-timeout", type=float, default=75.0, metavar="SECONDS",
            help="close a keep-alive connection idle this long (default %(default)s)")
        add("--first-byte-timeout", type=float, default=10.0, metavar="SECONDS",
            help="close a new connection that sends nothing for this long (default %(default)s)")
        add("--max-connections", default=env("NXFARM_CACHE_MAX_CONNECTIONS", "auto"), metavar="N",
            help="open connections per server process; at the cap the longest-idle one is closed for a "
                 "new one, or the new one gets 503 when none is idle. 'auto' = what the file descriptor "
                 f"limit allows, at most 10000 ({auto_max_connections()} here) (default %(default)s)")
        add("--max-connections-per-address", type=int, default=512, metavar="N",
            help="open connections per client address and server process, enforced the same way "
                 "(default %(default)s)")
        add("--drain-timeout", type=float, default=30.0, metavar="SECONDS",
            help="on SIGTERM, wait this long for requests in flight (default %(default)s)")
        add("--scrub-interval", type=float, default=86400.0, metavar="SECONDS",
            help="re-verify every entry's checksum this often; 0 disables (default %(default)s)")
        add("--scrub-rate", default="64MiB", metavar="SIZE",
            help="read rate of the background scrub per second (default %(default)s)")
        add("--access-log", default=env("NXFARM_CACHE_ACCESS_LOG", "-"), metavar="FILE",
            help="JSON-lines access log: '-' for stdout, 'off' to disable (default %(default)s)")
        add("--workers", default=env("NXFARM_CACHE_WORKERS", "1"), metavar="N",
            help="server processes sharing the address and the storage: one event loop uses one core, "
                 f"so N up to the core count serves more small requests per second; 'auto' = {auto_workers()} "
                 "on this machine (env NXFARM_CACHE_WORKERS, default %(default)s)")
        add("--event-loop", default=env("NXFARM_CACHE_EVENT_LOOP", "uvloop"), metavar="LOOP",
            help="uvloop (libuv, less CPU per request) or asyncio (the standard library's loop, to rule "
                 "uvloop out when chasing a problem) (env NXFARM_CACHE_EVENT_LOOP, default %(default)s)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        bind_texts = args.bind or (os.environ.get("NXFARM_CACHE_BIND") or "127.0.0.1:3333").split(",")
        binds = [parse_bind(text.strip()) for text in bind_texts]
        max_size = parse_size(args.max_size, "--max-size")
        max_artifact = parse_size(args.max_artifact_size, "--max-artifact-size")
        if max_artifact > max_size:
            raise ConfigError(f"--max-artifact-size ({args.max_artifact_size}) is larger than --max-size ({args.max_size})")
        # float() takes "nan" and "inf"; a NaN timeout never fires, so both are refused here.
        for flag in ("body_timeout", "idle_timeout", "drain_timeout", "first_byte_timeout"):
            seconds = getattr(args, flag)
            if not (math.isfinite(seconds) and seconds > 0):
                raise ConfigError(f"--{flag.replace('_', '-')} must be a positive number of seconds")
        if not (math.isfinite(args.scrub_interval) and args.scrub_interval >= 0):
            raise ConfigError("--scrub-interval must be 0 (off) or a positive number of seconds")
        if args.max_entries < 0:
            raise ConfigError("--max-entries must be 0 (no cap) or a positive number")
        if args.max_connections_per_address < 1:
            raise ConfigError("--max-connections-per-address must be at least 1")
        if args.storage.startswith("s3://"):
            from .storage.objectstore import S3Location

            try:
                S3Location.parse(args.storage)
            except ValueError as exc:
                raise ConfigError(f"--storage: {exc}") from None
            for flag in ("s3_timeout", "bucket_check_interval"):
                if not (math.isfinite(getattr(args, flag)) and getattr(args, flag) > 0):
                    raise ConfigError(f"--{flag.replace('_', '-')} must be a positive number of seconds")
            if args.s3_endpoint and not re.fullmatch(r"https?://[^\s/]+/?", args.s3_endpoint):
                raise ConfigError(f"--s3-endpoint: {args.s3_endpoint!r} must be http(s)://host[:port]")
        prefix = args.url_prefix.strip("/")
        if prefix and not re.fullmatch(r"[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*", prefix):
            raise ConfigError(f"--url-prefix: {args.url_prefix!r} may contain letters, digits, . _ ~ - and /")
        return cls(
            binds=binds,
            storage=(args.storage if args.storage.startswith("s3://")
                     else os.path.abspath(os.path.expanduser(args.storage))),
            tokens=os.path.abspath(os.path.expanduser(args.tokens or default_tokens())),
            tokens_explicit=args.tokens is not None,
            max_size=max_size,
            max_artifact_size=max_artifact,
            min_free_disk=parse_size(args.min_free_disk, "--min-free-disk") if args.min_free_disk else None,
            fsync=not args.no_fsync,
            memory_cache=parse_size(args.memory_cache, "--memory-cache"),
            url_prefix=prefix,
            body_timeout=args.body_timeout,
            idle_timeout=args.idle_timeout,
            drain_timeout=args.drain_timeout,
            scrub_interval=args.scrub_interval,
            scrub_rate=parse_size(args.scrub_rate, "--scrub-rate"),
            access_log=args.access_log,
            workers=parse_workers(args.workers),
            event_loop=parse_event_loop(args.event_loop),
            max_connections=parse_max_connections(args.max_connections),
            max_connections_per_address=args.max_connections_per_address,
            first_byte_timeout=args.first_byte_timeout,
            max_entries=args.max_entries,
            s3_endpoint=args.s3_endpoint,
            s3_region=args.s3_region,
            s3_timeout=args.s3_timeout,
            local_tier=os.path.abspath(os.path.expanduser(args.local_tier)),
            local_tier_size=parse_size(args.local_tier_size, "--local-tier-size"),
            bucket_check_interval=args.bucket_check_interval,
        )
