"""Real storage faults under a real server: a full filesystem and a read-only one (tmpfs mounts, needs root)."""

import json
import os
import subprocess
import time

import pytest

from .server_proc import CacheServer, put_headers, read_status

MiB = 1 << 20


@pytest.fixture
def fs_server(tmp_path, small_fs):
    server = CacheServer(tmp_path, "--no-fsync", "--min-free-disk", "0", "--max-artifact-size", "8MiB",
                         storage=small_fs / "cache").start()
    yield server
    if server.proc.poll() is None:
        server.stop()


def health(server):
    return json.loads(server.request("GET", "/health", token=None)[2])


def test_upload_larger_than_free_space_is_refused_up_front(fs_server):
    assert fs_server.request("PUT", "1", os.urandom(MiB))[0] == 200
    status, headers, body = fs_server.request("PUT", "2", os.urandom(6 * MiB))  # more than the tmpfs holds
    assert status == 403, "a full disk must not fail the Nx build (only 200/403/409 are tolerated)"
    assert b"--min-free-disk" in body and headers["content-type"] == "text/plain"
    assert fs_server.tmp_files() == []
    assert fs_server.request("GET", "2")[0] == 404
    assert fs_server.request("GET", "1")[0] == 200, "existing entries stay readable"


def test_disk_filling_up_mid_upload_is_not_stored_and_reported(fs_server, small_fs):
    sock = fs_server.raw_socket()
    sock.sendall(put_headers("2", 2 * MiB) + os.urandom(MiB))
    time.sleep(0.3)
    filler = small_fs / "filler"  # someone else fills the disk while the upload streams in
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
    sock.sendall(os.urandom(MiB))
    status, raw = read_status(sock)
    sock.close()
    assert status == 403, "a full disk must not fail the Nx build (only 200/403/409 are tolerated)"
    assert b"No space left on device" in raw
    assert fs_server.tmp_files() == [], "the partial upload is removed"
    assert fs_server.request("GET", "2")[0] == 404
    state = health(fs_server)
    assert state["status"] == "degraded"
    assert state["last_storage_error"]["op"] == "put" and "No space left" in state["last_storage_error"]["message"]
    assert fs_server.metric("nxcache_storage_errors_total") >= 1
    filler.unlink()
    answer = fs_server.request("PUT", "3", os.urandom(MiB))
    assert answer[0] == 200, f"it stores again once space is back: {answer[2]}"


def test_read_only_storage_serves_hits_and_refuses_writes_quietly(fs_server, small_fs):
    body = os.urandom(300_000)
    assert fs_server.request("PUT", "1", body)[0] == 200
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        status, _, text = fs_server.request("PUT", "2", os.urandom(1000))
        assert status == 403 and b"not stored" in text
        assert fs_server.request("GET", "1")[2] == body
        assert fs_server.request("GET", "2")[0] == 404
        assert health(fs_server)["status"] == "degraded"
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)


def test_unwritable_storage_at_start_is_one_clear_line(tmp_path, small_fs):
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        server = CacheServer(tmp_path, storage=small_fs / "cache")
        with pytest.raises(RuntimeError, match="exited 2") as info:
            server.start()
        lines = [l for l in str(info.value).split(":", 1)[1].strip().splitlines() if l.strip()]
        assert len(lines) == 1 and "cache_server: error: storage directory" in lines[0]
        assert "Read-only file system" in lines[0]
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
