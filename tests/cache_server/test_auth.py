import hashlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache_server.auth import Proven, Scope, TokenFileError, TokenStore, hash_token, parse_tokens, token_line


def test_token_line_holds_only_the_hash():
    line = token_line("agent-1", Scope.READWRITE, "s3cret-token")
    assert "s3cret-token" not in line
    assert line == f"agent-1 readwrite sha256:{hash_token('s3cret-token')}\n"


def test_authenticate_by_bearer_token(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# comment\n\n" + token_line("ci", Scope.READ, "r") + token_line("agent", Scope.READWRITE, "w"))
    store = TokenStore(str(path))
    assert store.authenticate("Bearer r").name == "ci"
    assert not store.authenticate("Bearer r").may_write
    assert store.authenticate("bearer w").may_write
    for header in (None, "", "Bearer ", "Bearer nope", "Basic dzo=", "w"):
        assert store.authenticate(header) is None
    # The HTTP layer passes the raw header bytes.
    assert store.authenticate(b"BEARER w ").name == "agent"
    for raw in (b"", b"Bearer ", b"Bearer nope", b"Basic dzo=", b"Bearer r\xff"):
        assert store.authenticate(raw) is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("a read", "expected '<name> <scope> sha256:<hex> [ns=<namespace>,...]'"),
        ("a write sha256:" + "0" * 64, "scope must be 'read' or 'readwrite'"),
        ("a read md5:abc", "sha256:<64 lowercase hex digits>"),
        ("a read sha256:" + "0" * 63, "sha256:<64 lowercase hex digits>"),
        ("bad/name read sha256:" + "0" * 64, "bad token name"),
        ("a read sha256:" + "0" * 64 + "\na read sha256:" + "1" * 64, "duplicate token name 'a'"),
        ("a read sha256:" + "0" * 64 + "\nb read sha256:" + "0" * 64, "same token hash as 'a'"),
    ],
)
def test_malformed_files_name_file_and_line(text, message):
    with pytest.raises(TokenFileError, match="tokens:[12]: ") as info:
        parse_tokens(text, "tokens")
    assert message in str(info.value)


def test_failed_reload_keeps_previous_tokens(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(token_line("a", Scope.READWRITE, "one"))
    store = TokenStore(str(path))
    path.write_text("garbage line\n")
    assert store.changed_on_disk()
    with pytest.raises(TokenFileError):
        store.reload()
    assert store.authenticate("Bearer one").name == "a"
    path.write_text(token_line("b", Scope.READWRITE, "two"))
    store.reload()
    assert store.authenticate("Bearer one") is None
    assert store.authenticate("Bearer two").name == "b"


def test_a_reload_to_a_file_with_no_tokens_is_refused_as_start_up_refuses_it(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(token_line("a", Scope.READWRITE, "one"))
    store = TokenStore(str(path))
    path.write_text("# every line commented out\n")
    with pytest.raises(TokenFileError, match="has no tokens: refused, the previous table stays"):
        store.reload()
    assert len(store) == 1 and store.authenticate("Bearer one").name == "a"


def test_a_connection_remembers_only_the_header_it_proved_against_the_current_table(tmp_path, monkeypatch):
    path = tmp_path / "tokens"
    path.write_text(token_line("a", Scope.READWRITE, "one") + token_line("b", Scope.READ, "two"))
    store = TokenStore(str(path))
    proven = Proven()
    assert store.authenticate(b"Bearer nope", proven) is None
    assert proven.identity is None, "a failure is not remembered"
    assert store.authenticate(b"Bearer one", proven).name == "a"
    hashed = []
    real_sha256 = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda data: hashed.append(data) or real_sha256(data))
    assert store.authenticate(b"Bearer one", proven).name == "a"
    assert hashed == [], "the same header again skips the hash and the scan"
    assert store.authenticate(b"Bearer two", proven).name == "b", "another header is checked in full"
    assert store.authenticate(b"Bearer one!", proven) is None
    assert store.authenticate(b"Bearer two", proven).name == "b"
    assert hashed == [b"two", b"one!"]
    # A reload that drops the token ends it on connections that proved it earlier.
    path.write_text(token_line("a", Scope.READWRITE, "one"))
    store.reload()
    assert store.authenticate(b"Bearer two", proven) is None
    # A reload that keeps it proves it again against the new table.
    assert store.authenticate(b"Bearer one", proven).name == "a"
    assert proven.table is not None and store.authenticate(b"Bearer one", Proven()).name == "a"


def test_unreadable_file_is_a_clear_error(tmp_path):
    with pytest.raises(TokenFileError, match="No such file"):
        TokenStore(str(tmp_path / "missing"))


_TEXT = st.text(st.characters(codec="utf-8"), max_size=200)
_NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,20}", fullmatch=True)


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(lines=st.lists(st.one_of(_TEXT, st.builds(lambda name, scope, token: token_line(name, scope, token).strip(),
                                                     _NAMES, st.sampled_from(list(Scope)), _TEXT)), max_size=8))
def test_any_tokens_file_loads_or_is_refused_naming_its_line(lines):
    text = "\n".join(lines)
    try:
        table = parse_tokens(text, "tokens")
    except TokenFileError as exc:
        assert re.match(r"tokens:\d+: ", str(exc)), str(exc)
        return
    for digest, identity in table.items():
        assert len(digest) == 32 and identity.scope in Scope


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(header=st.one_of(st.binary(max_size=80), st.builds(lambda tail: b"Bearer " + tail, st.binary(max_size=80))))
def test_any_authorization_header_is_refused_unless_it_carries_the_token(tmp_path_factory, header):
    path = tmp_path_factory.mktemp("tokens") / "tokens"
    path.write_text(token_line("agent", Scope.READWRITE, "the-token"))
    store = TokenStore(str(path))
    proven = Proven()
    identity = store.authenticate(header, proven)
    assert identity is None or header[7:].strip() == b"the-token"
    assert store.authenticate(b"Bearer the-token", proven) is not None
    assert store.authenticate(header, proven) == identity  # what the connection remembers changes nothing
