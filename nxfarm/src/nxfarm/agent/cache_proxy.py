"""The agent's cache tokens stay in the agent: builds reach the cache through this proxy.

Nx needs `NX_SELF_HOSTED_REMOTE_CACHE_SERVER` and a token in its environment, which the build
code it runs can read. So each task gets a fresh random *task token* and this proxy's address
(127.0.0.1) instead; the proxy swaps the task token for the agent's token of the task's tier
and namespace, and forwards to the cache. A task token is valid while its task runs, and, when
the task has a build user, only on connections from that user (the uid that owns the client
socket, from /proc/net/tcp): another slot's build cannot borrow a trusted task's token, and
what a build copies out is worthless once it ends.
"""

from __future__ import annotations

import http.client
import http.server
import secrets
import socket
import socketserver
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

CHUNK = 256 * 1024
# Request headers passed on to the cache; everything else (Authorization above all) is not.
FORWARDED = ("content-length", "content-type", "accept", "expect")


@dataclass(frozen=True)
class Grant:
    upstream: str           # the cache URL of the task's tier (with /ns/<name> for a branch task)
    token: str              # the agent's token for that tier
    uid: int | None         # the build user's uid, or None when builds run as the agent


def socket_owner(local_port: int, remote_port: int, table: Path = Path("/proc/net/tcp")) -> int | None:
    """The uid owning the 127.0.0.1 client socket of a connection to the proxy (our accepted
    socket's remote port is the client's local port), or None when not found."""
    try:
        lines = table.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == remote_port and int(remote.split(":")[1], 16) == local_port:
            return int(fields[7])
    return None


class CacheProxy:
    def __init__(self, bind: str = "127.0.0.1") -> None:
        self._grants: dict[str, Grant] = {}
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body go out as separate writes: without this, Nagle and the client's
                # delayed ACK hold a small answer back ~40 ms.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
                pass  # the cache server logs every request; tokens never reach a log here

            def do_GET(self) -> None:  # noqa: N802 - http.server's names
                proxy._forward(self)

            do_HEAD = do_PUT = do_GET  # noqa: N815

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self._server = Server((bind, 0), Handler)
        self.url = f"http://{bind}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="cache-proxy", daemon=True)
        self._thread.start()

    def grant(self, grant: Grant) -> str:
        """A new task token standing for `grant`, until `revoke`."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._grants[token] = grant
        return token

    def revoke(self, token: str) -> None:
        with self._lock:
            self._grants.pop(token, None)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _grant_for(self, handler: http.server.BaseHTTPRequestHandler) -> Grant | None:
        header = handler.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        with self._lock:
            grant = self._grants.get(token)
        if grant is None or not token:
            return None
        if grant.uid is not None:
            client_port = handler.client_address[1]
            if socket_owner(self._server.server_address[1], client_port) != grant.uid:
                return None
        return grant

    def _forward(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        grant = self._grant_for(handler)
        if grant is None:
            handler.close_connection = True  # its body, if any, is not read
            _answer(handler, 401, b"not a token of a task running here\n")
            return
        upstream = urllib.parse.urlsplit(grant.upstream)
        path = upstream.path.rstrip("/") + "/" + handler.path.lstrip("/")
        headers = {name: value for name, value in handler.headers.items() if name.lower() in FORWARDED}
        headers["Authorization"] = f"Bearer {grant.token}"
        headers.pop("Expect", None)
        length = int(handler.headers.get("Content-Length") or 0)
        connection = http.client.HTTPConnection(upstream.hostname or "127.0.0.1", upstream.port or 80, timeout=300)
        answered = False
        try:
            connection.connect()
            connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection.putrequest(handler.command, path, skip_accept_encoding=True)
            for name, value in headers.items():
                connection.putheader(name, value)
            connection.endheaders()
            remaining = length
            while remaining > 0:
                chunk = handler.rfile.read(min(CHUNK, remaining))
                if not chunk:
                    raise ConnectionError("the build's upload ended early")
                connection.send(chunk)
                remaining -= len(chunk)
            response = connection.getresponse()
            answered = True
            handler.send_response(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() in ("content-length", "content-type", "retry-after"):
                    handler.send_header(name, value)
            handler.end_headers()
            if handler.command != "HEAD":
                while chunk := response.read(CHUNK):
                    handler.wfile.write(chunk)
        except (OSError, http.client.HTTPException) as exc:
            handler.close_connection = True
            if not answered:  # after the status line, only hanging up tells Nx the answer is cut
                _answer(handler, 502, f"cache unreachable from the agent: {type(exc).__name__}\n".encode())
        finally:
            connection.close()


def _answer(handler: http.server.BaseHTTPRequestHandler, status: int, body: bytes) -> None:
    try:
        handler.send_response(status)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
    except OSError:
        pass
