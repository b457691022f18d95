"""The real Nx client against a real cache server process (nx version pinned in package.json)."""

import json
import subprocess

import pytest

from tests.cache_server.conftest import s3_args
from tests.cache_server.server_proc import READ_TOKEN, WRITE_TOKEN, CacheServer

from .workspace import NX_BIN, NX_VERSION, PROJECTS, Workspace

pytestmark = pytest.mark.skipif(not NX_BIN.exists(), reason="run `npm ci` in tests/nx_client first (make test does)")
N = len(PROJECTS)


@pytest.fixture
def workspace(tmp_path):
    return Workspace(tmp_path / "ws")


@pytest.fixture(params=[("--workers", "2"), (), ("s3",)], ids=["2-workers", "1-process", "s3"])
def cache(tmp_path, request):
    """fsync on; one worker process per core (two here) as deployed, a single process, and a single
    process on the S3 backend (a real Ceph RGW)."""
    if request.param == ("s3",):
        rgw = request.getfixturevalue("rgw")
        server = CacheServer(tmp_path, *s3_args(rgw, tmp_path), env=rgw.env).start()
    else:
        server = CacheServer(tmp_path, *request.param).start()
    yield server
    server.stop()


def test_pinned_client_version(workspace):
    result = workspace.nx("--version", cache_url=None, token=None)
    assert f"Local: v{NX_VERSION}" in result.output


def test_second_build_restores_every_task_from_the_remote_cache(workspace, cache):
    first = workspace.build(cache.url, WRITE_TOKEN)
    assert first.returncode == 0, first.output
    assert sorted(workspace.executed()) == sorted(r for r, _ in PROJECTS.values())
    built = workspace.outputs()
    assert len([k for k, v in built.items() if v[0] != "dir"]) == 4 * N
    assert cache.metric("nxcache_puts_total") == N

    workspace.reset_local_state()
    second = workspace.build(cache.url, WRITE_TOKEN)
    assert second.returncode == 0, second.output
    assert second.remote_hits() == N, second.output
    assert workspace.executed() == [], "no task may execute when everything is in the remote cache"
    assert workspace.outputs() == built, "restored outputs must be byte-identical, modes included"
    assert f"Nx read the output from the cache instead of running the command for {N} out of {N} tasks" in second.output
    assert cache.metric("nxcache_hits_total") == N and cache.metric("nxcache_puts_total") == N


def test_a_second_frontend_on_the_same_bucket_restores_every_task(workspace, tmp_path, rgw):
    args = s3_args(rgw, tmp_path)
    frontends = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        tier = ("--local-tier", str(tmp_path / name / "storage"))
        frontends.append(CacheServer(tmp_path / name, *args, *tier, env=rgw.env).start())
    a, b = frontends
    try:
        assert workspace.build(a.url, WRITE_TOKEN).returncode == 0
        built = workspace.outputs()
        workspace.reset_local_state()
        second = workspace.build(b.url, WRITE_TOKEN)
        assert second.returncode == 0 and second.remote_hits() == N, second.output
        assert workspace.executed() == [] and workspace.outputs() == built
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize("outage", ["stuck", "dead"])
def test_builds_stay_green_while_the_object_store_is_out_and_store_again_after(workspace, tmp_path, own_rgw, outage):
    """Stuck: the gateway stops answering (SIGSTOP), every request waits for the timeout. Dead: it
    is killed, every request is refused at once. Either way Nx stays green, nothing is stored, and
    once the gateway is back the server stores again without a restart."""
    prefix_args = s3_args(own_rgw, tmp_path)
    cache = CacheServer(tmp_path, *prefix_args, "--s3-timeout", "0.5", env=own_rgw.env).start()
    prefix = prefix_args[1].removeprefix("s3://nxcache/") + "/"
    try:
        own_rgw.pause() if outage == "stuck" else own_rgw.kill_gateway()
        try:
            out = workspace.build(cache.url, WRITE_TOKEN)
            assert out.returncode == 0, out.output
            health = json.loads(cache.request("GET", "/health", token=None)[2])
            assert health["status"] == "degraded"
        finally:
            own_rgw.resume() if outage == "stuck" else own_rgw.start_gateway()
        assert own_rgw.objects(prefix) == {}, "uploads the store never finished leave no object"
        workspace.reset_local_state()
        again = workspace.build(cache.url, WRITE_TOKEN)
        assert again.returncode == 0 and len(own_rgw.objects(prefix)) == N, again.output
        assert json.loads(cache.request("GET", "/health", token=None)[2])["status"] == "ok", "no restart needed"
    finally:
        cache.stop()


def test_read_only_token_builds_and_stores_nothing(workspace, cache):
    result = workspace.build(cache.url, READ_TOKEN)
    assert result.returncode == 0, result.output
    assert len(workspace.executed()) == N
    assert cache.entry_files() == []
    assert cache.metric("nxcache_rejected_total") == N


def test_wrong_token_shows_our_401_text(workspace, cache):
    result = workspace.build(cache.url, "not-a-valid-token")
    assert result.returncode == 1
    assert "Unauthorized: missing or unknown cache token (NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN)" in result.output
    assert "Misconfigured" not in result.output, "the 401 must be exactly text/plain"
    assert workspace.executed() == []


@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_build_succeeds_when_storage_cannot_write(workspace, tmp_path, small_fs, fault):
    server = CacheServer(tmp_path, "--min-free-disk", "0", storage=small_fs / "cache").start()
    try:
        if fault == "read-only":
            subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
        else:
            subprocess.run(["dd", "if=/dev/zero", f"of={small_fs / 'filler'}", "bs=64k"], capture_output=True)
        result = workspace.build(server.url, WRITE_TOKEN)
        assert result.returncode == 0, result.output
        assert len(workspace.executed()) == N
        assert server.metric("nxcache_puts_total") == 0
        health = json.loads(server.request("GET", "/health", token=None)[2])
        assert health["status"] == "degraded" and health["last_storage_error"] is not None
    finally:
        server.stop()
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=False)


def test_namespaces_keep_pull_request_artifacts_out_of_trusted_builds(tmp_path):
    """Real Nx with NX_SELF_HOSTED_REMOTE_CACHE_SERVER ending in /ns/<name>: a pull-request build
    writes into its namespace; a trusted build of the same hashes does not restore those (it
    builds and writes its own); a later pull-request build restores the trusted artifacts; a
    read token restores them too and uploads nothing."""
    from cache_server.auth import Scope, token_line

    (tmp_path / "tokens").write_text(token_line("agent", Scope.READWRITE, "trusted-token", ("trusted",))
                                     + token_line("pr-ci", Scope.READWRITE, "pr-token", ("*",))
                                     + token_line("reader", Scope.READ, "read-token"))
    cache = CacheServer(tmp_path).start()
    try:
        workspace = Workspace(tmp_path / "ws")
        pull_request = workspace.build(f"{cache.url}/ns/pr-1", "pr-token")
        assert pull_request.returncode == 0, pull_request.output
        assert len(workspace.executed()) == N and cache.metric("nxcache_puts_total") == N
        assert all(path.name.endswith("_pr-1") for path in cache.entry_files())

        workspace.reset_local_state()
        trusted = workspace.build(cache.url, "trusted-token")
        assert trusted.returncode == 0, trusted.output
        assert trusted.remote_hits() == 0 and len(workspace.executed()) == N, "a trusted build restored PR output"
        assert cache.metric("nxcache_puts_total") == 2 * N
        built = workspace.outputs()

        workspace.reset_local_state()
        later = workspace.build(f"{cache.url}/ns/pr-2", "pr-token")
        assert later.returncode == 0 and later.remote_hits() == N and workspace.executed() == [], later.output
        assert workspace.outputs() == built

        workspace.reset_local_state()
        reader = workspace.build(cache.url, "read-token")
        assert reader.returncode == 0 and reader.remote_hits() == N, reader.output
        assert cache.metric("nxcache_puts_total") == 2 * N
    finally:
        cache.stop()
