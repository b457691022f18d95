"""A real cache server process on 127.0.0.1 with a random port, for HTTP-level tests."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from cache_server.auth import Scope, token_line

WRITE_TOKEN = "writer-token-9f2c"
READ_TOKEN = "reader-token-41aa"


class CacheServer:
    def __init__(self, workdir: Path, *args: str, storage: Path | None = None, env: dict[str, str] | None = None,
                 prefix: tuple[str, ...] = ()) -> None:
        """`prefix`: a command the server runs under, e.g. `prlimit --nofile=256:256 --`."""
        self.workdir = workdir
        self.storage = storage or workdir / "storage"
        self.tokens = workdir / "tokens"
        if not self.tokens.exists():
            self.tokens.write_text(token_line("writer", Scope.READWRITE, WRITE_TOKEN) + token_line("reader", Scope.READ, READ_TOKEN))
        self.args = args
        self.env = env
        self.prefix = prefix
        self.proc: subprocess.Popen[bytes] | None = None
        self.on_s3 = False  # the S3 backend: `storage` is then only its local tier
        self.port = 0
        self._starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stderr_path(self) -> Path:
        return self.workdir / f"server-{self._starts}.err"

    @property
    def stdout_path(self) -> Path:
        return self.workdir / f"server-{self._starts}.out"

    def start(self) -> CacheServer:
        self._starts += 1
        cmd = [*self.prefix, sys.executable, "-m", "cache_server", "--bind", "127.0.0.1:0", "--storage", str(self.storage),
               "--tokens", str(self.tokens), *self.args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})}
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", self.stderr_path.read_text())
            if match:
                self.port = int(match[1])
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.stderr_path.read_text()}")
            time.sleep(0.02)
        raise RuntimeError("server did not start: " + self.stderr_path.read_text())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def logs(self) -> str:
        return "".join(p.read_text() for p in sorted(self.workdir.glob("server-*.*")))

    def request(self, method: str, key_or_path: str, body: bytes | None = None, token: str | None = WRITE_TOKEN,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        path = key_or_path if key_or_path.startswith("/") else f"/v1/cache/{key_or_path}"
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=all_headers)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def raw_socket(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=30)

    def metric(self, name: str) -> float:
        _, _, body = self.request("GET", "/metrics", token=None)
        total = 0.0
        found = False
        for line in body.decode().splitlines():
            if line.startswith(name) and (line[len(name)] in " {"):
                total += float(line.rsplit(" ", 1)[1])
                found = True
        assert found, f"metric {name} not exposed"
        return total

    def worker_pids(self) -> list[int]:
        """The worker processes of a `--workers N` server (empty for a single process)."""
        assert self.proc is not None
        return [int(pid) for pid in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()]

    def serving_pid(self, client: socket.socket) -> int:
        """The process that accepted this client connection (make a request on it first)."""
        client_port = client.getsockname()[1]
        inodes = set()
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local_port, remote_port = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
            if local_port == self.port and remote_port == client_port:
                inodes.add(f"socket:[{fields[9]}]")
        assert self.proc is not None
        for pid in self.worker_pids() or [self.proc.pid]:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return pid
                except OSError:
                    continue
        raise LookupError(f"no server process holds the connection from port {client_port}")

    def connection_per_worker(self, tries: int = 200) -> dict[int, http.client.HTTPConnection]:
        """One keep-alive connection to each worker process, keyed by its pid."""
        wanted = set(self.worker_pids())
        found: dict[int, http.client.HTTPConnection] = {}
        for _ in range(tries):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            conn.request("GET", "/health")
            conn.getresponse().read()
            assert conn.sock is not None
            pid = self.serving_pid(conn.sock)
            if pid in found:
                conn.close()
            else:
                found[pid] = conn
            if set(found) == wanted:
                return found
        raise AssertionError(f"connections reached only {sorted(found)} of {sorted(wanted)}")

    def entry_files(self) -> list[Path]:
        return [p for p in (self.storage / "entries").rglob("*") if p.is_file()]

    def tmp_files(self) -> list[Path]:
        return list((self.storage / "tmp").iterdir())


def put_headers(key: str, length: int, token: str = WRITE_TOKEN, extra: str = "") -> bytes:
    return (f"PUT /v1/cache/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n{extra}\r\n").encode()


def read_status(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    if not data:
        return 0, b""
    return int(data.split(b" ", 2)[1]), data


def read_responses(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """Read `count` whole responses (status, body) from a keep-alive socket, using Content-Length."""
    data = b""
    out: list[tuple[int, bytes]] = []
    while len(out) < count:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end].decode("latin-1")
            length = int(re.search(r"(?im)^content-length:\s*(\d+)", head)[1])  # type: ignore[index]
            if len(data) >= head_end + 4 + length:
                out.append((int(head.split(" ", 2)[1]), data[head_end + 4 : head_end + 4 + length]))
                data = data[head_end + 4 + length :]
                continue
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError(f"closed after {len(out)} of {count} responses")
        data += chunk
    return out
