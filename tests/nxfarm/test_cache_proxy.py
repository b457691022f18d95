"""The agent's cache proxy against the real cache server: a task token stands for the agent's
token only while its task runs and only for its build user's connections."""

from __future__ import annotations

import http.client
import os
import urllib.parse

import pytest

from cache_server.auth import Scope, token_line
from nxfarm.agent.cache_proxy import CacheProxy, Grant, socket_owner
from tests.cache_server.server_proc import CacheServer

AGENT_TOKEN, BRANCH_TOKEN = "agent-trusted-token-3f9a", "agent-branch-token-71cd"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("proxy-cache")
    (workdir / "tokens").write_text(token_line("agent-1", Scope.READWRITE, AGENT_TOKEN, ("trusted",))
                                    + token_line("agent-1-branch", Scope.READWRITE, BRANCH_TOKEN, ("*",)))
    server = CacheServer(workdir).start()
    yield server
    server.stop()


@pytest.fixture
def proxy():
    proxy = CacheProxy()
    yield proxy
    proxy.close()


def call(url: str, method: str, path: str, token: str, body: bytes | None = None) -> tuple[int, bytes]:
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_a_task_token_stands_for_the_agent_token_while_its_task_runs(cache, proxy):
    task = proxy.grant(Grant(cache.url, AGENT_TOKEN, None))
    body = os.urandom(5 * 1024 * 1024 + 17)
    assert call(proxy.url, "PUT", "/v1/cache/1001", task, body)[0] == 200
    assert call(proxy.url, "GET", "/v1/cache/1001", task) == (200, body)
    assert call(proxy.url, "PUT", "/v1/cache/1001", task, b"again")[0] == 409, "the cache's answers pass through"
    assert call(proxy.url, "GET", "/v1/cache/1002", task)[0] == 404
    assert call(proxy.url, "GET", "/v1/cache/1001", AGENT_TOKEN)[0] == 401, "only task tokens, not the agent's"
    proxy.revoke(task)
    assert call(proxy.url, "GET", "/v1/cache/1001", task)[0] == 401, "worthless once its task ended"
    assert call(proxy.url, "PUT", "/v1/cache/1003", task, b"late")[0] == 401
    assert call(cache.url, "GET", "/v1/cache/1003", AGENT_TOKEN)[0] == 404


def test_a_branch_task_writes_its_namespace_only(cache, proxy):
    task = proxy.grant(Grant(f"{cache.url}/ns/pr-9", BRANCH_TOKEN, None))
    assert call(proxy.url, "PUT", "/v1/cache/2001", task, b"pr")[0] == 200
    assert call(cache.url, "GET", "/v1/cache/2001", AGENT_TOKEN)[0] == 404
    assert call(cache.url, "GET", "/ns/pr-9/v1/cache/2001", BRANCH_TOKEN) == (200, b"pr")


def test_a_task_token_works_only_from_its_build_users_connections(cache, proxy):
    other = proxy.grant(Grant(cache.url, AGENT_TOKEN, os.getuid() + 4242))
    assert call(proxy.url, "GET", "/v1/cache/1001", other)[0] == 401
    mine = proxy.grant(Grant(cache.url, AGENT_TOKEN, os.getuid()))
    assert call(proxy.url, "GET", "/v1/cache/1001", mine)[0] == 200


def test_socket_owner_reads_the_client_side_of_the_connection(tmp_path):
    table = tmp_path / "tcp"
    table.write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:9C40 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1\n"
        "   1: 0100007F:D431 0100007F:9C40 01 00000000:00000000 00:00000000 00000000   997        0 2\n")
    assert socket_owner(0x9C40, 0xD431, table) == 997
    assert socket_owner(0x9C40, 0xAAAA, table) is None
