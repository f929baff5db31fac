"""Reading first blocks ahead: every file gets its bytes or its own error, and later ranges still work."""

from __future__ import annotations

from pathlib import Path

import pytest

from micdm.sources import opener, read_first_blocks, with_first_block


def test_first_blocks_in_order_with_errors_in_place(tmp_path: Path) -> None:
    small, large = tmp_path / "small.bin", tmp_path / "large.bin"
    small.write_bytes(b"abc")
    large.write_bytes(bytes(range(256)) * 10)
    gone = tmp_path / "gone.bin"
    paths = [str(large), str(gone), str(small)]
    blocks = read_first_blocks(paths, [2560, 100, 3], 1000, {}, 4)
    assert blocks[0] == large.read_bytes()[:1000]
    assert isinstance(blocks[1], FileNotFoundError)
    assert blocks[2] == b"abc"


def test_with_first_block_serves_the_start_once_then_reads(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(200)))
    calls: list[tuple[int, int]] = []
    base = opener(str(path), {})

    def counting(start: int, end: int) -> bytes:
        calls.append((start, end))
        return base(start, end)

    fetch = with_first_block(path.read_bytes()[:100], counting)
    assert fetch(0, 100) == bytes(range(100)) and calls == []
    assert fetch(100, 150) == bytes(range(100, 150)) and calls == [(100, 150)]
    again = with_first_block(path.read_bytes()[:100], counting)
    assert again(0, 120) == bytes(range(120)) and calls[-1] == (100, 120)


def test_with_first_block_raises_the_stored_error_then_retries() -> None:
    fetch = with_first_block(ConnectionError("reset"), lambda start, end: b"x" * (end - start))
    with pytest.raises(ConnectionError):
        fetch(0, 4)
    assert fetch(0, 4) == b"xxxx"  # the reader's retry goes to the storage
