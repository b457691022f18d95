"""The orchestrator's first questions: is the cache safe for Nx, and where does the build run."""

import socket
import time

import pytest

from nxfarm.actions.fallback import Mode, choose_mode
from nxfarm.probe.cache import CacheProbe, probe_cache
from tests.cache_server.server_proc import READ_TOKEN, WRITE_TOKEN, CacheServer

OK = CacheProbe(True, "fine")


@pytest.fixture
def cache(tmp_path):
    server = CacheServer(tmp_path, "--no-fsync").start()
    yield server
    server.stop()


def test_a_working_cache_and_either_token_is_usable(cache):
    assert probe_cache(cache.url, WRITE_TOKEN).usable
    assert probe_cache(cache.url, READ_TOKEN).usable
    assert probe_cache(cache.url + "/", WRITE_TOKEN).usable, "Nx turns a trailing slash into //v1, ours accepts it"


def test_a_wrong_token_is_not_usable_and_says_so(cache):
    probe = probe_cache(cache.url, "wrong")
    assert not probe.usable and "rejects the token (401)" in probe.reason


def test_a_closed_port_is_not_usable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    probe = probe_cache(f"http://127.0.0.1:{port}", WRITE_TOKEN)
    assert not probe.usable and "unreachable" in probe.reason


def test_a_server_that_never_answers_is_given_up_on_quickly():
    with socket.socket() as blackhole:  # accepts connections (backlog) and never reads or writes
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(8)
        started = time.monotonic()
        probe = probe_cache(f"http://127.0.0.1:{blackhole.getsockname()[1]}", WRITE_TOKEN, timeout=0.5)
    assert not probe.usable and "did not answer within 0.5s" in probe.reason
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("cache_probe, scheduler_error, workers, local, mode, words", [
    (CacheProbe(False, "down"), None, 3, False, Mode.LOCAL_NO_REMOTE_CACHE, "without the remote cache: down"),
    (CacheProbe(False, "down"), "refused", 0, True, Mode.LOCAL_NO_REMOTE_CACHE, "without the remote cache"),
    (OK, "connection refused", 3, False, Mode.LOCAL, "scheduler unreachable: connection refused"),
    (OK, None, 0, False, Mode.LOCAL, "has no workers"),
    (OK, None, 2, True, Mode.LOCAL, "locally as asked"),
    (OK, None, 2, False, Mode.DISTRIBUTED, "over 2 worker(s)"),
])
def test_every_degraded_case_builds_locally_with_a_one_line_reason(cache_probe, scheduler_error, workers, local,
                                                                   mode, words):
    plan = choose_mode(cache=cache_probe, scheduler_error=scheduler_error, workers=workers, local_requested=local)
    assert plan.mode is mode and words in plan.reason and "\n" not in plan.reason
