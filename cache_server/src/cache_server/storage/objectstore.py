"""An S3-compatible bucket, as the S3 backend uses it: get an object as a stream, put one only if
it does not exist, delete one. aiobotocore on the running event loop; one client per process,
made on first use (after any fork).

Write-once: `PutObject` with `If-None-Match: *` (a store that honours it answers 412 to a second
writer: Ceph RGW, MinIO, Garage, AWS), one request per body (no multipart: RGW ignores the
condition on multipart completion), with `Content-MD5` so that the store refuses a body damaged
on the way, and the entry's XXH3-128 in the object's metadata, checked again on every read.
Credentials come from botocore's chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or the file
AWS_SHARED_CREDENTIALS_FILE names): never from the command line, and never logged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

DIGEST_META = "xxh3-128"  # x-amz-meta-xxh3-128: hex digest of the body
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX = re.compile(r"[A-Za-z0-9._/-]{0,512}")


class StoreUnavailable(Exception):
    """The store did not answer, or answered with an error that is not about the object."""


class ObjectExists(Exception):
    """A conditional put lost: the object is there already (412)."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or "a/b/" (ends with a slash)

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """`s3://BUCKET[/PREFIX]`; ValueError naming what is wrong."""
        if not url.startswith("s3://"):
            raise ValueError(f"{url!r} is not an s3:// URL")
        bucket, _, prefix = url[len("s3://"):].partition("/")
        if not _BUCKET.fullmatch(bucket):
            raise ValueError(f"{url!r}: bucket {bucket!r} must be 3-63 lowercase letters, digits, '.' and '-'")
        prefix = prefix.strip("/")
        if not _PREFIX.fullmatch(prefix) or "//" in prefix or ".." in prefix.split("/"):
            raise ValueError(f"{url!r}: prefix {prefix!r} may contain letters, digits, '.', '_', '-' and '/'")
        return cls(bucket, prefix + "/" if prefix else "")

    def object_key(self, key: str) -> str:
        return self.prefix + key

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass
class Found:
    size: int
    digest: str  # hex, "" when the object carries none
    chunks: AsyncIterator[bytes]
    release: Any  # call when done reading (returns the connection to the pool)


class _Window(io.RawIOBase):
    """Bytes [offset, offset+size) of a file descriptor as a seekable, readable file, so that a
    body on disk streams to the store (and rewinds for a retry) without being held in memory."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        super().__init__()
        self._fd, self._start, self._size, self._pos = fd, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, min(self._size, base + pos))
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._size - self._pos)
        if n <= 0:
            return 0
        data = os.pread(self._fd, n, self._start + self._pos)
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)


class ObjectStore:
    def __init__(self, location: S3Location, endpoint: str | None, region: str, timeout: float) -> None:
        self.location = location
        self.endpoint = endpoint
        self.region = region
        self.timeout = timeout
        self._client: Any = None
        self._entered: Any = None
        self._pid = 0
        self._session: Any = None

    def warm(self) -> None:
        """Before `--workers` fork: load what every client needs (botocore's models and endpoint
        rules, a few hundred ms) into the session the workers inherit, so that each worker's own
        client is ready within milliseconds of the supervisor saying it listens."""
        async def make_and_close() -> None:
            await self._s3()
            await self.close()

        asyncio.run(make_and_close())

    async def _s3(self) -> Any:
        if self._client is None or self._pid != os.getpid():
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session

            config = AioConfig(s3={"addressing_style": "path"}, connect_timeout=self.timeout,
                               read_timeout=self.timeout, retries={"max_attempts": 2, "mode": "standard"},
                               request_checksum_calculation="when_required",
                               response_checksum_validation="when_required", max_pool_connections=64)
            if self._session is None:
                self._session = get_session()
            self._entered = self._session.create_client("s3", endpoint_url=self.endpoint, region_name=self.region,
                                                        config=config)
            self._client = await self._entered.__aenter__()
            self._pid = os.getpid()
        return self._client

    async def connect(self) -> None:
        await self._s3()

    async def close(self) -> None:
        if self._entered is not None and self._pid == os.getpid():
            await self._entered.__aexit__(None, None, None)
        self._client = self._entered = None

    async def _call(self, operation: str, budget: float = 0.0, **params: Any) -> Any:
        """One S3 call, bounded in time (three timeouts, plus `budget` seconds for a body to
        travel); errors sorted into: missing (None), exists, unavailable."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            s3 = await self._s3()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
            # arrives as the call completes, and a server stopping then waits forever for this task.
            async with asyncio.timeout(self.timeout * 3 + budget):
                return await getattr(s3, operation)(Bucket=self.location.bucket, **params)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "404", "NotFound"):
                return None
            if code in ("PreconditionFailed", "412") or status == 412:
                raise ObjectExists(params.get("Key", "")) from None
            raise StoreUnavailable(f"{operation}: {code or status}: {error.get('Message', '')}"[:300]) from None
        except (BotoCoreError, OSError, asyncio.TimeoutError) as exc:
            raise StoreUnavailable(f"{operation}: {type(exc).__name__}: {str(exc)[:200]}") from None
        except Exception as exc:  # aiohttp's own errors (ClientPayloadError, ServerDisconnectedError...)
            if type(exc).__module__.startswith(("aiohttp", "aiobotocore", "botocore")):
                raise StoreUnavailable(f"{operation}: {type(exc).__name__}: {str(exc)[:200]}") from None
            raise

    async def get(self, key: str) -> Found | None:
        response = await self._call("get_object", Key=self.location.object_key(key))
        if response is None:
            return None
        body = response["Body"]

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while True:
                    async with asyncio.timeout(self.timeout * 3):
                        chunk = await body.read(256 * 1024)
                    if not chunk:
                        break
                    yield chunk
            except Exception as exc:  # noqa: BLE001 - a body cut off is the store failing, whatever raised it
                raise StoreUnavailable(f"get_object body: {type(exc).__name__}: {str(exc)[:200]}") from None

        metadata = {k.lower(): v for k, v in (response.get("Metadata") or {}).items()}
        return Found(int(response["ContentLength"]), metadata.get(DIGEST_META, ""), chunks(), body.close)

    async def put_new(self, key: str, body: bytes | tuple[int, int, int], size: int, md5_b64: str,
                      digest: str) -> None:
        """Store `body` (bytes, or (fd, offset, size) of a file) unless the key exists
        (ObjectExists). Nothing is stored when the upload does not complete."""
        payload: Any = body if isinstance(body, bytes) else _Window(*body)
        # A body may take its time, as long as it moves at 1 MB/s or more (botocore's read timeout
        # catches a store that stops reading).
        await self._call("put_object", size / 1e6, Key=self.location.object_key(key), Body=payload, ContentLength=size,
                         ContentMD5=md5_b64, IfNoneMatch="*", Metadata={DIGEST_META: digest},
                         ContentType="application/octet-stream")

    async def check_bucket(self) -> None:
        """StoreUnavailable unless the bucket exists and these credentials may use it."""
        try:
            found = await self._call("head_bucket")
        except StoreUnavailable as exc:
            if "403" in str(exc):  # a HEAD's answer has no body to say why
                raise StoreUnavailable(f"{exc}: the credentials are wrong, or may not use bucket "
                                       f"{self.location.bucket!r}") from None
            raise
        if found is None:
            raise StoreUnavailable(f"head_bucket: bucket {self.location.bucket!r} does not exist (create it first)")

    async def delete(self, key: str) -> None:
        await self._call("delete_object", Key=self.location.object_key(key))

    async def put_object(self, key: str, body: bytes) -> None:
        """A small object of our own (not an entry), overwritten freely."""
        await self._call("put_object", Key=self.location.object_key(key), Body=body, ContentLength=len(body),
                         ContentMD5=base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode())

    async def read(self, key: str) -> bytes | None:
        found = await self.get(key)
        if found is None:
            return None
        try:
            return b"".join([chunk async for chunk in found.chunks])
        finally:
            found.release()

    async def list(self, under: str) -> AsyncIterator[tuple[str, int, float]]:
        """(key relative to the prefix, size, LastModified as a Unix time) of every object under
        `under` (relative to the prefix), a page (1,000) per request."""
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Prefix": self.location.object_key(under), "MaxKeys": 1000}
            if token:
                params["ContinuationToken"] = token
            page = await self._call("list_objects_v2", **params)
            for item in (page or {}).get("Contents", []):
                yield item["Key"][len(self.location.prefix):], int(item["Size"]), item["LastModified"].timestamp()
            token = (page or {}).get("NextContinuationToken")
            if not token:
                return
