"""One run at a time per warehouse: a second run started while one is writing fails fast.

Delta's optimistic concurrency already refuses conflicting commits, but two runs interleaving their
stages could each see half of the other's work; so a run holds an exclusive lock for its whole
length. With local tables that is an OS lock (flock) on a file beside them, which the kernel releases
when the process dies, even by kill -9, so a crashed run never blocks the next one. Tables in a Unity
Catalog catalog are serialised by the job itself (max_concurrent_runs: 1 in resources/micdm_job.yml).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from micdm.config import StorageSettings
from micdm.errors import RunInProgressError

__all__ = ["exclusive_run", "lock_path"]

def lock_path(storage: StorageSettings) -> Path | None:
    """The lock file of the local warehouse, None when tables live in a catalog."""
    if storage.catalog:
        return None
    return Path(storage.warehouse).expanduser().resolve() / ".micdm-run.lock"


@contextlib.contextmanager
def exclusive_run(storage: StorageSettings) -> Iterator[None]:
    """Hold the warehouse's run lock for the block; RunInProgressError names the holder if it is taken."""
    path = lock_path(storage)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunInProgressError(f"another micdm run is writing to {path.parent} ({holder}); "
                                 "wait for it to finish, then run again") from None
    try:
        handle.seek(0)
        handle.truncate()
        started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the flock
