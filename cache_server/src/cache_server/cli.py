"""Command line: `python -m cache_server [serve] ...`, `scrub`, `token add`.

Known failures (bad flag, unreadable tokens file, unwritable storage, address in
use) print one line and exit 2 (usage/config) or 1 (runtime); bugs keep their
traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import __version__
from .auth import Scope, TokenFileError, TokenStore, new_token, token_line
from .config import ConfigError, Settings, default_storage, default_tokens
from .storage.disk import DiskStorage, StorageSetupError

PROG = "cache_server"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and argv[0] in ("serve", "scrub", "token") else "serve"
    rest = argv[1:] if argv and argv[0] == command else argv
    try:
        if command == "scrub":
            return _scrub(rest)
        if command == "token":
            return _token(rest)
        return _serve(rest)
    except (ConfigError, TokenFileError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except StorageSetupError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except _RuntimeFailure as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1


class _RuntimeFailure(Exception):
    pass


def _serve(argv: list[str]) -> int:
    from .http.server import ListenError, serve
    from .loops import run

    parser = argparse.ArgumentParser(prog=f"python -m {PROG}", description="Nx self-hosted remote cache server")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    Settings.register_arguments(parser)
    settings = Settings.from_args(parser.parse_args(argv))
    _configure_logging()
    if not settings.tokens_explicit and not os.path.exists(settings.tokens):
        _create_first_token(settings.tokens)
    tokens = TokenStore(settings.tokens)
    if not len(tokens):
        raise ConfigError(f"tokens file {settings.tokens} has no tokens; add one with: python -m {PROG} token add NAME --tokens {settings.tokens}")
    try:
        if settings.workers > 1:
            from .workers import run_workers

            return run_workers(settings, tokens)
        run(serve(settings, tokens), settings.event_loop)
    except ListenError as exc:
        raise _RuntimeFailure(str(exc)) from None
    return 0


ACCESS_TOKEN_FILE = "access-token"  # read by nxfarm build/status/doctor and the .envrc of nxfarm init


def _create_first_token(path: str) -> None:
    """The embedded default: a fresh machine gets one read-write token. The server keeps only its
    hash; the token itself goes, once, to `access-token` beside the tokens file, where this
    machine's clients read it (never into the log)."""
    token = new_token()
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("# nx-farm cache tokens: <name> <read|readwrite> sha256:<hex of the token>\n")
        fh.write(token_line("local", Scope.READWRITE, token))
    access = os.path.join(directory, ACCESS_TOKEN_FILE)
    try:
        fd = os.open(access, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"Created {path} with one read-write token. {access} already holds a token (another farm's?) and was "
              f"left alone; this server's token is shown only now:\n"
              f"  export NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN={token}\n", file=sys.stderr, flush=True)
        return
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    print(f"Created {path} (hashes only) with one read-write token, saved for this machine's clients in {access} "
          f"(mode 600): nxfarm build and the .envrc of nxfarm init read it there.", file=sys.stderr, flush=True)


def _scrub(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {PROG} scrub",
                                     description="Verify every entry's size and checksum; quarantine damaged ones")
    parser.add_argument("--storage", default=os.environ.get("NXFARM_CACHE_STORAGE") or default_storage(), metavar="DIR")
    args = parser.parse_args(argv)
    _configure_logging()
    if not os.path.isdir(args.storage):
        raise ConfigError(f"--storage: {args.storage} is not a directory")
    storage = DiskStorage(args.storage, max_bytes=1 << 62, max_artifact_bytes=1 << 62, min_free_bytes=0)
    try:
        report = storage.scrub()
    finally:
        storage.close()
    print(f"checked {report.checked} entries, {report.damaged} damaged (moved to quarantine), {report.bytes_read} bytes read")
    return 1 if report.damaged else 0


def _token(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {PROG} token",
                                     description="Add a token: appends its hash to the tokens file and prints the token once")
    sub = parser.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add")
    add.add_argument("name")
    add.add_argument("--scope", choices=[s.value for s in Scope], default=Scope.READWRITE.value)
    add.add_argument("--namespace", action="append", default=[], metavar="NS",
                     help="a namespace this token writes (repeatable): a name, 'trusted', or '*' for every "
                          "namespace but trusted (default: trusted)")
    add.add_argument("--tokens", default=os.environ.get("NXFARM_CACHE_TOKENS") or default_tokens(), metavar="FILE")
    args = parser.parse_args(argv)
    try:
        line = token_line(args.name, Scope(args.scope), token := new_token(), tuple(args.namespace))
    except (ValueError, TokenFileError) as exc:
        raise ConfigError(str(exc)) from None
    if os.path.exists(args.tokens):
        if args.name in TokenStore(args.tokens).names():  # also refuses to append to a malformed file
            raise ConfigError(f"{args.tokens} already has a token named {args.name!r}")
    else:
        os.makedirs(os.path.dirname(os.path.abspath(args.tokens)), mode=0o700, exist_ok=True)
    fd = os.open(args.tokens, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as fh:
        fh.write(line)
    print(token)
    return 0


def _configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("NXFARM_CACHE_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
