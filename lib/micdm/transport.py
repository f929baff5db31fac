"""Transport: the bytes of a file, read as little and as early as the store allows.

Local files are read with pread and a read-ahead hint to the kernel (threads where the folder is a
network mount); objects in a store through fsspec, and on S3 by presigned ranged GETs over one aiohttp
session. Every use of s3fs's and botocore's internals is in _S3Presigner, which falls back to s3fs's
own presigning, and says so once, when they are not as expected.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import fsspec
import fsspec.asyn

from micdm.sources import is_local, open_filesystem

__all__ = ["Fetch", "on_network_mount", "opener", "parse_mounts", "read_first_blocks", "with_first_block"]

log = logging.getLogger(__name__)


Fetch = Callable[[int, int], bytes]


def _read_range(path: str, start: int, end: int) -> bytes:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        parts: list[bytes] = []
        while start < end:  # one pread returns at most about 2 GiB
            part = os.pread(descriptor, end - start, start)
            if not part:
                break
            parts.append(part)
            start += len(part)
        return b"".join(parts)
    finally:
        os.close(descriptor)


#: Filesystem types where a read waits on the network: read ahead with threads, not with the kernel's hint.
_NETWORK_FILESYSTEMS = frozenset({"fuse", "fuseblk", "nfs", "nfs4", "cifs", "smb3", "9p", "ceph", "glusterfs",
                                  "lustre", "gpfs"})


def parse_mounts(text: str) -> tuple[tuple[str, str], ...]:
    """(mount point, filesystem type) of each line of /proc/mounts, deepest mount point first."""
    mounts = [(fields[1].replace("\\040", " "), fields[2]) for fields in map(str.split, text.splitlines())
              if len(fields) >= 3]
    return tuple(sorted(mounts, key=lambda mount: len(mount[0]), reverse=True))


@functools.lru_cache(maxsize=1)
def _mounts() -> tuple[tuple[str, str], ...]:
    try:
        return parse_mounts(Path("/proc/mounts").read_text(encoding="utf-8"))
    except OSError:  # not Linux: every local path counts as a local disk
        return ()


@functools.lru_cache(maxsize=1024)
def on_network_mount(folder: str, mounts: tuple[tuple[str, str], ...] | None = None) -> bool:
    """Whether a local folder lies on a network or FUSE mount (NFS, SMB, a Unity Catalog volume)."""
    for point, kind in _mounts() if mounts is None else mounts:
        if folder == point or folder.startswith(point.rstrip("/") + "/"):
            return kind.split(".")[0] in _NETWORK_FILESYSTEMS
    return False


def _hint_read_ahead(path: str, end: int) -> BaseException | None:
    """Ask the kernel to read a file's first ``end`` bytes in the background; the open's error, if any."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError as error:
        return error
    try:
        os.posix_fadvise(descriptor, 0, end, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass  # only a hint: the read that follows works without it
    finally:
        os.close(descriptor)
    return None


def _local_first_blocks(paths: list[str], ends: list[int], concurrency: int) -> list[bytes | BaseException | None]:
    """First blocks of local files, None where the caller should read the file itself.

    On network mounts, where each read waits on the network, the blocks are read with threads. On local
    disks they are only hinted to the kernel, which reads them while the caller parses: threads reading
    here would hold the GIL the parse needs, and cost more than they hide.
    """
    found: list[bytes | BaseException | None] = [None] * len(paths)
    remote = [index for index, path in enumerate(paths) if on_network_mount(os.path.dirname(path))]
    if remote:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            blocks = pool.map(_read_or_error, [paths[i] for i in remote], [ends[i] for i in remote])
            for index, block in zip(remote, blocks, strict=True):
                found[index] = block
    if hasattr(os, "posix_fadvise"):
        for index, path in enumerate(paths):
            if found[index] is None:
                found[index] = _hint_read_ahead(path, ends[index])
    return found


def _locate(path: str, storage_options: dict[str, Any]) -> tuple[fsspec.AbstractFileSystem | None, str]:
    """The filesystem holding ``path`` (None for a local file) and the path within it.

    A path without a scheme is local and skips fsspec, whose lookup is costly next to parsing a header.
    """
    if "://" not in path:
        return None, path
    fs, stripped = open_filesystem(path, storage_options)
    return (None, stripped) if is_local(fs) else (fs, stripped)


def opener(path: str, storage_options: dict[str, Any]) -> Fetch:
    """A ``fetch(start, end)`` callable for one file: plain file reads locally, ranged GETs elsewhere."""
    fs, stripped = _locate(path, storage_options)
    if fs is None:
        return functools.partial(_read_range, stripped)

    def fetch_remote(start: int, end: int) -> bytes:
        try:
            return fs.cat_file(stripped, start=start, end=end)
        except OSError:
            raise
        except Exception as error:
            raise _as_storage_error(error) from error

    return fetch_remote


def _as_storage_error(error: BaseException) -> BaseException:
    """A failed object-store read as an OSError, which the reader retries and quarantines as storage_error.

    botocore's, gcsfs's and the Azure SDK's connection errors (``ServiceRequestError``) are no OSError.
    """
    return error if isinstance(error, OSError) else OSError(f"{type(error).__name__}: {error}")


def read_first_blocks(paths: list[str], sizes: list[int], block_size: int, storage_options: dict[str, Any],
                      concurrency: int) -> list[bytes | BaseException | None]:
    """The first block of each file, many reads in flight at once; a failed read's error takes its place.

    Object stores get one batch of ``concurrency`` concurrent ranged GETs per filesystem (presigned URLs on
    S3, fsspec's ``cat_ranges`` elsewhere), which costs far less per file than one blocking request each.
    A local file's place may hold None instead: the caller reads it itself (see _local_first_blocks).
    """
    found: list[bytes | BaseException | None] = [b""] * len(paths)
    groups: dict[int, tuple[fsspec.AbstractFileSystem | None, list[int], list[str]]] = {}
    for index, path in enumerate(paths):
        fs, key = _locate(path, storage_options)
        _, indexes, keys = groups.setdefault(id(fs), (fs, [], []))
        indexes.append(index)
        keys.append(key)
    for fs, indexes, keys in groups.values():
        ends = [min(sizes[i], block_size) for i in indexes]
        if fs is None:
            blocks = _local_first_blocks(keys, ends, concurrency)
        elif _S3Presigner.applies(fs):
            blocks = fsspec.asyn.sync(fs.loop, _presigned_first_blocks, fs, keys, ends, concurrency)
        else:
            blocks = [_as_storage_error(b) if isinstance(b, BaseException) else b for b in
                      fs.cat_ranges(keys, [0] * len(keys), ends, batch_size=concurrency, on_error="return")]
        for index, block in zip(indexes, blocks, strict=True):
            found[index] = block
    return found


def _read_or_error(path: str, end: int) -> bytes | BaseException:
    try:
        return _read_range(path, 0, end)
    except OSError as error:
        return error


_HTTP_ERRORS: dict[int, type[OSError]] = {403: PermissionError, 404: FileNotFoundError}


class _S3Presigner:
    """Presigned GET URLs of many keys: the one place that reaches into s3fs's and botocore's internals.

    botocore resolves the endpoint again for every key (most of a presign's cost), though it depends
    only on the bucket; here s3fs's own client presigns one probe key per bucket, which fixes the endpoint
    and addressing style, and every key is signed on that base (SigV4, with the client's region and
    credentials). Should anything not be as expected, each key is presigned by s3fs instead, and a
    warning says so once per process.
    """

    probe_key = "micdm-presign-probe"
    fell_back = False

    @staticmethod
    def applies(fs: fsspec.AbstractFileSystem) -> bool:
        return type(fs).__name__ == "S3FileSystem" and hasattr(fs, "_url")

    @classmethod
    async def urls(cls, fs: Any, keys: list[str]) -> list[str]:
        try:
            return await cls._signed(fs, keys)
        except Exception as error:
            if not cls.fell_back:
                cls.fell_back = True
                log.warning("s3: presigning on a per-bucket base failed (%s); s3fs presigns each key instead, "
                            "at more CPU per file", type(error).__name__)
            return [await fs._url(key, expires=3600) for key in keys]

    @classmethod
    async def _signed(cls, fs: Any, keys: list[str]) -> list[str]:
        from botocore.auth import S3SigV4QueryAuth
        from botocore.awsrequest import AWSRequest

        await fs.set_session()
        credentials = fs.s3._request_signer._credentials  # the client's own, however they were configured
        frozen = credentials.get_frozen_credentials()
        frozen = await frozen if inspect.isawaitable(frozen) else frozen
        region = fs.s3.meta.region_name or "us-east-1"
        bases: dict[str, str] = {}
        urls = []
        for key in keys:
            bucket, name, _ = fs.split_path(key)
            if bucket not in bases:
                probe = urlsplit(await fs._url(f"{bucket}/{cls.probe_key}", expires=3600))
                if not probe.path.endswith(f"/{cls.probe_key}"):
                    raise ValueError("unexpected presigned URL form")
                bases[bucket] = f"{probe.scheme}://{probe.netloc}{probe.path[: -len(cls.probe_key)]}"
            request = AWSRequest(method="GET", url=bases[bucket] + quote(name, safe="/~"))
            S3SigV4QueryAuth(frozen, "s3", region, expires=3600).add_auth(request)
            urls.append(request.url)
        return urls


async def _presigned_first_blocks(fs: Any, keys: list[str], ends: list[int], concurrency: int
                                  ) -> list[bytes | BaseException]:
    """Ranged GETs of presigned URLs over one aiohttp session.

    s3fs signs and parses every request through botocore, about 1.8 ms of CPU each; a presigned URL
    and a plain GET cost a fraction of that, which matters with a million files. Errors never quote
    the URL: it carries a signature.
    """
    import aiohttp  # installed with s3fs (the s3 extra), like yarl
    import yarl

    wanted = [index for index, end in enumerate(ends) if end]
    urls: list[str | None] = [None] * len(keys)
    for index, url in zip(wanted, await _S3Presigner.urls(fs, [keys[i] for i in wanted]), strict=True):
        urls[index] = url
    timeout = aiohttp.ClientTimeout(sock_connect=10, sock_read=60)  # a hung store fails, it does not hang the task
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout) as session:

        async def get(url: str | None, end: int) -> bytes | BaseException:
            if url is None:
                return b""
            try:
                signed = yarl.URL(url, encoded=True)  # sent exactly as signed, never re-quoted
                async with session.get(signed, headers={"Range": f"bytes=0-{end - 1}"}) as response:
                    if response.status in (200, 206):
                        return (await response.read())[:end]
                    return _HTTP_ERRORS.get(response.status, OSError)(f"HTTP {response.status} from the object store")
            except (TimeoutError, aiohttp.ClientError, OSError) as error:
                return OSError(f"{type(error).__name__} reading from the object store")

        return list(await asyncio.gather(*(get(url, end) for url, end in zip(urls, ends, strict=True))))


def with_first_block(first: bytes | BaseException, fetch: Fetch) -> Fetch:
    """``fetch`` that answers its first request for the file's start from an already read block."""
    pending: list[bytes | BaseException] = [first]

    def serve(start: int, end: int) -> bytes:
        if start == 0 and pending:
            block = pending.pop()
            if isinstance(block, BaseException):
                raise block
            return block[:end] if len(block) >= end else block + fetch(len(block), end)
        return fetch(start, end)

    return serve
