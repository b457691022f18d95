"""Namespaces (trust tiers) on a real server process: a write never leaves its namespace, a
read in a namespace falls through to the trusted one, and tokens may only use theirs."""

from __future__ import annotations

import pytest

from cache_server.auth import Scope, TokenFileError, parse_tokens, token_line
from cache_server.namespaces import is_storage_key, storage_key

from .server_proc import CacheServer

TOKENS = {
    "trusted": ("agent-1", Scope.READWRITE, ("trusted",)),
    "branch": ("agent-1-branch", Scope.READWRITE, ("*",)),
    "alice": ("alice", Scope.READWRITE, ("alice",)),
    "reader": ("ci-read", Scope.READ, ()),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("namespaces")
    (workdir / "tokens").write_text("".join(token_line(name, scope, f"{key}-token", namespaces)
                                            for key, (name, scope, namespaces) in TOKENS.items()))
    server = CacheServer(workdir).start()
    yield server
    server.stop()


def ns(name: str, key: str) -> str:
    return f"/ns/{name}/v1/cache/{key}"


def test_a_namespace_reads_through_to_trusted_and_writes_only_itself(server):
    assert server.request("PUT", "111", b"trusted body", token="trusted-token")[0] == 200
    # alice reads the trusted entry through her namespace, and her own write stays hers.
    assert server.request("GET", ns("alice", "111"), token="alice-token")[2] == b"trusted body"
    assert server.request("PUT", ns("alice", "222"), b"alice body", token="alice-token")[0] == 200
    assert server.request("GET", ns("alice", "222"), token="alice-token")[2] == b"alice body"
    assert server.request("GET", "222", token="trusted-token")[0] == 404, "a namespaced write reached trusted"
    assert server.request("GET", ns("other", "222"), token="branch-token")[0] == 404
    # The same hash may exist in a namespace and in trusted; each reader gets its own tier's.
    assert server.request("PUT", ns("alice", "333"), b"planted", token="alice-token")[0] == 200
    assert server.request("PUT", "333", b"real", token="trusted-token")[0] == 200, "a namespace blocked trusted"
    assert server.request("GET", "333", token="reader-token")[2] == b"real"
    assert server.request("GET", ns("alice", "333"), token="alice-token")[2] == b"planted"


def test_tokens_use_only_their_namespaces(server):
    refused = {
        ("PUT", "444", "alice-token"): "may not write namespace 'trusted'",
        ("PUT", ns("bob", "444"), "alice-token"): "may not write namespace 'bob'",
        ("PUT", "444", "branch-token"): "may not write namespace 'trusted'",
        ("PUT", ns("alice", "444"), "trusted-token"): "may not write namespace 'alice'",
        ("PUT", "444", "reader-token"): "is read-only",
        ("GET", ns("bob", "444"), "alice-token"): "may not use namespace 'bob'",
    }
    for (method, path, token), message in refused.items():
        status, _, body = server.request(method, path, b"x" if method == "PUT" else None, token=token)
        assert status == 403 and message in body.decode(), (method, path, token, status, body)
    # '*' is every namespace but trusted.
    assert server.request("PUT", ns("pr-42", "444"), b"pr", token="branch-token")[0] == 200
    assert server.request("GET", "444", token="trusted-token")[0] == 404


@pytest.mark.parametrize("path", ["/ns/Alice/v1/cache/1", "/ns/trusted/v1/cache/1", "/ns/a_b/v1/cache/1",
                                  "/ns/" + "a" * 33 + "/v1/cache/1"])
def test_a_bad_namespace_is_a_400_naming_it(server, path):
    status, _, body = server.request("GET", path, token="branch-token")
    assert status == 400 and b"bad namespace" in body


def test_namespaced_entries_survive_a_restart(server):
    assert server.request("PUT", ns("alice", "555"), b"kept", token="alice-token")[0] == 200
    server.stop()
    server.start()
    assert server.request("GET", ns("alice", "555"), token="alice-token")[2] == b"kept"
    assert server.request("GET", "555", token="trusted-token")[0] == 404


def test_storage_keys_of_namespaces_cannot_be_named_by_a_request_hash():
    assert storage_key("trusted", "123") == "123" and storage_key("pr-1", "123") == "123_pr-1"
    assert is_storage_key("123_pr-1") and is_storage_key("abc")
    for key in ("123_trusted", "123_", "_pr", "12 3", "1_2_3", "123_PR"):
        assert not is_storage_key(key), key


@pytest.mark.parametrize("field, message", [("ns=Bad", "namespace 'Bad'"), ("namespaces=a", "fourth field must be"),
                                            ("ns=a,,b", "namespace ''")])
def test_a_bad_namespace_field_names_the_line(field, message):
    with pytest.raises(TokenFileError, match="tokens:1: ") as info:
        parse_tokens(f"a readwrite sha256:{'0' * 64} {field}", "tokens")
    assert message in str(info.value)


def test_a_line_without_namespaces_writes_trusted_as_before():
    (identity,) = parse_tokens(f"a readwrite sha256:{'0' * 64}", "tokens").values()
    assert identity.may_use("trusted") and not identity.may_use("alice")
