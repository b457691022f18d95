"""`nxfarm build` when the setup is wrong, driven for real: each mistake a newcomer makes gets
one line with its fix and exit 2; a farm that is simply not configured builds here."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cache_server.server_proc import WRITE_TOKEN, CacheServer
from tests.nx_client.workspace import NX_CLIENT_DIR

from .farm_procs import NXFARM, clean_env
from .own_workspace import PACKAGES, git, own_workspace

pytestmark = pytest.mark.skipif(not (NX_CLIENT_DIR / "node_modules").exists(), reason="nx client not installed")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    server = CacheServer(tmp_path_factory.mktemp("cache")).start()
    yield server
    server.stop()


def build(workspace: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NXFARM, "build", "-t", "build", "--yes", *args], cwd=workspace, env=env,
                          capture_output=True, text=True, timeout=300)


def farm_env(tmp_path: Path, cache: CacheServer, **extra: str) -> dict[str, str]:
    return clean_env(tmp_path / "home", XDG_STATE_HOME=str(tmp_path / "state"),
                     NX_SELF_HOSTED_REMOTE_CACHE_SERVER=cache.url, NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN=WRITE_TOKEN,
                     **extra)


def test_outside_a_git_repository_says_so_with_the_fix(tmp_path, cache):
    workspace = own_workspace(tmp_path / "ws")
    shutil.rmtree(workspace / ".git")
    tls = {}
    for name in ("ca", "cert", "key"):
        (tmp_path / name).write_text("checked only once a build is distributed\n")
        tls[f"NXFARM_TLS_{name.upper()}"] = str(tmp_path / name)
    result = build(workspace, farm_env(tmp_path, cache, NXFARM_SCHEDULER="tls://127.0.0.1:9", **tls))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"nxfarm build: {workspace} is not in a git repository, and agents build "
                                     "commits: `git init` and commit it, or build here with --local")


def test_a_scheduler_address_without_tls_scheme_names_the_fix(tmp_path, cache):
    workspace = own_workspace(tmp_path / "ws")
    for given, fixed in (("127.0.0.1:8786", "tls://127.0.0.1:8786"), ("tcp://127.0.0.1:8786", "tls://127.0.0.1:8786")):
        result = build(workspace, farm_env(tmp_path, cache, NXFARM_SCHEDULER=given))
        assert result.returncode == 2 and f"write {fixed}" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_missing_tls_file_is_a_configuration_error_not_an_outage(tmp_path, cache):
    workspace = own_workspace(tmp_path / "ws")
    env = farm_env(tmp_path, cache, NXFARM_SCHEDULER="tls://127.0.0.1:9", NXFARM_TLS_CA=str(tmp_path / "ca.crt"),
                   NXFARM_TLS_CERT=str(tmp_path / "me.crt"), NXFARM_TLS_KEY=str(tmp_path / "me.key"))
    result = build(workspace, env)
    assert result.returncode == 2, result.stdout
    assert f"no such file: {tmp_path / 'ca.crt'}" in result.stderr and "fallback" not in result.stdout


def test_no_origin_and_no_scheduler_builds_here_with_the_cache(tmp_path, cache):
    workspace = own_workspace(tmp_path / "ws")
    assert git(workspace, "remote").strip() == ""
    result = build(workspace, farm_env(tmp_path, cache))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "building locally with the remote cache: no scheduler configured" in result.stdout
    plan = result.stdout.split("STEP")[1].split("nxfarm:")[0]
    assert "depends on a local-only task" not in plan, "nothing is local-only when everything runs here"
    assert plan.count(" here") == len(PACKAGES)


def test_node_missing_is_named_with_its_fix(tmp_path, cache):
    workspace = own_workspace(tmp_path / "ws")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to(shutil.which("git"))
    result = build(workspace, {**farm_env(tmp_path, cache), "PATH": str(bin_dir)})
    assert result.returncode == 2
    assert "Node.js is not installed (no `node` on PATH)" in result.stderr and "/usr/bin/env" not in result.stderr


def test_just_nx_encrypt_config_without_age_recipient_names_it(tmp_path):
    (tmp_path / "nx-agents.env").write_text("A=1\n")
    env = {k: v for k, v in clean_env(tmp_path / "home").items() if k != "AGE_RECIPIENT"}
    result = subprocess.run([str(Path(sys.executable).with_name("just")), "--justfile", str(REPO / "justfile"),
                             "nx-encrypt-config", "nx-agents.env"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "AGE_RECIPIENT is not set" in result.stderr and "age1" in result.stderr
    assert not (tmp_path / "nx-agents.env.sops").exists()
