"""Access-log lines are JSON with one key order, whichever formatting path a record takes."""

import json

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
