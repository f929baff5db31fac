"""Discovery: list DICOM candidates under the configured roots on any fsspec filesystem.

Listing happens on the driver (object stores list a thousand keys per request); what is new or
changed since the last run is found by comparing the listing with the file_inventory table.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from micdm.config import SourceSettings

__all__ = ["DiscoveredFile", "is_local", "list_files", "opener", "root_prefix"]

_LOCAL_PROTOCOLS = {"file", "local"}


@dataclass(frozen=True)
class DiscoveredFile:
    path: str
    file_size: int
    modification_time: dt.datetime | None
    etag: str | None


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return bool(_LOCAL_PROTOCOLS & set(protocols))


def _mtime(info: dict[str, Any]) -> dt.datetime | None:
    value = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("updated")
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, tz=dt.timezone.utc)
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _etag(info: dict[str, Any]) -> str | None:
    value = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    return str(value).strip('"') if value else None


def _selected(relative: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    def matches(patterns: tuple[str, ...]) -> bool:
        return any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(posixpath.basename(relative), p) for p in patterns)

    return matches(include) and not matches(exclude)


def _resolve_root(root: str, storage_options: dict[str, Any]) -> tuple[fsspec.AbstractFileSystem, str, bool]:
    fs, root_path = url_to_fs(root, **storage_options)
    local = _is_local(fs)
    return fs, fs._strip_protocol(root_path) if local else root_path, local


def root_prefix(root: str, storage_options: dict[str, Any]) -> str:
    """The form paths under ``root`` take in the tables: absolute local paths, or full URLs."""
    fs, root_path, local = _resolve_root(root, storage_options)
    return root_path if local else fs.unstrip_protocol(root_path)


def list_files(settings: SourceSettings) -> Iterator[DiscoveredFile]:
    """Every file under the roots that the include/exclude globs select, with size, mtime and etag."""
    for root in settings.roots:
        fs, root_path, local = _resolve_root(root, settings.storage_options)
        found = fs.find(root_path, detail=True)
        for path, info in sorted(found.items()):
            if info.get("type") not in (None, "file"):
                continue
            relative = posixpath.relpath(path, root_path.rstrip("/") or "/")
            if not _selected(relative, settings.include, settings.exclude):
                continue
            yield DiscoveredFile(
                path=path if local else fs.unstrip_protocol(path),
                file_size=int(info.get("size") or 0),
                modification_time=_mtime(info),
                etag=_etag(info),
            )


def is_local(path: str, storage_options: dict[str, Any]) -> bool:
    """Whether ``path`` is on a local (or mounted, like /Volumes) filesystem rather than object storage."""
    return _is_local(url_to_fs(path, **storage_options)[0])


def opener(path: str, storage_options: dict[str, Any]) -> Any:
    """A ``fetch(start, end)`` callable for one file: plain file reads locally, ranged GETs elsewhere."""
    fs, stripped = url_to_fs(path, **storage_options)
    if _is_local(fs):
        def fetch_local(start: int, end: int) -> bytes:
            with open(stripped, "rb") as handle:
                handle.seek(start)
                return handle.read(end - start)

        return fetch_local

    def fetch_remote(start: int, end: int) -> bytes:
        return fs.cat_file(stripped, start=start, end=end)

    return fetch_remote
