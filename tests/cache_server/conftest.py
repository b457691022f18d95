import secrets

import pytest

from .server_proc import CacheServer


def s3_args(rgw, tmp_path, *extra: str) -> tuple[str, ...]:
    """A server on the S3 backend: its own prefix in the test bucket; its local tier is where a disk
    server keeps its entries, so tests that look at stored files see the tier."""
    return ("--storage", f"s3://nxcache/{tmp_path.name}-{secrets.token_hex(4)}", "--s3-endpoint", rgw.endpoint,
            "--local-tier", str(tmp_path / "storage"), *extra)


@pytest.fixture(params=[("--no-fsync",), (), ("--workers", "2"), ("--event-loop", "asyncio"), ("s3", "--workers", "2")],
                ids=["no-fsync", "fsync", "2-workers", "asyncio-loop", "s3"])
def server(tmp_path, request):
    """A server without fsync (the uploads commit on the loop), one with (staged, synced in batches),
    one of two worker processes (fsync), where consecutive connections may reach either, one on
    the standard library's event loop instead of uvloop (fsync), and one on the S3 backend (a real
    Ceph RGW; bodies pass through its local tier, which its two worker processes share)."""
    if request.param[:1] == ("s3",):
        rgw = request.getfixturevalue("rgw")
        srv = CacheServer(tmp_path, *s3_args(rgw, tmp_path, *request.param[1:]), env=rgw.env).start()
        srv.on_s3 = True
    else:
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
