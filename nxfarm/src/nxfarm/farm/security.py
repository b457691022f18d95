"""TLS material for one cluster role, from flags or environment, as a Dask `Security`.

Each value is a file path, or `base64:<PEM>` so that an agent's key can travel inside its
SOPS-encrypted env file and never sit decrypted on disk.
"""

from __future__ import annotations

import base64
import binascii
import os
import sys
from pathlib import Path

from .tls import TlsFiles

ENV = {"ca": "NXFARM_TLS_CA", "cert": "NXFARM_TLS_CERT", "key": "NXFARM_TLS_KEY"}


class TlsConfigError(ValueError):
    """Names the flag or variable that is missing or unreadable."""


def _material(field: str, value: str) -> str:
    if value.startswith("base64:"):
        try:
            pem = base64.b64decode(value[len("base64:"):], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise TlsConfigError(f"{ENV[field]}: 'base64:' value is not base64 of a PEM block") from None
        if "-----BEGIN" not in pem:
            raise TlsConfigError(f"{ENV[field]}: decoded value is not a PEM block")
        return pem
    if not Path(value).is_file():
        raise TlsConfigError(f"{ENV[field]} / --tls-{field}: no such file: {value}")
    return value


def resolve(ca: str | None = None, cert: str | None = None, key: str | None = None,
            environ: os._Environ[str] | dict[str, str] = os.environ) -> TlsFiles:
    given = {"ca": ca or environ.get(ENV["ca"]), "cert": cert or environ.get(ENV["cert"]),
             "key": key or environ.get(ENV["key"])}
    missing = [f"--tls-{field} or {ENV[field]}" for field, value in given.items() if not value]
    if missing:
        raise TlsConfigError("the farm's cluster uses mutual TLS; missing " + ", ".join(missing))
    return TlsFiles(**{field: _material(field, value) for field, value in given.items()})  # type: ignore[arg-type]


def from_args(args, prog: str) -> TlsFiles | None:  # noqa: ANN001 - argparse.Namespace with tls_* flags
    """The TLS material of a command's --tls-* flags (or environment), or None after printing why not."""
    try:
        return resolve(args.tls_ca, args.tls_cert, args.tls_key)
    except TlsConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None


def add_arguments(parser) -> None:  # noqa: ANN001 - argparse.ArgumentParser
    for field in ("ca", "cert", "key"):
        parser.add_argument(f"--tls-{field}", help=f"default: ${ENV[field]} (a path, or base64:<PEM>)")


def security(files: TlsFiles, role: str):  # noqa: ANN201 - distributed.Security, imported lazily
    from distributed.security import Security

    return Security(require_encryption=True, tls_ca_file=files.ca,
                    **{f"tls_{role}_cert": files.cert, f"tls_{role}_key": files.key})
