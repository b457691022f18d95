import argparse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


@pytest.mark.parametrize("argv, message", [
    (["--body-timeout", "nan"], "--body-timeout must be a positive number of seconds"),
    (["--idle-timeout", "inf"], "--idle-timeout must be a positive number of seconds"),
    (["--drain-timeout", "-1"], "--drain-timeout must be a positive number of seconds"),
    (["--scrub-interval", "nan"], "--scrub-interval must be 0"),
    (["--max-size", "9" * 400 + "TiB"], "--max-size: .* is larger than 1 EiB"),
    (["--max-entries", "-1"], "--max-entries must be 0"),
])
def test_numbers_that_would_never_fire_or_overflow_are_refused(argv, message):
    with pytest.raises(ConfigError, match=message):
        _settings(*argv)


_FLAG_VALUES = {
    "--bind": st.one_of(st.just("127.0.0.1:3333"), st.text(max_size=30)),
    "--max-size": st.one_of(st.just("50GiB"), st.text(max_size=30),
                         st.builds(lambda n, unit: f"{n}{unit}", st.integers(0, 10**420),
                                   st.sampled_from(["", "KiB", "GiB", "TiB", "MB"]))),
    "--max-artifact-size": st.one_of(st.just("1GiB"), st.text(max_size=30)),
    "--memory-cache": st.text(max_size=30),
    "--scrub-rate": st.text(max_size=30),
    "--body-timeout": st.one_of(st.text(max_size=10), st.sampled_from(["nan", "inf", "-inf", "0", "1e308", "30"])),
    "--scrub-interval": st.one_of(st.text(max_size=10), st.sampled_from(["nan", "inf", "0", "86400"])),
    "--url-prefix": st.text(max_size=30),
    "--workers": st.text(max_size=10),
    "--event-loop": st.text(max_size=10),
}


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(_FLAG_VALUES)), st.just(None), max_size=5).flatmap(
    lambda flags: st.fixed_dictionaries({flag: _FLAG_VALUES[flag] for flag in flags})))
def test_any_flag_values_give_settings_or_one_clear_line(flags):
    """Bad values end in a ConfigError naming the flag (cli.py prints it as one line, exit 2), or
    in argparse's own usage error (also exit 2); never in a traceback."""
    argv = [item for flag, value in flags.items() for item in (flag, value) if "\x00" not in value]
    parser = argparse.ArgumentParser(exit_on_error=False)
    Settings.register_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except (argparse.ArgumentError, SystemExit):
        return  # argparse's refusal: a usage line and exit 2
    try:
        Settings.from_args(args)
    except ConfigError as exc:
        text = str(exc)
        assert "\n" not in text and text.startswith("--"), text
