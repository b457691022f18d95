"""The fsync batcher on real files: what it syncs, how often, and whose upload an error belongs to."""

import asyncio
import errno
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


def test_uploads_submitted_in_one_loop_pass_are_synced_as_one_batch(tmp_path):
    batches = []

    def counting_sync(batch):
        batches.append(len(batch))
        return syncer.sync_staged(batch)

    staged = [_stage(tmp_path / "ab", f"ab{i}") for i in range(5)]

    async def scenario():
        loop = asyncio.get_running_loop()
        worker = BatchSyncer(loop, sync=counting_sync)
        results = [loop.create_future() for _ in staged]
        for item, result in zip(staged, results):
            worker.submit(item, result.set_result)
        try:
            return await asyncio.wait_for(asyncio.gather(*results), 10)
        finally:
            worker.close()

    try:
        assert asyncio.run(scenario()) == [None] * 5
    finally:
        for item in staged:
            os.close(item.fd)
    assert batches == [5]


def test_passes_handed_over_during_a_sync_become_one_batch_and_close_finishes_them(tmp_path):
    batches = []
    first_started, release = threading.Event(), threading.Event()

    def slow_sync(batch):
        batches.append(len(batch))
        if len(batches) == 1:
            first_started.set()
            release.wait(10)
        return syncer.sync_staged(batch)

    staged = [_stage(tmp_path / "cd", f"cd{i}") for i in range(5)]

    async def scenario():
        loop = asyncio.get_running_loop()
        worker = BatchSyncer(loop, sync=slow_sync)
        results = [loop.create_future() for _ in staged]
        worker.submit(staged[0], results[0].set_result)
        assert await loop.run_in_executor(None, first_started.wait, 10)
        for passes in ((1, 2), (3, 4)):  # two loop passes while the first batch syncs
            for i in passes:
                worker.submit(staged[i], results[i].set_result)
            await asyncio.sleep(0.01)
        release.set()
        await loop.run_in_executor(None, worker.close)  # returns once everything handed over is synced
        return await asyncio.wait_for(asyncio.gather(*results), 10)

    try:
        assert asyncio.run(scenario()) == [None] * 5
    finally:
        for item in staged:
            os.close(item.fd)
    assert batches == [1, 4]
