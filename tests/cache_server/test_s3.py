"""The S3 backend against a real Ceph RGW: what only a shared object store brings (several
frontends, one bucket, write-once across them) and what it must survive (a store that stops
answering, a body damaged in the bucket, an upload cut off). The HTTP conformance suite runs
on this backend too (the `s3` case of the `server` fixture in conftest.py)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time

import pytest

from .conftest import s3_args
from .server_proc import CacheServer


@pytest.fixture
def frontends(tmp_path, rgw):
    """Two cache servers (own tier each) on one bucket prefix, with a short store timeout; the
    second runs two worker processes, so consecutive requests to it may reach either."""
    prefix_args = s3_args(rgw, tmp_path)
    started = []
    for name, workers in (("a", "1"), ("b", "2")):
        workdir = tmp_path / name
        workdir.mkdir()
        args = [*prefix_args[:4], "--local-tier", str(workdir / "storage"), "--s3-timeout", "1", "--workers", workers]
        started.append(CacheServer(workdir, *args, env=rgw.env).start())
    yield started, prefix_args[1].removeprefix("s3://nxcache/") + "/"
    for server in started:
        server.stop()


def test_an_entry_stored_through_one_frontend_is_a_hit_through_the_other(frontends, rgw):
    (a, b), prefix = frontends
    body = os.urandom(300_000)
    assert a.request("PUT", "1f", body)[0] == 200
    assert b.request("GET", "1f")[::2] == (200, body)
    assert rgw.objects(prefix) == {f"{prefix}1f": len(body)}
    head = rgw.client().head_object(Bucket="nxcache", Key=f"{prefix}1f")
    assert len(head["Metadata"]["xxh3-128"]) == 32, "the digest travels with the object"
    assert b.request("PUT", "1f", body)[0] == 409, "entries are immutable across frontends"
    # Each frontend publishes its access times for the bucket's size cap; b's two workers one each.
    deadline = time.monotonic() + 10  # each publishes its first view as it starts
    while len(views := [key.rsplit("/", 1)[1] for key in rgw.keys(f"{prefix}_nxfarm/access/")]) < 3 \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(views) == 3 and sum(view.endswith(("-w0.json", "-w1.json")) for view in views) == 2, views


def test_concurrent_puts_of_one_hash_through_both_store_exactly_one_body(frontends, rgw):
    (a, b), prefix = frontends
    for round_ in range(5):
        key = f"c{round_}"
        bodies = {a: os.urandom(200_000), b: os.urandom(200_000)}
        answers = {}
        go = threading.Barrier(2)

        def put(server):
            go.wait()
            answers[server] = server.request("PUT", key, bodies[server])[0]

        threads = [threading.Thread(target=put, args=(server,)) for server in (a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(answers.values()) == [200, 409], answers
        winner = next(server for server, status in answers.items() if status == 200)
        stored = rgw.client().get_object(Bucket="nxcache", Key=f"{prefix}{key}")["Body"].read()
        assert stored == bodies[winner]
        assert a.request("GET", key)[2] == b.request("GET", key)[2] == stored, "both serve the one body"


def test_a_store_that_stops_answering_costs_a_miss_or_a_403_then_heals(frontends, rgw):
    (a, _), prefix = frontends
    rgw.pause()
    try:
        started = time.monotonic()
        assert a.request("GET", "d1")[0] == 404
        status, _, text = a.request("PUT", "d2", b"x" * 100_000)
        took = time.monotonic() - started
        assert status == 403 and text.startswith(b"not stored: the object store failed"), text
        assert took < 20, f"bounded by --s3-timeout 1 (with one retry each): {took:.1f}s"
        health = json.loads(a.request("GET", "/health", token=None)[2])
        assert health["status"] == "degraded" and "object store failing" in health["problems"][0]
        assert a.metric("nxcache_storage_errors_total") >= 2
    finally:
        rgw.resume()
    assert f"{prefix}d2" not in rgw.objects(prefix), "an upload the store did not finish leaves no object"
    assert a.request("PUT", "d2", b"x" * 100_000)[0] == 200
    assert json.loads(a.request("GET", "/health", token=None)[2])["status"] == "ok", "healthy without a restart"
    log = a.stderr_path.read_text()
    assert "failing: " in log and "answering again after" in log, "the journal says when and for how long"


def test_an_upload_cut_off_leaves_no_object(frontends, rgw):
    (a, _), prefix = frontends
    sock = a.raw_socket()
    sock.sendall(b"PUT /v1/cache/e1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer writer-token-9f2c\r\n"
                 b"Content-Length: 1000000\r\n\r\n" + b"y" * 300_000)
    sock.close()
    time.sleep(1)
    assert rgw.objects(prefix) == {} and a.request("GET", "e1")[0] == 404


def test_an_object_whose_body_does_not_match_its_digest_is_a_miss_and_deleted(frontends, rgw):
    (a, _), prefix = frontends
    body = os.urandom(100_000)
    rgw.client().put_object(Bucket="nxcache", Key=f"{prefix}f1", Body=body,
                            Metadata={"xxh3-128": hashlib.md5(body).hexdigest()})  # a digest, not this one
    assert a.request("GET", "f1")[0] == 404
    assert rgw.objects(prefix) == {} and a.metric("nxcache_damaged_entries_total") == 1


def test_bad_s3_settings_stop_the_server_with_the_flag_named(tmp_path, rgw):
    for args, expected in ((("--storage", "s3://Bad_Bucket/x"), "--storage: 's3://Bad_Bucket/x': bucket"),
                           (("--storage", "s3://nxcache/x", "--s3-endpoint", "ftp://h"), "--s3-endpoint: 'ftp://h'")):
        server = CacheServer(tmp_path, *args)
        with pytest.raises(RuntimeError, match="server exited 2"):
            server.start()
        assert expected in server.stderr_path.read_text()


def test_the_bucket_keeps_under_max_size_dropping_what_no_frontend_used_lately(tmp_path, rgw):
    args = [*s3_args(rgw, tmp_path)[:4], "--max-size", "1MiB", "--max-artifact-size", "300KiB",
            "--bucket-check-interval", "0.5", "--local-tier-size", "0"]
    prefix = args[1].removeprefix("s3://nxcache/") + "/"
    servers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        servers.append(CacheServer(tmp_path / name, *args, "--local-tier", str(tmp_path / name / "storage"),
                                   env=rgw.env).start())
    a, b = servers
    try:
        for n in range(3):
            assert a.request("PUT", f"old{n}", os.urandom(250_000))[0] == 200
            time.sleep(0.05)
        time.sleep(1.5)  # both frontends publish their views
        assert b.request("GET", "old0")[0] == 200  # used lately, through the other frontend
        time.sleep(1.5)
        for n in range(2):
            assert a.request("PUT", f"new{n}", os.urandom(250_000))[0] == 200
        deadline = time.monotonic() + 15
        while sum(rgw.objects(prefix).values()) > 1024 * 1024:
            assert time.monotonic() < deadline, rgw.objects(prefix)
            time.sleep(0.2)
        left = {key.removeprefix(prefix) for key in rgw.objects(prefix)}
        assert left == {"old0", "new0", "new1"}, f"the oldest unused went first: {left}"
        assert a.metric("nxcache_evictions_total") + b.metric("nxcache_evictions_total") >= 2
    finally:
        a.stop()
        b.stop()


def test_victims_are_the_least_recently_used_by_any_frontend():
    from cache_server.storage.bucket_lru import merge_access, pick_victims

    sizes = {"a": 40, "b": 40, "c": 40}
    access = merge_access([{"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 9.0}, {"b": "junk"}])
    assert access == {"a": 9.0, "b": 2.0, "c": 3.0}
    assert pick_victims(sizes, access, 80) == ["b"]
    assert pick_victims(sizes, access, 0) == ["b", "c", "a"]
    assert pick_victims(sizes, {}, 120) == []


def test_s3_urls_are_checked_before_anything_starts():
    from cache_server.storage.objectstore import S3Location

    assert S3Location.parse("s3://nx-cache/farm/a/") == S3Location("nx-cache", "farm/a/")
    assert S3Location.parse("s3://nx-cache").object_key("ab12") == "ab12"
    for bad in ("s3://UPPER/x", "s3://ab", "s3://ok-bucket/../x", "http://x/y", "s3://ok-bucket/a b"):
        with pytest.raises(ValueError):
            S3Location.parse(bad)


def test_a_stop_right_after_start_ends_the_server_while_it_talks_to_the_store(tmp_path, rgw):
    # The bucket's size cap starts talking to the store at once; on Python 3.11 asyncio.wait_for
    # could swallow the cancellation of that task, and the server then never finished stopping.
    for n in range(8):
        (tmp_path / str(n)).mkdir()
        server = CacheServer(tmp_path / str(n), *s3_args(rgw, tmp_path / str(n)), env=rgw.env).start()
        time.sleep(0.01 * n)
        assert server.stop(timeout=15) == 0


def test_health_says_at_once_when_the_bucket_or_the_credentials_do_not_work(tmp_path, rgw):
    """What a deploy waits for: `/health` degraded, naming the store's answer, before any request."""
    cases = {"missing-bucket": (("--storage", "s3://no-such-bucket/x"), rgw.env, "does not exist"),
             "bad-secret": (s3_args(rgw, tmp_path)[:2], {**rgw.env, "AWS_SECRET_ACCESS_KEY": "x7Fq-not-the-secret"}, "credentials are wrong")}
    for name, (storage, env, expected) in cases.items():
        workdir = tmp_path / name
        workdir.mkdir()
        server = CacheServer(workdir, *storage, "--s3-endpoint", rgw.endpoint, "--local-tier", str(workdir / "tier"),
                             env=env).start()
        try:
            deadline = time.monotonic() + 10
            while True:
                health = json.loads(server.request("GET", "/health", token=None)[2])
                checking = health["problems"][:1] == ["object store not checked yet: looking at the bucket"]
                if not checking or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert health["status"] == "degraded", (name, health)
            assert "object store failing" in health["problems"][0] and expected in health["problems"][0], health
            assert "x7Fq-not-the-secret" not in server.stderr_path.read_text(), "the secret is never logged"
        finally:
            server.stop()
    healthy = CacheServer(tmp_path, *s3_args(rgw, tmp_path), env=rgw.env).start()
    try:
        deadline = time.monotonic() + 10
        while (health := json.loads(healthy.request("GET", "/health", token=None)[2]))["status"] != "ok" \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        assert health["status"] == "ok", health
    finally:
        healthy.stop()


def test_a_gateway_killed_mid_upload_costs_a_403_and_leaves_no_object_then_heals(own_rgw, tmp_path):
    """The gateway dies (SIGKILL) while the server sends it a 24 MiB body: the PUT is a 403 at once
    (not after the timeout), GETs are misses and /health is degraded while it is gone; once it is
    back, nothing of that upload is in the bucket and the server stores again without a restart."""
    args = s3_args(own_rgw, tmp_path)
    prefix = args[1].removeprefix("s3://nxcache/") + "/"
    server = CacheServer(tmp_path, *args, "--s3-timeout", "5", env=own_rgw.env).start()
    try:
        body = os.urandom(24 << 20)
        answer: dict[str, object] = {}
        own_rgw.pause()  # the body reaches the tier, then the PUT to the store stalls in the socket

        def put():
            answer["status"], _, answer["text"] = server.request("PUT", "e1", body)
            answer["at"] = time.monotonic()

        thread = threading.Thread(target=put)
        thread.start()
        deadline = time.monotonic() + 10
        while not list((tmp_path / "storage" / "entries").rglob("e1")) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert "status" not in answer, "the PUT is still on its way to the store"
        killed_at = time.monotonic()
        own_rgw.kill_gateway()
        thread.join(30)
        assert answer["status"] == 403 and str(answer["text"]).startswith("b'not stored: the object store failed"), answer
        assert float(answer["at"]) - killed_at < 3, "a dead store answers at once: no wait for the timeout"
        assert server.request("GET", "e0")[0] == 404
        health = json.loads(server.request("GET", "/health", token=None)[2])
        assert health["status"] == "degraded" and "object store failing" in health["problems"][0], health
        own_rgw.start_gateway()
        assert prefix + "e1" not in own_rgw.objects(prefix), "an upload the store did not finish leaves no object"
        assert server.request("PUT", "e1", b"again")[0] == 200
        assert server.request("GET", "e1")[::2] == (200, b"again")
        assert json.loads(server.request("GET", "/health", token=None)[2])["status"] == "ok", "healthy, no restart"
    finally:
        server.stop()
