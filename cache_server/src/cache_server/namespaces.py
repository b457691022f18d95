"""Cache namespaces: trust tiers on the wire and on disk.

Nx requests `{NX_SELF_HOSTED_REMOTE_CACHE_SERVER}/v1/cache/{hash}` and keeps any path in the
server URL (research/nx-cache.md: `http://h/p/q` -> `/p/q/v1/cache/<hash>`), so a namespace
rides in the URL at no cost:

    /v1/cache/{hash}              the trusted namespace
    /ns/{name}/v1/cache/{hash}    namespace {name}

A GET in a namespace that misses there falls through to the trusted namespace; a PUT never
leaves its namespace. Which namespaces a token may write is in its tokens-file line (auth.py);
every token may read the trusted namespace. An entry of namespace N is stored under the key
`{hash}_{N}`, so it shards with its hash and no request hash (letters and digits only) can
name it.
"""

from __future__ import annotations

import re

TRUSTED = "trusted"
ANY_UNTRUSTED = "*"  # in a token's namespaces: every namespace but the trusted one
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
MAX_HASH = 128


class NamespaceError(ValueError):
    """A namespace name that is not one (message names it)."""


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise NamespaceError(f"namespace {name[:40]!r}: lowercase letters, digits and '-', at most 32, "
                             "starting with a letter or digit")
    return name


def is_valid_hash(key: str) -> bool:
    # Same as a [A-Za-z0-9]{1,128} fullmatch, at a quarter of the cost: this runs on every request.
    return len(key) <= MAX_HASH and key.isascii() and key.isalnum()


def storage_key(namespace: str, key: str) -> str:
    """Where the entry `key` of `namespace` is stored (the trusted namespace keeps bare hashes)."""
    return key if namespace == TRUSTED else f"{key}_{namespace}"


def is_storage_key(key: str) -> bool:
    """A bare hash, or `{hash}_{namespace}`."""
    if key.isascii() and key.isalnum():
        return len(key) <= MAX_HASH
    head, sep, namespace = key.partition("_")
    return bool(sep) and is_valid_hash(head) and NAME.fullmatch(namespace) is not None and namespace != TRUSTED
