"""Header-only reads from any fsspec filesystem, and the verdict on each file.

A file is fetched in byte ranges: the first block (64 KiB by default), then further ranges only
while pydicom's parse asks for more, which with ``stop_before_pixels`` ends at the pixel data element.
Deflated files are inflated by pydicom from the rest of the stream, so they are read whole. Every
file ends as an instance or with a quarantine reason; one bad file never raises out of here.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import io
import logging
import struct
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.datadict import dictionary_has_tag
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError

from micdm.config import ExtractSettings, Settings
from micdm.dicom.header import (
    READ_KEYS,
    EncodedHeader,
    encode_header,
    header_json,
    header_record,
    invalid_uids,
    missing_uids,
)
from micdm.dicom.sr_content import ContentError, content_rows, is_report
from micdm.dicom.walker import NeedMoreBytes, NotWalkable, ParsedHeader, walk_header
from micdm.reasons import FeatureReason

__all__ = [
    "PERMANENT_ERRORS",
    "Outcome",
    "QuarantineReason",
    "RangeReader",
    "ReadOptions",
    "extract_file",
    "quiet_pydicom",
]

_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


class Outcome(enum.StrEnum):
    INSTANCE = "instance"
    QUARANTINE = "quarantine"


class QuarantineReason(enum.StrEnum):
    """Why a file is not an instance; stored in dicom_quarantine.reason."""

    NOT_DICOM = "not_dicom"
    """No DICOM structure found, even with a forced read."""
    ZERO_BYTES = "zero_bytes"
    TRUNCATED = "truncated"
    """The data set ends in the middle of an element."""
    UNREADABLE = "unreadable"
    """Permission denied, or the file vanished between listing and reading."""
    STORAGE_ERROR = "storage_error"
    """The storage kept failing after the retries; re-read on the next run."""
    PARSE_ERROR = "parse_error"
    MISSING_UID = "missing_uid"
    """SOPInstanceUID, SeriesInstanceUID or StudyInstanceUID absent or empty (PS3.3 C.12.1, C.7.3.1)."""
    INVALID_UID = "invalid_uid"
    """A study, series or SOP instance UID that is not a valid UID (PS3.5 9.1); see the validation setting."""
    DICOMDIR = "dicomdir"
    """A Media Storage Directory (PS3.10 8.6), an index, not an image."""
    DUPLICATE_SOP_INSTANCE = "duplicate_sop_instance"
    """Another file holds the same SOPInstanceUID; the message says whether it is an identical copy (same
    size and header bytes) or different content."""


_EXTRACT = ExtractSettings()


@dataclass(frozen=True)
class ReadOptions:
    """How one file is read: the extract settings (their defaults here too) and the validation setting."""

    block_size: int = _EXTRACT.block_size
    max_retries: int = _EXTRACT.max_retries
    header_json_max_bytes: int = _EXTRACT.header_json_max_bytes
    retry_base_seconds: float = 0.2
    sr_max_items: int = _EXTRACT.sr_max_items
    max_nesting: int = _EXTRACT.max_nesting
    """Deepest nesting of sequences read (a deeper header is quarantined as parse_error)."""
    validation: str = Settings.validation
    """The validation setting: 'ignore' keeps a file with an invalid UID as an instance (with a parse warning);
    otherwise it is quarantined as invalid_uid."""


PERMANENT_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class RangeReader(io.RawIOBase):
    """A seekable, read-only view of a file that fetches only the byte ranges asked for.

    ``fetch(start, end)`` returns bytes [start, end). Reads are served from one growing buffer that
    starts at offset 0: pydicom reads a header front to back, so the buffer is exactly the prefix
    parsed so far, rounded up to the next block.
    """

    def __init__(self, fetch: Callable[[int, int], bytes], size: int, block_size: int, retries: int,
                 retry_base_seconds: float = 0.2) -> None:
        super().__init__()
        self._fetch = fetch
        self._size = size
        self._block = block_size
        self._retries = retries
        self._retry_base = retry_base_seconds
        self._buffer = bytearray()
        self._position = 0
        self.requests = 0
        self.short_read = False

    @property
    def bytes_read(self) -> int:
        return len(self._buffer)

    @property
    def size(self) -> int:
        return self._size

    def prefix(self, end: int) -> bytes:
        """The file's bytes up to ``end`` at least (the whole buffer, grown as needed), for the walker."""
        self._ensure(end)
        return bytes(self._buffer)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def _fetch_with_retries(self, start: int, end: int) -> bytes:
        for attempt in range(self._retries + 1):
            try:
                return self._fetch(start, end)
            except PERMANENT_ERRORS:
                raise
            except OSError:
                if attempt == self._retries:
                    raise
                time.sleep(self._retry_base * 2**attempt)
        raise AssertionError("unreachable")

    def _ensure(self, end: int) -> None:
        end = min(end, self._size)
        have = len(self._buffer)
        if end <= have:
            return
        # Grow by one block at a time at first, then doubling, so large headers need few requests.
        growth = self._block * 2 ** max(0, self.requests - 3)
        target = min(self._size, max(end, have + growth))
        chunk = self._fetch_with_retries(have, target)
        self.requests += 1
        self._buffer.extend(chunk)
        if len(chunk) < target - have:  # the file shrank under us
            self._size = len(self._buffer)

    def read(self, size: int = -1) -> bytes:
        end = self._size if size is None or size < 0 else self._position + size
        self._ensure(end)
        data = bytes(self._buffer[self._position:end])
        self._position += len(data)
        asked = end - (self._position - len(data))
        # pydicom ends a clean parse with an 8-byte tag read that finds nothing; any other read that
        # comes back short means the data set stops inside an element.
        if len(data) < asked and (data or asked != 8):
            self.short_read = True
        return data

    def readinto(self, target: Any) -> int:
        data = self.read(len(target))
        target[: len(data)] = data
        return len(data)


_quiet_lock = threading.Lock()
_quiet_depth = 0
_restore: list[Callable[[], None]] = []


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Keep pydicom's value warnings out of the logs while the block runs: they quote header values, which
    may be PHI. pydicom's validation mode, its logger's level and the warning filters are restored after.

    Counted, not nested: the reader's threads enter it for each file while the task holds it, so the
    process-wide settings change only when the first enters and the last leaves (changing the warning
    filters while other threads warn makes their warnings machinery fail, turning good values into NULLs).
    """
    global _quiet_depth
    with _quiet_lock:
        if _quiet_depth == 0:
            logger, mode = logging.getLogger("pydicom"), pydicom_config.settings.reading_validation_mode
            level, caught = logger.level, warnings.catch_warnings()
            caught.__enter__()
            warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
            pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
            logger.setLevel(logging.ERROR)

            def restore() -> None:
                caught.__exit__(None, None, None)
                pydicom_config.settings.reading_validation_mode = mode
                logger.setLevel(level)
            _restore.append(restore)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                _restore.pop()()


def _signature(reader: RangeReader) -> str | None:
    """Hex of the first 8 bytes and whether 'DICM' sits at offset 128: enough to tell a file's kind."""
    if reader.bytes_read == 0:
        return None
    head = reader.prefix(0)
    magic = head[128:132] == b"DICM"
    return f"{head[:8].hex()}{' DICM@128' if magic else ''}"


def _quarantine(base: dict[str, Any], reason: QuarantineReason, message: str,
                reader: RangeReader | None = None) -> dict[str, Any]:
    base.update(
        outcome=Outcome.QUARANTINE.value,
        reason=reason.value,
        message=message[:1000],
        bytes_read=reader.bytes_read if reader else 0,
        signature=_signature(reader) if reader else None,
    )
    return base


def _walk(reader: RangeReader, block_size: int) -> ParsedHeader | None:
    """The fast path: walk the header in memory; None when pydicom should read the file instead."""
    end = block_size
    while True:
        try:
            return walk_header(reader.prefix(end), reader.size)
        except NeedMoreBytes as more:
            end = more.end
        except (NotWalkable, RecursionError):
            return None


def _parse(reader: RangeReader) -> tuple[ParsedHeader, bool]:
    """Parse the header with pydicom; fall back to a forced read for files without the Part-10 preamble."""
    reader.seek(0)
    try:
        dataset, forced = dcmread(reader, stop_before_pixels=True), False
    except InvalidDicomError:
        reader.seek(0)
        dataset, forced = dcmread(reader, stop_before_pixels=True, force=True), True
    meta = getattr(dataset, "file_meta", None)
    header_end = reader.tell()
    parsed = ParsedHeader(
        dataset=dataset,
        transfer_syntax_uid=_uid(meta.get("TransferSyntaxUID") if meta else None),
        media_storage_sop_class_uid=_uid(meta.get("MediaStorageSOPClassUID") if meta else None),
        header_end=header_end,
        pixel_data_end=_declared_pixel_data_end(reader, header_end,
                                                little_endian=getattr(dataset, "is_little_endian", True) is not False),
    )
    return parsed, forced


def _uid(value: Any) -> str | None:
    return str(value).strip("\x00 ") or None if value else None


def _is_truncated(error: Exception) -> bool:
    return isinstance(error, EOFError)


def _looks_like_dicom(dataset: Any) -> bool:
    """A forced read of arbitrary bytes yields a few elements with random tags; DICOM yields known ones."""
    known = sum(1 for tag in dataset.keys() if dictionary_has_tag(tag))  # noqa: SIM118 (iterating yields elements)
    return known >= 3


def _declared_pixel_data_end(reader: RangeReader, start: int, little_endian: bool = True) -> int | None:
    """Where the pixel data element at ``start`` would end by its declared length (None if absent or
    undefined), the length read in the data set's byte order."""
    head = reader.prefix(start + 12)[start:start + 12]
    if len(head) < 8:
        return None
    order = "<" if little_endian else ">"
    if head[4:6].isalpha() and len(head) == 12:
        length = struct.unpack(f"{order}I", head[8:12])[0] if head[4:6] in (b"OB", b"OW", b"OF", b"OD", b"UN") \
            else None
        value_start = start + 12
    else:
        length = struct.unpack(f"{order}I", head[4:8])[0]
        value_start = start + 8
    return None if length is None or length == 0xFFFFFFFF else value_start + length


def _report_content(encoded: EncodedHeader, max_items: int) -> dict[str, Any]:
    """A report's content items (as JSON, for the sr_content_item table) or why they are not kept."""
    try:
        rows = content_rows(encoded.elements, max_items)
    except ContentError as error:
        return {"sr_content_reason": error.reason, "sr_content_message": str(error)[:1000]}
    except (TypeError, ValueError, AttributeError) as error:  # values of unexpected types in a damaged tree
        return {"sr_content_reason": FeatureReason.SR_MALFORMED,
                "sr_content_message": f"{type(error).__name__}: {error}"[:1000]}
    return {"sr_content": orjson.dumps(rows).decode("utf-8")}


class _TooDeep(Exception):
    """The header nests deeper than the current thread's recursion allows."""


#: Python frames one level of sequence nesting costs pydicom's reader and micdm's encoder, at most.
_FRAMES_PER_LEVEL = 16
#: Stack of the thread that reads a deeply nested header (address space; only the pages used are committed).
_DEEP_STACK_BYTES = 1 << 29
_deep_lock = threading.Lock()


def _on_deep_stack(read: Callable[[], dict[str, Any]], max_nesting: int) -> dict[str, Any]:
    """``read()`` on a thread whose stack and recursion limit hold ``max_nesting`` levels of sequences.

    The recursion limit is process-wide: it is raised only while this thread runs and the caller waits,
    and headers are parsed one at a time per process (the extract task's helper thread only fetches bytes).
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["row"] = read()
        except BaseException as error:
            outcome["error"] = error

    with _deep_lock:
        limit, stack = sys.getrecursionlimit(), threading.stack_size()
        sys.setrecursionlimit(max(limit, max_nesting * _FRAMES_PER_LEVEL))
        try:
            threading.stack_size(_DEEP_STACK_BYTES)
            worker = threading.Thread(target=run, name="micdm-deep-header")
            worker.start()
            threading.stack_size(stack)
            worker.join()
        finally:
            sys.setrecursionlimit(limit)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["row"]


def extract_file(
    fetch: Callable[[int, int], bytes],
    path: str,
    size: int,
    options: ReadOptions,
    modification_time: Any = None,
    etag: str | None = None,
) -> dict[str, Any]:
    """Read one file's header and return its extract_result row (instance or quarantine).

    A header nesting sequences deeper than Python's default recursion allows is read again on a thread
    with a deep stack, up to ``options.max_nesting`` levels; deeper still, it is quarantined as parse_error.
    """
    def read() -> dict[str, Any]:
        with quiet_pydicom():
            return _read_file(fetch, path, size, options, modification_time, etag)

    try:
        return read()
    except _TooDeep:
        pass
    try:
        return _on_deep_stack(read, options.max_nesting)
    except _TooDeep:
        row = {"path": path, "file_size": size, "modification_time": modification_time, "etag": etag}
        return _quarantine(row, QuarantineReason.PARSE_ERROR,
                           f"RecursionError: sequences nested deeper than {options.max_nesting} levels "
                           "(extract.max_nesting)")


def _read_file(fetch: Callable[[int, int], bytes], path: str, size: int, options: ReadOptions,
               modification_time: Any, etag: str | None) -> dict[str, Any]:
    base: dict[str, Any] = {
        "path": path,
        "file_size": size,
        "modification_time": modification_time,
        "etag": etag,
    }
    reader = RangeReader(fetch, size, options.block_size, options.max_retries, options.retry_base_seconds)
    try:
        if size == 0:
            fetch(0, 0)  # opens the file: a dangling link or a vanished file is unreadable, not empty
            return _quarantine(base, QuarantineReason.ZERO_BYTES, "file is empty")
        parsed, forced = _walk(reader, options.block_size), False
        if parsed is None:
            parsed, forced = _parse(reader)
    except PERMANENT_ERRORS as error:
        return _quarantine(base, QuarantineReason.UNREADABLE, f"{type(error).__name__}: {error}", reader)
    except Exception as error:
        if _from_recursion(error):
            raise _TooDeep() from None
        return _read_error(base, error, reader)
    return _verdict(base, parsed, forced, reader, options)


def _read_warnings(parsed: ParsedHeader, reader: RangeReader, cut: Any) -> list[str]:
    """What an instance's file lacks: the tail of its data set, or pixel data it declares."""
    warnings = []
    if reader.short_read:
        warnings.append(f"truncated_tail: data set ends inside {cut} at byte {reader.size}; that element is left out"
                        if cut is not None else
                        f"truncated: data set ends inside an element at byte {parsed.header_end}")
    if parsed.pixel_data_end is not None and parsed.pixel_data_end > reader.size:
        warnings.append(f"PixelData declares {parsed.pixel_data_end - parsed.header_end} bytes beyond "
                        f"byte {parsed.header_end}, the file holds {reader.size - parsed.header_end}")
    return warnings


def _cut_element(dataset: Any) -> Any:
    """The tag of the top-level element whose value the end of the data cut short, None when none was."""
    for tag, raw in dataset._dict.items():
        length, value = getattr(raw, "length", None), getattr(raw, "value", None)
        if isinstance(raw, RawDataElement) and length not in (None, 0xFFFFFFFF) and value is not None \
                and len(value) < length:
            return tag
    return None


def _from_recursion(error: BaseException) -> bool:
    """Whether a RecursionError caused ``error``: pydicom reports one met while reading as 'No tag to read'."""
    seen: BaseException | None = error
    for _ in range(32):
        if seen is None:
            return False
        if isinstance(seen, RecursionError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _read_error(base: dict[str, Any], error: Exception, reader: RangeReader) -> dict[str, Any]:
    """The quarantine row of a file whose header could not be read."""
    if isinstance(error, OSError) and "tag" not in str(error).lower() and not isinstance(error, EOFError):
        return _quarantine(base, QuarantineReason.STORAGE_ERROR, f"{type(error).__name__}: {error}", reader)
    if isinstance(error, InvalidDicomError):
        return _quarantine(base, QuarantineReason.NOT_DICOM, str(error), reader)
    # pydicom raises many kinds on malformed input
    reason = QuarantineReason.TRUNCATED if _is_truncated(error) else QuarantineReason.PARSE_ERROR
    return _quarantine(base, reason, f"{type(error).__name__}: {error}", reader)


def _verdict(base: dict[str, Any], parsed: ParsedHeader, forced: bool, reader: RangeReader,
             options: ReadOptions) -> dict[str, Any]:
    dataset = parsed.dataset
    if parsed.media_storage_sop_class_uid == _DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in dataset:
        return _quarantine(base, QuarantineReason.DICOMDIR, "Media Storage Directory (DICOMDIR)", reader)
    # After a 'DICM' marker without file meta, elements that are not DICOM's mean other data; no element
    # at all means a file cut short (truncated, below).
    unmarked = forced or (parsed.transfer_syntax_uid is None and len(dataset) > 0)
    if unmarked and not _looks_like_dicom(dataset):
        where = "even with a forced read" if forced else "after the 'DICM' marker (no file meta information)"
        return _quarantine(base, QuarantineReason.NOT_DICOM, f"no DICOM structure found, {where}", reader)
    cut = _cut_element(dataset) if reader.short_read else None
    if cut is not None and f"{int(cut):08X}" in READ_KEYS:
        return _quarantine(base, QuarantineReason.TRUNCATED, f"data set ends inside {cut} at byte {reader.size}, "
                                                             "an element micdm reads", reader)
    if cut is not None:
        del dataset[cut]  # its value is incomplete: left out of every column and of header_json
    try:
        encoded = encode_header(dataset)
        record = header_record(encoded)
    except RecursionError:
        raise _TooDeep() from None
    absent = missing_uids(record)
    if absent:
        # A header cut short before its UIDs is a truncated file; a complete one without them is not an instance.
        reason = QuarantineReason.TRUNCATED if reader.short_read else QuarantineReason.MISSING_UID
        return _quarantine(base, reason, f"missing {', '.join(absent)}", reader)
    invalid = invalid_uids(record, dataset)
    if invalid and options.validation != "ignore":
        return _quarantine(base, QuarantineReason.INVALID_UID, "; ".join(invalid), reader)
    record["transfer_syntax_uid"] = parsed.transfer_syntax_uid
    record["parse_warnings"] = [*(record["parse_warnings"] or []), *(f"invalid UID: {i}" for i in invalid),
                                *_read_warnings(parsed, reader, cut)] or None
    try:
        record["header_json"], record["header_json_dropped"] = header_json(encoded, options.header_json_max_bytes)
    except Exception as error:
        record["header_json"], record["header_json_dropped"] = None, "all"
        record["parse_warnings"] = [*(record["parse_warnings"] or []), f"header_json: {type(error).__name__}"]
    record["header_json_truncated"] = record["header_json_dropped"] is not None
    if is_report(record.get("sop_class_uid")):
        record.update(_report_content(encoded, options.sr_max_items))
    base.update(record)
    base.update(
        outcome=Outcome.INSTANCE.value,
        forced_read=forced,
        bytes_read=reader.bytes_read,
        header_bytes=parsed.header_end,
        # two files with one SOPInstanceUID are copies only when their header bytes are the same
        header_digest=hashlib.blake2b(reader.prefix(parsed.header_end)[:parsed.header_end], digest_size=16).hexdigest(),
    )
    return base
