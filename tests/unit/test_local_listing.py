"""Local folders are listed without fsspec's walk, and list exactly what it lists."""

from __future__ import annotations

import os
from pathlib import Path

import fsspec
import pytest

from micdm import sources
from micdm.config import SourceSettings


def _tree(root: Path) -> Path:
    """Files two levels down, an empty folder, and links: to a file, to a folder, to nothing."""
    (root / "a" / "b").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a" / "1.dcm").write_bytes(b"x" * 10)
    (root / "a" / "b" / "2.dcm").write_bytes(b"y" * 20)
    (root / "top.dcm").write_bytes(b"z")
    os.symlink(root / "a" / "1.dcm", root / "to_file.dcm")
    os.symlink(root / "a", root / "to_folder")
    os.symlink(root / "missing.dcm", root / "dangling.dcm")
    os.utime(root / "to_file.dcm", (1_000_000, 1_000_000), follow_symlinks=False)  # the link's own mtime
    return root


def _seen(found: dict) -> dict:
    return {path: (info["type"], info["islink"], info["size"], info["mtime"]) for path, info in found.items()}


def test_a_local_folder_lists_what_fsspec_lists(tmp_path: Path) -> None:
    root = str(_tree(tmp_path / "export"))
    listed = sources._find_local(root)
    assert listed is not None
    assert _seen(listed) == _seen(fsspec.filesystem("file").find(root, detail=True))
    assert {Path(p).name for p in listed} == {"1.dcm", "2.dcm", "top.dcm", "to_file.dcm", "to_folder", "dangling.dcm"}


def test_discovery_finds_the_same_files_either_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = SourceSettings(roots=(str(_tree(tmp_path / "export")),))
    fast = list(sources.list_files(settings))
    monkeypatch.setattr(sources, "_find_local", lambda path: None)  # fsspec's own find
    assert fast == list(sources.list_files(settings))
    assert len(fast) == 6 and [f.path for f in fast] == sorted(f.path for f in fast)


def test_a_root_that_is_a_file_or_missing_is_left_to_fsspec(tmp_path: Path) -> None:
    (tmp_path / "one.dcm").write_bytes(b"x")
    assert sources._find_local(str(tmp_path / "one.dcm")) is None
    assert sources._find_local(str(tmp_path / "absent")) is None
