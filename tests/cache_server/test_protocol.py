"""Connection edge cases that a real client cannot aim at: driven in-process, one loop pass at a time."""

import asyncio
import os

import pytest

from cache_server.accesslog import AccessLog
from cache_server.auth import Scope, TokenStore, token_line
from cache_server.http.handler import CacheHandler
from cache_server.http.protocol import HttpServer
from cache_server.loops import loop_factory
from cache_server.metrics import Metrics
from cache_server.storage.disk import INLINE_MAX, DiskStorage


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sent = b""

    def write(self, data) -> None:
        self.sent += bytes(data)

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_download_whose_client_leaves_in_the_same_loop_pass_closes_its_file_and_is_logged(tmp_path, kind):
    """The client hangs up before the sendfile task's first step: the task is cancelled before
    it ever runs, so its own cleanup never does; the entry's descriptor must still be closed."""
    (tmp_path / "tokens").write_text(token_line("w", Scope.READWRITE, "tok"))
    storage = DiskStorage(str(tmp_path / "s"), max_bytes=1 << 30, max_artifact_bytes=1 << 30, min_free_bytes=0, fsync=False)
    upload = storage.begin_put("big", INLINE_MAX * 4)
    upload.write(os.urandom(INLINE_MAX * 4))
    upload.commit()
    log_path = tmp_path / "access.log"
    access_log = AccessLog(str(log_path))
    handler = CacheHandler(storage=storage, tokens=TokenStore(str(tmp_path / "tokens")), metrics=Metrics(storage),
                           access_log=access_log)

    async def scenario() -> None:
        conn = HttpServer(handler, idle_timeout=60, body_timeout=30)()
        conn.connection_made(_Transport())
        before = _open_fds()
        conn.data_received(b"GET /v1/cache/big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n\r\n")
        assert conn.task is not None and _open_fds() == before + 1  # the entry's file, for sendfile
        conn.connection_lost(ConnectionResetError())
        for _ in range(3):
            await asyncio.sleep(0)
        assert _open_fds() == before
        assert conn.task is None and conn.current is None

    loop = loop_factory(kind)()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
    access_log.flush()
    line = log_path.read_text().strip().splitlines()[-1]
    assert '"status":200' in line and "download aborted: client went away" in line
    storage.close()
