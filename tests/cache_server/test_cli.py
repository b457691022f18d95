"""The command line: one-line errors with the right exit codes, the embedded default, scrub and token add."""

import os
import re
import socket
import subprocess
import sys

import pytest

from cache_server.auth import Scope, TokenStore, token_line


def run(*args, env=None, timeout=30):
    return subprocess.run([sys.executable, "-m", "cache_server", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-size", "lots"], "--max-size: 'lots' is not a size"),
        (["--bind", "localhost:3333"], "--bind: 'localhost' is not an IP address"),
        (["--max-size", "1GiB", "--max-artifact-size", "2GiB"], "--max-artifact-size (2GiB) is larger than --max-size"),
        (["--tokens", "/nonexistent/tokens"], "tokens file /nonexistent/tokens: No such file or directory"),
        (["--storage", "/dev/null/cache"], "storage directory /dev/null/cache cannot be created"),
        (["--event-loop", "trio"], "--event-loop: 'trio' must be one of: uvloop, asyncio"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    tokens = tmp_path / "tokens"
    tokens.write_text(token_line("a", Scope.READWRITE, "t"))
    base = ["--storage", str(tmp_path / "s"), "--tokens", str(tokens)]
    result = run(*base, *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_empty_tokens_file_says_how_to_add_one(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# nothing yet\n")
    result = run("--storage", str(tmp_path / "s"), "--tokens", str(tokens))
    assert result.returncode == 2 and "has no tokens; add one with: python -m cache_server token add" in result.stderr


def test_malformed_tokens_file_names_the_line(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# ok\nagent write sha256:abc\n")
    result = run("--storage", str(tmp_path / "s"), "--tokens", str(tokens))
    assert result.returncode == 2
    assert result.stderr.strip() == f"cache_server: error: {tokens}:2: scope must be 'read' or 'readwrite', got 'write'"


def test_address_in_use_exit_1(tmp_path):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        run_env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "XDG_STATE_HOME": str(tmp_path / "state")}
        result = run("--bind", f"127.0.0.1:{port}", env=run_env)
    finally:
        blocker.close()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"cache_server: error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_token_add_appends_hash_and_prints_token_once(tmp_path):
    path = tmp_path / "tokens"
    first = run("token", "add", "agent-1", "--tokens", str(path))
    second = run("token", "add", "ci", "--scope", "read", "--tokens", str(path))
    assert first.returncode == second.returncode == 0
    token1, token2 = first.stdout.strip(), second.stdout.strip()
    text = path.read_text()
    assert token1 not in text and token2 not in text
    store = TokenStore(str(path))
    assert store.authenticate(f"Bearer {token1}").may_write
    assert not store.authenticate(f"Bearer {token2}").may_write
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = run("token", "add", "ci", "--tokens", str(path))
    assert again.returncode == 2 and "already has a token named 'ci'" in again.stderr


def test_scrub_command_reports_and_exit_code(tmp_path):
    from cache_server.storage.disk import DiskStorage

    storage = DiskStorage(str(tmp_path / "s"), max_bytes=1 << 30, max_artifact_bytes=1 << 20, min_free_bytes=0, fsync=False)
    for key in ("1", "2"):
        upload = storage.begin_put(key, 100_000)
        upload.write(os.urandom(100_000))
        upload.commit()
    storage.close()
    clean = run("scrub", "--storage", str(tmp_path / "s"))
    assert clean.returncode == 0 and "checked 2 entries, 0 damaged" in clean.stdout
    path = tmp_path / "s" / "entries" / "2" / "2"
    data = bytearray(path.read_bytes())
    data[5000] ^= 1
    path.write_bytes(bytes(data))
    dirty = run("scrub", "--storage", str(tmp_path / "s"))
    assert dirty.returncode == 1 and "checked 2 entries, 1 damaged" in dirty.stdout


def test_embedded_default_generates_a_token_once_and_serves(tmp_path):
    import re
    import signal
    import time
    import urllib.request

    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "XDG_STATE_HOME": str(tmp_path / "state"),
           "PYTHONUNBUFFERED": "1"}

    def start():
        err = open(tmp_path / "err.txt", "w+")
        proc = subprocess.Popen([sys.executable, "-m", "cache_server", "--bind", "127.0.0.1:0", "--access-log", "off"],
                                stderr=err, stdout=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 15
        while not (m := re.search(r"listening on http://127\.0\.0\.1:(\d+)", (tmp_path / "err.txt").read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "err.txt").read_text()
            time.sleep(0.05)
        return proc, int(m[1]), (tmp_path / "err.txt").read_text()

    proc, port, text = start()
    try:
        access = tmp_path / "cfg" / "nx-farm" / "access-token"
        token = access.read_text().strip()
        assert f"saved for this machine's clients in {access}" in text and token not in text, "never in the log"
        assert access.stat().st_mode & 0o777 == 0o600
        tokens_file = tmp_path / "cfg" / "nx-farm" / "cache-tokens"
        assert token not in tokens_file.read_text() and "local readwrite sha256:" in tokens_file.read_text()
        assert str(tmp_path / "state" / "nx-farm" / "cache") in text
        put = urllib.request.Request(f"http://127.0.0.1:{port}/v1/cache/1", data=b"hello", method="PUT",
                                     headers={"Authorization": f"Bearer {token}"})
        assert urllib.request.urlopen(put).status == 200
        get = urllib.request.Request(f"http://127.0.0.1:{port}/v1/cache/1", headers={"Authorization": f"Bearer {token}"})
        assert urllib.request.urlopen(get).read() == b"hello"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    proc, _, text = start()
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    assert "Created" not in text and access.read_text().strip() == token, "created once, then left alone"


def test_a_first_token_never_overwrites_a_saved_access_token(tmp_path, capsys):
    from cache_server.auth import TokenStore
    from cache_server.cli import _create_first_token

    config = tmp_path / "nx-farm"
    config.mkdir()
    (config / "access-token").write_text("another-farms-token\n")
    _create_first_token(str(config / "cache-tokens"))
    shown = re.search(r"NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN=(\S+)", capsys.readouterr().err)
    assert (config / "access-token").read_text() == "another-farms-token\n"
    assert shown and TokenStore(str(config / "cache-tokens")).authenticate(f"Bearer {shown[1]}") is not None, "the new token is shown once"
