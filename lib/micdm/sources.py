"""Discovery: list DICOM candidates under the configured roots on any fsspec filesystem.

A root is listed on the driver (object stores list a thousand keys per request), or (sources.listing:
split) its folders a few levels down are found on the driver and listed apart, by Spark tasks. What is
new or changed since the last run is found by comparing the listing with the file_inventory table
(micdm.inventory). Reading the files' bytes is micdm.transport's.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import os
import posixpath
import stat
import types
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import fsspec
import fsspec.asyn
from fsspec.core import url_to_fs

from micdm.config import SourceSettings
from micdm.errors import SourceError
from micdm.secrets import resolve_references

__all__ = ["DiscoveredFile", "is_local", "list_below", "list_files", "list_prefixes", "open_filesystem", "root_prefix"]

_LOCAL_PROTOCOLS = {"file", "local"}


@dataclass(frozen=True)
class DiscoveredFile:
    path: str
    file_size: int
    modification_time: dt.datetime | None
    etag: str | None


def _protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    return set(fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,))


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return bool(_LOCAL_PROTOCOLS & _protocols(fs))


def _mtime(info: dict[str, Any]) -> dt.datetime | None:
    value = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("updated")
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, tz=dt.UTC)
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _etag(info: dict[str, Any]) -> str | None:
    value = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    return str(value).strip('"') if value else None


def _selected(relative: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    def matches(patterns: tuple[str, ...]) -> bool:
        return any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(posixpath.basename(relative), p) for p in patterns)

    return matches(include) and not matches(exclude)


#: The Azure SDK's retry settings (by default three retries, backing off from 15 s), which adlfs accepts
#: among its options but does not hand to the SDK: micdm adds them to the options of every read.
_AZURE_RETRY_OPTIONS = ("retry_total", "retry_connect", "retry_read", "retry_status")


def _bound_gcs_tries(fs: fsspec.AbstractFileSystem, tries: int) -> None:
    """Make each of gcsfs's requests try ``tries`` times. gcsfs fixes six tries, backing off for about 30 s,
    when its class is defined, and accepts a ``retries`` option without using it; its retrying wrapper is
    applied again here, with the number given."""
    if "_request" in vars(fs):  # fsspec hands back the same instance for the same options, count included
        return
    from gcsfs.retry import retry_request

    request = type(fs)._request
    fs._request = types.MethodType(retry_request(retries=tries)(request.__wrapped__), fs)


def open_filesystem(url: str, storage_options: dict[str, Any]) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem holding ``url`` and the path within it, with the storage options applied."""
    fs, path = url_to_fs(url, **storage_options)
    per_request = getattr(fs, "_timeout_kwargs", None)  # adlfs: the options it passes to each SDK read
    if isinstance(per_request, dict):
        per_request.update({k: storage_options[k] for k in _AZURE_RETRY_OPTIONS if k in storage_options})
    if "retries" in storage_options and "gs" in _protocols(fs):
        _bound_gcs_tries(fs, int(storage_options["retries"]))
    return fs, path


def _resolve_root(root: str, storage_options: dict[str, Any]) -> tuple[fsspec.AbstractFileSystem, str, bool]:
    fs, root_path = open_filesystem(root, resolve_references(storage_options))
    local = is_local(fs)
    return fs, fs._strip_protocol(root_path) if local else root_path, local


def root_prefix(root: str, storage_options: dict[str, Any]) -> str:
    """The form paths under ``root`` take in the tables: absolute local paths, or URLs as the root is written.

    The root's own URL is kept rather than the filesystem's: ``abfss://container@account.dfs.core.windows.net``
    names the storage account, which adlfs's short form (``abfs://container``) drops.
    """
    _, root_path, local = _resolve_root(root, storage_options)
    return root_path if local else root.rstrip("/")


def _relative(path: str, base: str) -> str:
    """``path`` below ``base`` (which ends with a slash); a slice, as relpath costs more than the listing."""
    return path[len(base):] if path.startswith(base) else posixpath.relpath(path, base)


def _as_written(path: str, base: str, prefix: str, fs: fsspec.AbstractFileSystem) -> str:
    """A listed object's URL under the root as the user wrote it (a root naming a single object: its own)."""
    return prefix + path[len(base):] if path.startswith(base) else fs.unstrip_protocol(path)


def _cannot_list(root: str, error: Exception) -> SourceError:
    return SourceError(f"cannot list {root}: {type(error).__name__}: {error}"[:500])


def _listed(root: str, settings: SourceSettings) -> tuple[fsspec.AbstractFileSystem, str, bool]:
    """The filesystem of ``root`` and its path there; a root that cannot be opened is a SourceError."""
    try:
        return _resolve_root(root, settings.storage_options)
    except Exception as error:
        raise _cannot_list(root, error) from None


def _find_local(path: str) -> dict[str, dict[str, Any]] | None:
    """What fsspec's local ``find(path, detail=True)`` gives discovery (type, islink, size, mtime), None when
    ``path`` is no folder. It walks with os.scandir and one lstat per entry, as fsspec does, without fsspec's
    second stat of every folder and its info dictionaries. As in fsspec, a
    linked folder is an entry, not walked; a link's size is its target's (0 when dangling) and its mtime the
    link's own; a folder that cannot be listed is left out."""
    try:
        if not stat.S_ISDIR(os.stat(path).st_mode):
            return None
    except OSError:
        return None
    found: dict[str, dict[str, Any]] = {}
    folders = [path]
    while folders:
        folder = folders.pop()
        listed: dict[str, dict[str, Any]] = {}
        below: list[str] = []
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            below.append(entry.path)
                            continue
                        own = entry.stat(follow_symlinks=False)
                        link = entry.is_symlink()
                        size = own.st_size
                        if link:
                            try:
                                size = entry.stat(follow_symlinks=True).st_size
                            except OSError:
                                size = 0
                        kind = "file" if entry.is_file(follow_symlinks=False) else "other"
                    except FileNotFoundError:  # gone since the folder was read
                        continue
                    listed[entry.path] = {"name": entry.path, "size": size, "type": kind, "islink": link,
                                          "mtime": own.st_mtime}
        except OSError:
            continue
        found.update(listed)
        folders += below
    return found


def _find(fs: fsspec.AbstractFileSystem, path: str, root: str) -> dict[str, dict[str, Any]]:
    try:
        local = _find_local(path) if is_local(fs) else None
        found: dict[str, dict[str, Any]] = fs.find(path, detail=True) if local is None else local
        if not found and not fs.exists(path):
            raise FileNotFoundError(f"no such folder or prefix: {path}")
    except Exception as error:
        raise _cannot_list(root, error) from None
    return found


def _selected_files(found: dict[str, dict[str, Any]], root: str, root_path: str, local: bool,
                    fs: fsspec.AbstractFileSystem, settings: SourceSettings) -> Iterator[DiscoveredFile]:
    """The files among ``found`` (a listing below ``root``) that the globs select, in path order."""
    base = root_path.rstrip("/") + "/"
    prefix = root.rstrip("/") + "/"  # the root as written: it may name what the short form drops
    select_all = settings.include == ("**",) and not settings.exclude
    for path, info in sorted(found.items()):
        if info.get("type") not in (None, "file") and not info.get("islink"):
            continue  # directories; a dangling link stays, so its read fails and it is accounted for
        if not select_all and not _selected(_relative(path, base), settings.include, settings.exclude):
            continue
        yield DiscoveredFile(
            path=path if local else _as_written(path, base, prefix, fs),
            file_size=int(info.get("size") or 0),
            modification_time=_mtime(info),
            etag=_etag(info),
        )


def list_files(settings: SourceSettings) -> Iterator[DiscoveredFile]:
    """Every file under the roots that the include/exclude globs select, with size, mtime and etag."""
    for root in settings.roots:
        fs, root_path, local = _listed(root, settings)
        yield from _selected_files(_find(fs, root_path, root), root, root_path, local, fs, settings)


#: Folders listed at once (by the driver, and by each listing task): a listing mostly waits on the store.
_FOLDERS_AT_ONCE = 16


def list_prefixes(settings: SourceSettings) -> tuple[list[tuple[str, str]], list[DiscoveredFile]]:
    """Each root's folders ``settings.listing_depth`` levels down, as (root, folder) pairs to list apart,
    and the files found above that level (a PACS export's levels: patient, study, series)."""
    prefixes: list[tuple[str, str]] = []
    files: list[DiscoveredFile] = []
    for root in settings.roots:
        fs, root_path, local = _listed(root, settings)
        fs.invalidate_cache()  # a listing is of now: an earlier find leaves folders out of the cached ones

        def entries_of(folder: str, root: str = root, fs: fsspec.AbstractFileSystem = fs) -> list[dict[str, Any]]:
            try:
                return list(fs.ls(folder, detail=True))
            except Exception as error:
                raise _cannot_list(root, error) from None

        level = [root_path]
        for _ in range(settings.listing_depth):
            with ThreadPoolExecutor(max_workers=_FOLDERS_AT_ONCE) as pool:
                entries = {info["name"]: info for listed in pool.map(entries_of, level) for info in listed}
            level = sorted(name for name, info in entries.items() if info.get("type") == "directory")
            files += _selected_files({n: i for n, i in entries.items() if i.get("type") != "directory"},
                                     root, root_path, local, fs, settings)
        prefixes += [(root, folder) for folder in level]
    return prefixes, files


def list_below(settings: SourceSettings, root: str, folders: list[str]) -> Iterator[DiscoveredFile]:
    """Every selected file below ``folders`` of ``root``, several folders listed at once."""
    fs, root_path, local = _listed(root, settings)
    with ThreadPoolExecutor(max_workers=_FOLDERS_AT_ONCE) as pool:
        for found in pool.map(lambda folder: _find(fs, folder, root), folders):
            yield from _selected_files(found, root, root_path, local, fs, settings)
