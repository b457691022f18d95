import argparse

import pytest

from cache_server.config import ConfigError, Settings, parse_bind, parse_size


@pytest.mark.parametrize(
    "text, expected",
    [("50GiB", 50 << 30), ("2GiB", 2 << 30), ("512MiB", 512 << 20), ("1000000", 10**6), ("1.5KiB", 1536),
     ("10MB", 10**7), ("1g", 1 << 30)],
)
def test_sizes(text, expected):
    assert parse_size(text, "--max-size") == expected


@pytest.mark.parametrize("text", ["", "lots", "5XB", "-1GiB", "GiB"])
def test_bad_sizes_name_the_flag(text):
    with pytest.raises(ConfigError, match="--max-size: .* is not a size"):
        parse_size(text, "--max-size")


def test_binds():
    assert parse_bind("127.0.0.1:3333") == ("127.0.0.1", 3333)
    assert parse_bind("[::1]:0") == ("::1", 0)
    for bad, message in [("localhost:3333", "not an IP address"), ("3333", "not HOST:PORT"),
                         ("127.0.0.1:99999", "port"), ("127.0.0.1:x", "port")]:
        with pytest.raises(ConfigError, match=message):
            parse_bind(bad)


def _settings(*argv):
    parser = argparse.ArgumentParser()
    Settings.register_arguments(parser)
    return Settings.from_args(parser.parse_args(list(argv)))


def test_defaults_are_loopback_and_user_state_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.delenv("NXFARM_CACHE_BIND", raising=False)
    monkeypatch.delenv("NXFARM_CACHE_STORAGE", raising=False)
    settings = _settings()
    assert settings.binds == [("127.0.0.1", 3333)]
    assert settings.storage == str(tmp_path / "nx-farm" / "cache")
    assert settings.max_size == 50 << 30 and settings.max_artifact_size == 2 << 30 and settings.fsync
    assert settings.event_loop == "uvloop"


def test_event_loop_from_flag_or_environment(monkeypatch):
    assert _settings("--event-loop", "asyncio").event_loop == "asyncio"
    monkeypatch.setenv("NXFARM_CACHE_EVENT_LOOP", "asyncio")
    assert _settings().event_loop == "asyncio"
    monkeypatch.setenv("NXFARM_CACHE_EVENT_LOOP", "uv")
    with pytest.raises(ConfigError, match="--event-loop: 'uv' must be one of: uvloop, asyncio"):
        _settings()


def test_artifact_limit_above_total_is_refused():
    with pytest.raises(ConfigError, match="--max-artifact-size .* larger than --max-size"):
        _settings("--max-size", "1GiB", "--max-artifact-size", "2GiB")
