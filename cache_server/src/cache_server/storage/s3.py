"""The cache on an S3-compatible bucket, with a local disk tier in front.

The bucket holds the entries; the tier (a DiskStorage on a local directory, LRU-bounded) holds
what this frontend read or wrote lately, and every body passes through it:

- GET: a tier hit is served from local disk (sendfile) as on the disk backend. A miss is
  fetched from the bucket into the tier, its digest compared with the one the object carries
  (a mismatch: the object is deleted and the GET is a miss), and served from there. With the
  tier's size 0 the entry leaves the tier as soon as it is open: the body still streams from a
  file, never from memory.
- PUT: the body streams into the tier as on the disk backend; then it goes to the bucket in one
  `PutObject` only if the key is new there (objectstore.py). Another frontend's object already
  there: 409, and the local copy is dropped (the next GET reads theirs). The store failing: 403
  `not stored`, and the local copy is dropped. (While a PUT is on its way to the bucket, a GET
  through the same frontend may already be served the local copy.)
- The store unreachable, slow or failing: GET is a miss and PUT a 403, each within the store
  timeout; `/health` says degraded until a request reaches the store again.

Several frontends may share a bucket; each has its own tier. A frontend's `--workers` share its tier
(a SharedDiskStorage, as they share a disk backend's directory); each publishes its own access view.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable

from .base import Blob, StorageStats
from .bucket_lru import BucketLru
from .disk import DiskStorage
from .entry_format import HEADER_SIZE, EntryHeader
from .errors import EntryExists, NotStored, StorageError
from .objectstore import ObjectExists, ObjectStore, StoreUnavailable

log = logging.getLogger("cache_server.storage")
_OWNER = "s3-fill"  # the tier's room accounting owner for bodies fetched from the bucket


class S3Storage:
    remote = True  # the HTTP layer asks through `fetch`, on the event loop

    def __init__(self, store: ObjectStore, tier: DiskStorage, keep_local: bool, max_bytes: int,
                 frontend_id: str) -> None:
        self.store = store
        self.lru = BucketLru(store, max_bytes, frontend_id, tier.counters)
        self.tier = tier
        self.keep_local = keep_local
        self.max_artifact_bytes = tier.max_artifact_bytes
        self.fsync = tier.fsync
        self.counters = tier.counters
        self.unreachable_since: float | None = None
        self.checked = False  # the first look at the bucket answered (well or not)
        self.last_store_error = ""
        self._filling: dict[str, asyncio.Future[None]] = {}

    # ---------------------------------------------------------------- reads

    def get(self, key: str) -> Blob | None:
        """The local tier only (the HTTP layer uses `fetch`)."""
        return self.tier.get(key)

    def contains(self, key: str) -> bool:
        return self.tier.contains(key)

    def fetch(self, keys: list[str], done: Callable[[Blob | None], None]) -> None:
        """The first of `keys` stored, as a Blob, or None: `done` is called on the loop."""
        task = asyncio.ensure_future(self._first(keys))
        task.add_done_callback(lambda t: done(None if t.cancelled() or t.exception() else t.result()))

    async def _first(self, keys: list[str]) -> Blob | None:
        for key in keys:
            blob = self.tier.get(key) or await self._fill(key)
            if blob is not None:
                self.lru.added(key, blob.size)  # known to exist, of this size, used now
                return blob
        return None

    async def _fill(self, key: str) -> Blob | None:
        waiting = self._filling.get(key)
        if waiting is not None:  # another request is fetching it: read what it brings
            await asyncio.shield(waiting)
            return self.tier.get(key)
        self._filling[key] = asyncio.get_running_loop().create_future()
        try:
            if not await self._download(key):
                return None
            blob = self.tier.get(key)
            if not self.keep_local:
                self.tier.remove(key)  # the open descriptor keeps the body readable
            return blob
        finally:
            self._filling.pop(key).set_result(None)

    async def _download(self, key: str) -> bool:
        try:
            found = await self.store.get(key)
        except StoreUnavailable as exc:
            self._store_failed(exc)
            return False
        self._store_answered()
        if found is None:
            return False
        try:
            upload = self.tier.begin_put(key, found.size, owner=_OWNER)
        except EntryExists:
            found.release()
            return True
        except StorageError as exc:
            found.release()
            self.tier.record_error("s3 fill", f"{key}: {exc.message}")
            return False
        try:
            async for chunk in found.chunks:
                upload.write(chunk)
            await _finished(upload)
        except StoreUnavailable as exc:
            upload.abort()
            self._store_failed(exc)
            return False
        except EntryExists:
            return True  # a PUT, or another worker's fill, committed the same key meanwhile
        except StorageError:
            upload.abort()
            return False
        finally:
            found.release()
        if found.digest and found.digest != self._local_digest(key):
            self.counters.damaged += 1
            self.tier.remove(key)
            self.tier.record_error("s3 get", f"{key}: the object's body does not match its digest: deleted")
            try:
                await self.store.delete(key)
            except StoreUnavailable as exc:
                self._store_failed(exc)
            return False
        return True

    def _local_digest(self, key: str) -> str:
        try:
            with open(self.tier.entry_path(key), "rb") as fh:
                return EntryHeader.unpack(fh.read(HEADER_SIZE)).digest.hex()
        except (OSError, ValueError):
            return ""

    # ---------------------------------------------------------------- writes

    def begin_put(self, key: str, size: int, *, exact: bool = False, owner: str = "") -> S3Upload:
        return S3Upload(self, key, self.tier.begin_put(key, size, exact=exact, owner=owner))

    async def push(self, key: str) -> None:
        """The tier's new entry to the bucket, write-once; raises a StorageError for the client."""
        blob = self.tier.get(key)
        if blob is None:
            raise NotStored("not stored: the upload vanished before it reached the object store")
        try:
            digest = self._local_digest(key)
            if blob.inline is not None:
                body: bytes | tuple[int, int, int] = blob.inline
                md5 = hashlib.md5(blob.inline, usedforsecurity=False).digest()
            else:
                body = (blob.fd, blob.offset, blob.size)
                md5 = await asyncio.get_running_loop().run_in_executor(None, _md5_of, blob)
            await self.store.put_new(key, body, blob.size, base64.b64encode(md5).decode(), digest)
        except ObjectExists:
            self._store_answered()
            self.tier.remove(key)  # the bucket's body is the one every frontend serves
            raise EntryExists(f"{key} is already stored") from None
        except StoreUnavailable as exc:
            self.tier.remove(key)
            self._store_failed(exc)
            raise NotStored(f"not stored: the object store failed: {exc}") from None
        finally:
            blob.close()
        self._store_answered()
        self.lru.added(key, blob.size)
        if not self.keep_local:
            self.tier.remove(key)

    def serve_as_worker(self, index: int) -> None:
        """One of `--workers`: its own access view in the bucket; only the first one evicts."""
        self.lru.frontend_id = f"{self.lru.frontend_id}-w{index}"
        self.lru.evicts = index == 0

    async def connect(self) -> None:
        """Make the store's client before serving: botocore loads its S3 model, a blocking second."""
        await self.store.connect()

    async def maintain(self) -> None:
        """Background work for the server's lifetime: a first look at the bucket, so that `/health`
        tells at once whether the store, the bucket and the credentials work; then its size cap."""
        try:
            await self.store.check_bucket()
        except StoreUnavailable as exc:
            self._store_failed(exc)
        else:
            self._store_answered()
        self.checked = True
        await self.lru.run()

    # ---------------------------------------------------------------- health

    def _store_failed(self, exc: Exception) -> None:
        self.counters.errors += 1
        self.last_store_error = str(exc)
        if self.unreachable_since is None:
            self.unreachable_since = time.time()
            log.warning("object store %s failing: %s (GETs are misses and PUTs 403 until it answers)",
                        self.store.location, exc)

    def _store_answered(self) -> None:
        if self.unreachable_since is not None:
            log.warning("object store %s answering again after %.0fs", self.store.location,
                        time.time() - self.unreachable_since)
        self.unreachable_since = None

    def problems(self) -> list[str]:
        if not self.checked:
            return ["object store not checked yet: looking at the bucket"]
        if self.unreachable_since is None:
            return []
        return [f"object store failing for {time.time() - self.unreachable_since:.0f}s: {self.last_store_error}"]

    def stats(self) -> StorageStats:
        """The bucket's entries and bytes as this frontend knows them; disk figures are the tier's."""
        local = self.tier.stats()
        return dataclasses.replace(local, entries=len(self.lru.sizes), bytes=self.lru.total,
                                   max_bytes=self.lru.max_bytes)

    # ------------------------------------------------------------- lifecycle

    def sync_in_batches(self, loop: asyncio.AbstractEventLoop) -> None:
        self.tier.sync_in_batches(loop)

    def stop_syncing(self) -> None:
        self.tier.stop_syncing()

    def flush(self) -> None:
        self.tier.flush()

    def scrub(self, **kwargs):  # noqa: ANN003, ANN201 - the tier's scrub (the bucket's objects carry their digest)
        return self.tier.scrub(**kwargs)

    def close(self) -> None:
        self.tier.close()

    async def aclose(self) -> None:
        await self.store.close()


def _md5_of(blob: Blob) -> bytes:
    digest = hashlib.md5(usedforsecurity=False)
    done = 0
    while done < blob.size:
        chunk = os.pread(blob.fd, min(1 << 20, blob.size - done), blob.offset + done)
        if not chunk:
            raise NotStored("not stored: the upload's file is shorter than its size")
        digest.update(chunk)
        done += len(chunk)
    return digest.digest()


def _finished(upload) -> asyncio.Future[None]:  # noqa: ANN001 - a tier Upload
    """The tier upload's `finish` (which may wait for a batched fsync) as an awaitable."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def done(error: BaseException | None) -> None:
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(None)

    upload.finish(done)
    return future


class S3Upload:
    """An upload into the tier that, once committed there, goes to the bucket."""

    def __init__(self, storage: S3Storage, key: str, inner) -> None:  # noqa: ANN001 - a tier Upload
        self.storage, self.key, self.inner = storage, key, inner

    @property
    def written(self) -> int:
        return self.inner.written

    def write(self, chunk: bytes) -> None:
        self.inner.write(chunk)

    def commit(self) -> None:
        raise NotImplementedError("the S3 backend commits through finish(), on the event loop")

    def finish(self, done: Callable[[BaseException | None], None]) -> None:
        def committed(error: BaseException | None) -> None:
            if error is not None:
                done(error)
                return
            task = asyncio.ensure_future(self.storage.push(self.key))
            task.add_done_callback(lambda t: done(None if t.cancelled() else t.exception()))

        self.inner.finish(committed)

    def abort(self) -> None:
        self.inner.abort()
