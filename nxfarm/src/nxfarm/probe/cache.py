"""Is the remote cache safe to hand to Nx? Nx 24 has no HTTP timeouts and fails the whole run on
any GET answer but 200/404 (research/nx-cache.md), so the orchestrator asks first, briefly."""

from __future__ import annotations

import http.client
import socket
import urllib.parse
from dataclasses import dataclass

PROBE_KEY = "0"  # a valid cache key no Nx task hash ever takes


@dataclass(frozen=True)
class CacheProbe:
    usable: bool
    reason: str
    status: int | None = None  # the HTTP status, when the server answered at all


def probe_cache(url: str, token: str | None, timeout: float = 2.0) -> CacheProbe:
    """GET one key exactly as Nx would (`<url>/v1/cache/<hash>`, bearer token); 200/404 is usable."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return CacheProbe(False, f"cache URL {url!r} is not http(s)://host[:port][/path]")
    connection_class = http.client.HTTPSConnection if parsed.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parsed.hostname, parsed.port, timeout=timeout)
    headers = {"Accept": "application/octet-stream"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        connection.request("GET", f"{parsed.path}/v1/cache/{PROBE_KEY}", headers=headers)
        response = connection.getresponse()
        response.read()
    except (socket.timeout, TimeoutError):
        return CacheProbe(False, f"cache server {url} did not answer within {timeout:g}s")
    except OSError as exc:
        return CacheProbe(False, f"cache server {url} unreachable: {exc.strerror or exc}")
    except http.client.HTTPException as exc:
        return CacheProbe(False, f"cache server {url} answered garbage: {type(exc).__name__}")
    finally:
        connection.close()
    if response.status in (200, 404):
        return CacheProbe(True, f"cache server {url} answers", response.status)
    if response.status == 401:
        return CacheProbe(False, f"cache server {url} rejects the token (401): check "
                                 "NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN", 401)
    return CacheProbe(False, f"cache server {url} answered {response.status}, which fails an Nx run", response.status)
