import pytest

from .server_proc import CacheServer


@pytest.fixture
def server(tmp_path):
    srv = CacheServer(tmp_path, "--no-fsync").start()
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
