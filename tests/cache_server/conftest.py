import pytest

from .server_proc import CacheServer


@pytest.fixture(params=[("--no-fsync",), ()], ids=["no-fsync", "fsync"])
def server(tmp_path, request):
    """A server without fsync (the uploads commit on the loop) and one with (staged, synced in batches)."""
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
