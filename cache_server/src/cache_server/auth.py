"""Bearer tokens: a file of `<name> <scope> sha256:<hex> [ns=<namespace>,...]` lines, hashes only at rest.

The optional fourth field lists the namespaces (namespaces.py) the token may write: names,
`trusted`, or `*` for every namespace but the trusted one; without it a token writes the
trusted namespace, as before namespaces existed. Every token reads the trusted namespace.

The SHA-256 of what the client presents is compared with every stored digest
by `hmac.compare_digest`, with no early exit, so the time taken says nothing
about which token (if any) matched. Reloads swap one immutable tuple, so requests
in flight keep the table they started with and none is dropped.

A keep-alive connection remembers the header it last proved (`Proven`): its next
requests that present the same header, compared in constant time too, skip the
hash and the scan, whose cost grows with the number of tokens (~1.7 us with one,
~3.5 us with 30, per request). The memory holds only while the table it was proven
against is current, so a token removed by a reload fails on open connections too.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from enum import Enum

from .namespaces import ANY_UNTRUSTED, TRUSTED, NamespaceError, check_name

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


class Scope(str, Enum):
    READ = "read"
    READWRITE = "readwrite"


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    scope: Scope
    namespaces: frozenset[str] = frozenset({TRUSTED})

    @property
    def may_write(self) -> bool:
        return self.scope is Scope.READWRITE

    def may_use(self, namespace: str) -> bool:
        """Whether this token may read `namespace` (and write it, given the scope)."""
        return namespace in self.namespaces or (namespace != TRUSTED and ANY_UNTRUSTED in self.namespaces)

    def may_read(self, namespace: str) -> bool:
        return namespace == TRUSTED or self.may_use(namespace)


class TokenFileError(Exception):
    """The tokens file is missing, unreadable or malformed (message names file and line)."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_line(name: str, scope: Scope, token: str, namespaces: tuple[str, ...] = ()) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"token name {name!r}: use letters, digits and . _ @ - (max 64)")
    field = ""
    if namespaces:
        parse_namespaces("ns=" + ",".join(namespaces), f"token {name!r}")
        field = " ns=" + ",".join(namespaces)
    return f"{name} {scope.value} sha256:{hash_token(token)}{field}\n"


def parse_namespaces(field: str, where: str) -> frozenset[str]:
    if not field.startswith("ns="):
        raise TokenFileError(f"{where}: fourth field must be ns=<namespace>[,<namespace>...], got {field[:40]!r}")
    names = field[3:].split(",")
    for name in names:
        if name in (TRUSTED, ANY_UNTRUSTED):
            continue
        try:
            check_name(name)
        except NamespaceError as exc:
            raise TokenFileError(f"{where}: {exc}") from None
    return frozenset(names)


def parse_tokens(text: str, source: str) -> dict[bytes, Identity]:
    """Parse a tokens file (digest -> identity); raises TokenFileError naming the first bad line."""
    table: dict[bytes, Identity] = {}
    names: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{number}"
        fields = line.split()
        if len(fields) not in (3, 4):
            raise TokenFileError(f"{where}: expected '<name> <scope> sha256:<hex> [ns=<namespace>,...]', "
                                 f"got {len(fields)} field(s)")
        name, scope_text, digest_text = fields[:3]
        namespaces = parse_namespaces(fields[3], where) if len(fields) == 4 else frozenset({TRUSTED})
        if not _NAME.fullmatch(name):
            raise TokenFileError(f"{where}: bad token name {name[:64]!r} (letters, digits, . _ @ -)")
        if name in names:
            raise TokenFileError(f"{where}: duplicate token name {name!r}")
        try:
            scope = Scope(scope_text)
        except ValueError:
            raise TokenFileError(f"{where}: scope must be 'read' or 'readwrite', got {scope_text[:20]!r}") from None
        match = _DIGEST.fullmatch(digest_text)
        if not match:
            raise TokenFileError(f"{where}: third field must be sha256:<64 lowercase hex digits>")
        digest = bytes.fromhex(match[1])
        if digest in table:
            raise TokenFileError(f"{where}: same token hash as {table[digest].name!r}")
        names.add(name)
        table[digest] = Identity(name, scope, namespaces)
    return table


def _file_signature(path: str) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Proven:
    """What one connection last proved: the raw header, who it is, and against which table."""

    __slots__ = ("header", "identity", "table")

    def __init__(self) -> None:
        self.header = b""
        self.identity: Identity | None = None
        self.table: tuple[tuple[bytes, Identity], ...] | None = None


class TokenStore:
    """The current token table, reloadable in place."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._table: tuple[tuple[bytes, Identity], ...] = ()
        self._signature: tuple[int, int, int, int] | None = None
        self.reload()

    def __len__(self) -> int:
        return len(self._table)

    def names(self) -> set[str]:
        return {identity.name for _, identity in self._table}

    def reload(self) -> None:
        """Read the file again; on any error keep the previous table and raise."""
        try:
            signature = _file_signature(self.path)
            with open(self.path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise TokenFileError(f"tokens file {self.path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise TokenFileError(f"tokens file {self.path}: not UTF-8 text") from None
        table = tuple(parse_tokens(text, self.path).items())
        if not table and self._signature is not None:
            # As at start: a table with no token would refuse every client while the server looks fine.
            raise TokenFileError(f"tokens file {self.path} has no tokens: refused, the previous table stays")
        self._table = table
        self._signature = signature

    def changed_on_disk(self) -> bool:
        try:
            return _file_signature(self.path) != self._signature
        except OSError:
            return True

    def authenticate(self, authorization: str | bytes | None, proven: Proven | None = None) -> Identity | None:
        """The identity for an `Authorization: Bearer <token>` header (text, or the raw header bytes), or None.

        `proven`: the connection's memory of its last success, consulted and updated (bytes headers only).
        """
        table = self._table
        if (proven is not None and proven.table is table and type(authorization) is bytes
                and hmac.compare_digest(proven.header, authorization)):
            return proven.identity
        if not authorization or authorization[:7].lower() not in ("bearer ", b"bearer "):
            return None
        token = authorization[7:].strip()
        if not token:
            return None
        digest = hashlib.sha256(token.encode() if isinstance(token, str) else token).digest()
        found = None
        for stored, identity in table:
            if hmac.compare_digest(stored, digest):
                found = identity
        if found is not None and proven is not None and type(authorization) is bytes:
            proven.header, proven.identity, proven.table = authorization, found, table
        return found
