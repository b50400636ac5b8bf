"""Reading log files in chunks of lines: gzip by magic bytes, bounded line length."""

from __future__ import annotations

import gzip
import io
import os
import queue
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from anonymizer.importers.report import ImportLogError

MAX_LINE_BYTES: Final = 16 * 1024
"""Lines longer than this are rejected: no access log line is that long honestly."""

CHUNK_BYTES: Final = 1 << 22
"""Bytes read at a time; the lines of one read are parsed together. Large blocks matter:
the work done once per distinct value (requests, paths, referrers, user agents, visitors)
and once per Arrow call is done per block. On the benchmark log, 4 MiB blocks take 10%
less CPU than 2 MiB ones, for 70 MB more peak memory; 8 MiB ones save no more CPU and
cost another 110 MB."""

GZIP_MAGIC: Final = b"\x1f\x8b"


class CorruptStream(Exception):
    """The compressed data of a log ends early or is damaged; lines before it were read."""


class _Broken(Exception):
    def __init__(self, count: int) -> None:
        super().__init__("corrupt compressed data")
        self.count = count


def _read_into(stream: io.BufferedIOBase, buffer: memoryview) -> int:
    """Fill ``buffer`` from ``stream`` (fewer bytes at its end); return how many were read.

    The bytes go straight into ``buffer``: on a plain file the kernel copies them there with
    the GIL released, so the parsing threads are not held up by copies on this thread. On
    corrupt compressed data, raise with how many good bytes came before it.
    """
    got = 0
    try:
        while got < len(buffer):
            count = stream.readinto1(buffer[got:])
            if not count:
                break
            got += count
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise _Broken(got) from exc
    return got


def check_readable(path: Path) -> None:
    """Raise :class:`ImportLogError` with advice if ``path`` cannot be imported."""
    if not path.exists():
        raise ImportLogError(
            f"log file {str(path)!r} does not exist: check the path and the working directory",
            path=path,
        )
    if path.is_dir():
        raise ImportLogError(
            f"{str(path)!r} is a directory: pass the log files themselves (e.g. {path}/*.log)",
            path=path,
        )
    if not os.access(path, os.R_OK):
        raise ImportLogError(
            f"log file {str(path)!r} is not readable: run as a user who may read it, "
            "or copy it somewhere readable",
            path=path,
        )


@contextmanager
def open_log(path: Path) -> Iterator[tuple[io.BufferedIOBase, Callable[[], int]]]:
    """Open ``path`` for binary reading, decompressing gzip whatever the file is called.

    Yields the stream and a function giving how many bytes of the file on disk have been
    consumed (for progress on compressed files); both files are closed on exit.
    """
    try:
        raw = open(path, "rb")  # noqa: SIM115 (closed below, with the gzip layer)
    except OSError as exc:
        raise ImportLogError(
            f"cannot open log file {str(path)!r}: {exc.strerror or exc}; check permissions",
            path=path,
        ) from exc
    with raw:
        if raw.read(2) == GZIP_MAGIC:
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw, mode="rb") as unpacked:
                yield unpacked, raw.tell
        else:
            raw.seek(0)
            yield raw, raw.tell


def read_head(path: Path, size: int) -> bytes:
    """The first ``size`` decompressed bytes of ``path`` (fewer if it is shorter or
    its compressed data breaks before)."""
    buffer = bytearray(size)
    with open_log(path) as (stream, _):
        try:
            count = _read_into(stream, memoryview(buffer))
        except _Broken as exc:
            count = exc.count
    del buffer[count:]
    return bytes(buffer)


class BufferPool:
    """Read buffers, handed back once their block is parsed.

    A new buffer of a few MiB costs page faults and zeroing, on the reading thread and
    holding the GIL the parsing threads need; a buffer handed back is used again instead.
    Thread-safe: the reading thread takes, the parsing threads give back.
    """

    def __init__(self, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.chunk_bytes = chunk_bytes
        self.size = chunk_bytes + MAX_LINE_BYTES + 1  # a read plus a cut line before it
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()

    def take(self) -> bytearray:
        """A free buffer of :attr:`size` bytes (a new one if none was handed back)."""
        try:
            return self._free.get_nowait()
        except queue.Empty:
            return bytearray(self.size)

    def give_back(self, block: bytes | memoryview | None) -> None:
        """Let the buffer of a block from :func:`read_blocks` be used again: nothing may read
        the block after this (the lines made from it are copies)."""
        if isinstance(block, memoryview):
            owner = block.obj
            if isinstance(owner, bytearray) and len(owner) == self.size:
                self._free.put(owner)


def read_blocks(
    stream: io.BufferedIOBase,
    digest: Callable[[memoryview], object] | None = None,
    pool: BufferPool | None = None,
) -> Iterator[memoryview | None]:
    """The lines of ``stream`` as blocks of whole lines joined by ``\\n`` (no final newline).

    A block is a view of a buffer of ``pool`` (no copy is made of the bytes read); it stays
    the block's until given back (:meth:`BufferPool.give_back`). A line longer than
    :data:`MAX_LINE_BYTES` that spans reads is skipped without being held in memory and
    comes out as a None block; shorter over-long lines stay in their block and are rejected
    by length later. Damaged compressed data raises :class:`CorruptStream` after the blocks
    before it. A block holds ``block.count(b"\\n") + 1`` lines.
    ``digest`` is given every byte read, in order, as it is read (for the import history).
    """
    pool = pool or BufferPool()
    pending = b""  # the start of a line the last read cut in two
    skipping = False  # inside an over-long line: drop bytes up to the next newline
    broken: _Broken | None = None
    while broken is None:
        buffer = pool.take()
        buffer[: len(pending)] = pending
        view = memoryview(buffer)
        try:
            count = _read_into(stream, view[len(pending) : len(pending) + pool.chunk_bytes])
        except _Broken as exc:
            broken, count = exc, exc.count
        if not count:
            pool.give_back(view)
            break
        end = len(pending) + count
        if digest is not None:
            digest(view[len(pending) : end])
        start = 0
        if skipping:  # nothing is pending
            newline = buffer.find(b"\n", 0, end)
            if newline < 0:
                pool.give_back(view)
                continue
            start = newline + 1
            skipping = False
            yield None
        cut = buffer.rfind(b"\n", start, end)
        if cut < 0:
            pending = bytes(view[start:end])
            pool.give_back(view)
        else:
            pending = bytes(view[cut + 1 : end])
            yield view[start:cut]
        if len(pending) > MAX_LINE_BYTES + 1:
            pending = b""
            skipping = True
    if broken is not None:
        raise CorruptStream(str(broken.__cause__)) from broken.__cause__
    if skipping:
        yield None
    elif pending:
        yield memoryview(pending)


def block_lines(block: bytes | memoryview | None) -> pa.Array:
    """The lines of a block as a string array (None block: one null, over-long line).

    Bytes that are not UTF-8 become U+FFFD. ``\\n`` never occurs inside a UTF-8 sequence
    and the replacement never makes one, so the line count is exact either way.
    """
    if block is None:
        return pa.nulls(1, pa.string())
    # One binary value over the block's own memory (no copy), checked as UTF-8. Blocks are
    # a few MiB: 32-bit offsets hold them.
    offsets = pa.py_buffer(np.array([0, len(block)], np.int32))
    whole = pa.Array.from_buffers(pa.binary(), 1, [None, offsets, pa.py_buffer(block)])
    try:
        text = whole.cast(pa.string())
    except pa.ArrowInvalid:  # not UTF-8: decode in Python, marking the bad bytes
        text = pa.array([bytes(block).decode("utf-8", errors="replace")], pa.string())
    lines: pa.Array = pc.split_pattern(text, "\n").flatten()
    return lines
