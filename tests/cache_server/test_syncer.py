"""The fsync batcher on real files: what it syncs, how often, and whose upload an error belongs to."""

import asyncio
import errno
import itertools
import os
import threading

import pytest

from cache_server.storage import syncer
from cache_server.storage.base import Staged
from cache_server.storage.syncer import BatchSyncer, sync_staged


@pytest.fixture
def synced_paths(monkeypatch):
    """Every path fsync is called on, in order; the real fsync still runs."""
    paths = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(syncer.os, "fsync", recording_fsync)
    return paths


def _stage(directory, name):
    directory.mkdir(exist_ok=True)
    fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    os.write(fd, b"body")
    return Staged(fd, str(directory))


def test_each_directory_is_synced_once_after_the_files_linked_into_it(tmp_path, synced_paths):
    batch = [_stage(tmp_path / "ab", "ab1"), _stage(tmp_path / "cd", "cd1"), _stage(tmp_path / "ab", "ab2")]
    try:
        assert sync_staged(batch) == [None, None, None]
    finally:
        for staged in batch:
            os.close(staged.fd)
    files = [str(tmp_path / "ab" / "ab1"), str(tmp_path / "cd" / "cd1"), str(tmp_path / "ab" / "ab2")]
    assert synced_paths[:3] == files  # every file first ...
    assert sorted(synced_paths[3:]) == [str(tmp_path / "ab"), str(tmp_path / "cd")]  # ... then each directory once


def test_an_error_belongs_to_the_uploads_it_touched(tmp_path, synced_paths):
    good = _stage(tmp_path / "ab", "ab1")
    (tmp_path / "ef").mkdir()
    read_end, write_end = os.pipe()
    bad_file = Staged(read_end, str(tmp_path / "ef"))  # fsync of a pipe fails with EINVAL
    gone = tmp_path / "gh"
    lost = [_stage(gone, "gh1"), _stage(gone, "gh2")]
    for staged in lost:
        os.unlink(gone / os.path.basename(os.readlink(f"/proc/self/fd/{staged.fd}")))
    gone.rmdir()  # the directory cannot be opened for its sync
    try:
        errors = sync_staged([good, bad_file, *lost])
    finally:
        for fd in (good.fd, *(staged.fd for staged in lost), read_end, write_end):
            os.close(fd)
    assert errors[0] is None
    assert errors[1].errno == errno.EINVAL
    assert errors[2].errno == errors[3].errno == errno.ENOENT
    assert str(tmp_path / "ef") not in synced_paths  # no upload left in it to make durable


def batch_sizes(tmp_path, passes: list[int], hold_first_batch: bool = False) -> list[int]:
    """Submit `passes[i]` uploads in loop pass i to a BatchSyncer, close it, check that every upload
    was answered without error, and return the sizes of the batches it synced. With
    `hold_first_batch`, the first sync lasts until every later pass has been handed over."""
    sizes = []
    first_started, release = threading.Event(), threading.Event()

    def sync(batch):
        sizes.append(len(batch))
        if hold_first_batch and len(sizes) == 1:
            first_started.set()
            release.wait(10)
        return syncer.sync_staged(batch)

    staged = [_stage(tmp_path / "ab", f"ab{i}") for i in range(sum(passes))]

    async def scenario():
        loop = asyncio.get_running_loop()
        worker = BatchSyncer(loop, sync=sync)
        results = [loop.create_future() for _ in staged]
        uploads = iter(zip(staged, results))
        for index, count in enumerate(passes):
            for item, result in itertools.islice(uploads, count):
                worker.submit(item, result.set_result)
            if hold_first_batch and index == 0:
                assert await loop.run_in_executor(None, first_started.wait, 10)
            else:
                await asyncio.sleep(0.01)  # the pass ends: its uploads are handed over
        release.set()
        await loop.run_in_executor(None, worker.close)  # returns once everything handed over is synced
        return await asyncio.wait_for(asyncio.gather(*results), 10)

    try:
        assert asyncio.run(scenario()) == [None] * len(staged)
    finally:
        for item in staged:
            os.close(item.fd)
    return sizes


def test_uploads_submitted_in_one_loop_pass_are_synced_as_one_batch(tmp_path):
    assert batch_sizes(tmp_path, [5]) == [5]


def test_passes_handed_over_during_a_sync_become_one_batch_and_close_finishes_them(tmp_path):
    assert batch_sizes(tmp_path, [1, 2, 2], hold_first_batch=True) == [1, 4]
