import pytest

from .server_proc import CacheServer


@pytest.fixture(params=[("--no-fsync",), (), ("--workers", "2"), ("--event-loop", "asyncio")],
                ids=["no-fsync", "fsync", "2-workers", "asyncio-loop"])
def server(tmp_path, request):
    """A server without fsync (the uploads commit on the loop), one with (staged, synced in batches),
    one of two worker processes (fsync), where consecutive connections may reach either, and one on
    the standard library's event loop instead of uvloop (fsync)."""
    srv = CacheServer(tmp_path, *request.param).start()
    yield srv
    srv.stop()


@pytest.fixture
def make_server(tmp_path):
    started: list[CacheServer] = []

    def factory(*args: str, **kw) -> CacheServer:
        srv = CacheServer(tmp_path, *args, **kw)
        started.append(srv)
        return srv.start()

    yield factory
    for srv in started:
        if srv.proc and srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()
