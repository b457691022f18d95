import pytest

from .server_proc import CacheServer


@pytest.fixture(params=[("--no-fsync",), (), ("--workers", "2")], ids=["no-fsync", "fsync", "2-workers"])
def server(tmp_path, request):
    """A server without fsync (the uploads commit on the loop), one with (staged, synced in batches),
    and one of two worker processes (fsync), where consecutive connections may reach either."""
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
