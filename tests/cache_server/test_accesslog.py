"""Access-log lines are JSON with one key order, whichever formatting path a record takes."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from cache_server.accesslog import AccessLog

KEYS = ["ts", "remote", "method", "route", "key", "status", "ms", "token", "bytes_in", "bytes_out"]


def test_every_kind_of_record_is_one_json_line_with_the_same_keys(tmp_path):
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    records = [
        ("127.0.0.1", "GET", "cache", "abc123", 200, 0.1234, "agent-1", 0, 4096, None),  # the common case
        ("10.0.0.7", "PUT", "cache", "abc123", 409, 1.5, "agent-2", 100, 0, "abc123 is already stored"),
        (None, "GET", "health", None, 200, 0.1, None, 0, 321, None),
        ("127.0.0.1", "PUT", "cache", None, None, 2.0, None, 0, 0, 'client went away: "reset" \\ \u00e9'),
    ]
    for record in records:
        log.write(*record)
    log.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(records)
    for line, (remote, method, route, key, status, ms, token, bytes_in, bytes_out, reason) in zip(lines, records):
        got = json.loads(line)
        assert list(got) == KEYS + (["reason"] if reason is not None else [])
        assert got["ts"] > 0
        assert {k: got[k] for k in KEYS[1:]} == {
            "remote": remote, "method": method, "route": route, "key": key, "status": status,
            "ms": round(ms, 3), "token": token, "bytes_in": bytes_in, "bytes_out": bytes_out}
        assert got.get("reason") == reason


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(reasons=st.lists(st.one_of(st.none(), st.text(max_size=60), st.text('ab "\\\n\t/', max_size=20)),
                       min_size=1, max_size=20))
def test_any_reason_text_stays_inside_its_own_json_line(tmp_path_factory, reasons):
    """`reason` is the one free-text field (an OS error, a parser's complaint): quotes, backslashes,
    newlines and control characters in it must not break or split the line."""
    path = tmp_path_factory.mktemp("log") / "access.log"
    log = AccessLog(str(path))
    for reason in reasons:
        log.write("127.0.0.1", "PUT", "cache", "k1", 403, 1.0, "agent", 3, 0, reason)
    log.close()
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines.pop() == ""
    assert [json.loads(line).get("reason") for line in lines] == reasons
