"""Storage errors carry the HTTP status they map to, without importing the web layer.

Which status a storage fault gets is decided by what Nx 24 tolerates
(research/nx-cache.md section 2.3): on PUT only 200, 403 and 409 leave a build
green, so "could not store" is a 403, never a 5xx.
"""

from typing import ClassVar


class StorageError(Exception):
    """Base class; `status` is the HTTP status the transport answers."""

    status: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class EntryExists(StorageError):
    """The key is already stored; entries are immutable."""

    status: ClassVar[int] = 409


class ArtifactTooLarge(StorageError):
    """The body is larger than the per-artifact limit."""

    status: ClassVar[int] = 413


class NotStored(StorageError):
    """The upload was refused or lost (cache full of pinned data, disk full, I/O error).

    Answered as 403: Nx treats it as "not stored, carry on", so a sick cache
    never fails a build.
    """

    status: ClassVar[int] = 403


class IncompleteUpload(StorageError):
    """Fewer bytes arrived than Content-Length announced."""

    status: ClassVar[int] = 400
