"""Reading and writing cgroup interface files, and parsing their formats.

The readers return ``None`` for a file that is not there (or that the kernel
will not show us): a missing file is a fact to report, never an exception.
The parsers are pure functions of the file's text, so they are tested on the
formats of Documentation/admin-guide/cgroup-v2.rst and cgroup-v1/*.rst.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable

from ._errors import CgroupControllerMissing, CgroupError, error_from_os

# errnos that mean "this file is not there for us": not a failure of the reader.
# ENODEV: a kernfs file of a cgroup being removed; EOPNOTSUPP: cgroup.procs of a
# threaded cgroup; EINVAL: some v1 files refuse reads on the root.
_ABSENT = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ENODEV, errno.EACCES, errno.EPERM, errno.EOPNOTSUPP, errno.EINVAL})

_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC
# Interface files are small; memory.stat, the largest, is about 1.5 KiB.
_READ_SIZE = 16384


def read_bytes(path: str) -> bytes | None:
    """The whole content of a cgroup file, or ``None`` when it cannot be read.

    ``os.open``/``os.read`` rather than ``open()``: a stats snapshot reads
    about fifteen files, and the buffered text layer costs three times the
    system calls' time (measured: 50 µs against 150 µs for fifteen files).
    """
    fd = _open_or_none(path)
    if fd is None:
        return None
    try:
        # One read(2) gets the whole file: kernfs renders it in one go and
        # returns all of it when the buffer is large enough. A second read
        # "to see EOF" is not free: for v1 memory.stat it costs as much as
        # the first (measured 19 µs against 41 µs for the two). Only a
        # completely filled buffer may have more behind it.
        data = os.read(fd, _READ_SIZE)
        if len(data) < _READ_SIZE:
            return data
        chunks = [data]
        while chunk := os.read(fd, _READ_SIZE):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        if exc.errno in _ABSENT:
            return None
        raise
    finally:
        os.close(fd)


def _open_or_none(path: str) -> int | None:
    """A descriptor for reading ``path``, or None when the file is not there for us."""
    try:
        return os.open(path, _READ_FLAGS)
    except OSError as exc:
        if exc.errno in _ABSENT:
            return None
        raise


def read_text(path: str) -> str | None:
    data = read_bytes(path)
    return None if data is None else data.decode("ascii", "replace")


#: Something that reads a whole file or says None: read_bytes, or OpenFiles.read.
Reader = Callable[[str], "bytes | None"]


def read_int(path: str, read: Reader = read_bytes) -> int | None:
    """A single-number file; ``None`` when missing, unparsable or "max"."""
    data = read(path)
    if data is None:
        return None
    return parse_limit(data.decode("ascii", "replace"))


class OpenFiles:
    """Cgroup files kept open between snapshots, re-read with pread at offset 0.

    Opening a kernfs file is most of the cost of reading it: fifteen files
    re-read through kept descriptors took 20 µs against 70 µs when opened
    each time (measured here). A read at offset 0 makes kernfs render the
    file afresh. When the cgroup is removed, reads on the old descriptors
    fail with ENODEV; the descriptor is then dropped and the path opened
    again (a group removed and made again under the same name is a new
    cgroup). Files that are missing are tried again at the next read.

    Thread-safe: one lock, held for a read (or a whole snapshot) or a close,
    so a descriptor is never closed (and its number reused) under a
    concurrent pread.
    """

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def read(self, path: str) -> bytes | None:
        with self._lock:
            return self.read_held(path)

    def held(self) -> threading.Lock:
        """The lock, to hold once around many :meth:`read_held` calls (a whole snapshot)."""
        return self._lock

    def read_held(self, path: str) -> bytes | None:
        """:meth:`read`, for a caller that holds :meth:`held`."""
        fd = self._fds.get(path)
        if fd is not None:
            try:
                data = os.pread(fd, _READ_SIZE, 0)
                if len(data) < _READ_SIZE:
                    return data
            except OSError:
                pass
            # Stale (the cgroup is gone) or too large for one read.
            del self._fds[path]
            os.close(fd)
        fd = _open_or_none(path)
        if fd is None:
            return None
        try:
            data = os.pread(fd, _READ_SIZE, 0)
        except OSError as exc:
            os.close(fd)
            if exc.errno in _ABSENT:
                return None
            raise
        if len(data) < _READ_SIZE:
            self._fds[path] = fd
            return data
        os.close(fd)
        return read_bytes(path)

    def close(self) -> None:
        """Close every kept descriptor (they are reopened on the next read)."""
        with self._lock:
            fds, self._fds = self._fds, {}
            for fd in fds.values():
                os.close(fd)

    def __len__(self) -> int:
        return len(self._fds)


def write_text(path: str, value: str, *, controller: str, setting: str) -> None:
    """Write one value to a cgroup file, turning failures into CgroupErrors.

    A missing file means the controller is not enabled for this cgroup (on v2
    the parent's ``cgroup.subtree_control`` does not list it).
    """
    try:
        # O_TRUNC is a no-op on cgroupfs (as for `echo > file`) and makes a
        # fixture tree of plain files read back exactly what was written.
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CgroupControllerMissing(
            f"cannot set {setting}: {path} does not exist, so the {controller} controller is not "
            f"available to this cgroup (cgroup v2: enable it in the parent's cgroup.subtree_control; "
            f"cgroup v1: mount the {controller} hierarchy)",
            controller=controller,
            setting=setting,
            path=path,
        ) from None
    except OSError as exc:
        raise error_from_os(exc, action="open", path=path) from None
    try:
        # One write(2) per value: the kernel parses each write as a whole.
        os.write(fd, value.encode("ascii"))
    except OSError as exc:
        raise write_error(exc, path=path, value=value, setting=setting) from None
    finally:
        os.close(fd)


def write_error(exc: OSError, *, path: str, value: object, setting: str) -> CgroupError:
    """The CgroupError for a failed write of ``value`` (for ``setting``) to ``path``."""
    if exc.errno == errno.EINVAL:
        return CgroupError(
            f"the kernel refused {str(value)!r} for {setting} in {path} (EINVAL): "
            f"the value is out of the range this file accepts here",
            path=path,
        )
    if exc.errno == errno.EBUSY and setting.startswith("memory"):
        return error_from_os(
            exc, action=f"write {str(value)!r} to", path=path,
            fix="the group uses more memory than the new limit and the kernel could not reclaim enough",
        )
    return error_from_os(exc, action=f"write {str(value)!r} to", path=path)


# -- parsers ---------------------------------------------------------------


# The stats snapshot's parsers work on the bytes of a file and take only the
# values asked for: decoding and splitting all of memory.stat (70 lines on v1)
# to use one value of it was most of a snapshot's cost (measured in
# bench/bench_cgroup_stats.py).


def int_of(data: bytes | None) -> int | None:
    """A single-number file ("123\\n"); None when missing, "max" or garbage."""
    if data is None:
        return None
    try:
        return int(data)  # int() takes ASCII bytes and ignores the surrounding whitespace
    except ValueError:
        return None


def keyed_int(data: bytes | None, key: bytes) -> int | None:
    """The value of the ``KEY VALUE`` line ``key`` of a flat-keyed file (memory.stat, cpu.stat), or None."""
    if data is None:
        return None
    if data.startswith(key + b" "):
        start = len(key) + 1
    else:
        at = data.find(b"\n" + key + b" ")
        if at < 0:
            return None
        start = at + len(key) + 2
    end = data.find(b"\n", start)
    try:
        return int(data[start:end] if end >= 0 else data[start:])
    except ValueError:
        return None


def pressure_totals(data: bytes | None) -> tuple[int | None, int | None]:
    """The ``total=`` (µs) of the ``some`` and ``full`` lines of a ``*.pressure`` file.

    Format (Documentation/accounting/psi.rst)::

        some avg10=0.00 avg60=0.00 avg300=0.00 total=0
        full avg10=0.00 avg60=0.00 avg300=0.00 total=0
    """
    some = full = None
    if data is None:
        return some, full
    for line in data.split(b"\n"):
        at = line.rfind(b" total=")
        if at > 0:
            total = int_of(line[at + 7:].split(b" ", 1)[0])
            if line.startswith(b"some "):
                some = total
            elif line.startswith(b"full "):
                full = total
    return some, full


def parse_limit(text: str) -> int | None:
    """A v2 limit or a v1 number: "max" (no limit) and garbage are ``None``."""
    text = text.strip()
    return None if text == "max" else to_int(text)


def parse_flat_keyed_str(text: str) -> dict[str, str]:
    """``KEY VALUE`` lines to a dict of strings; convert only what you use.

    The fast path pairs up all tokens at once (memory.stat has 40-60 lines
    and is read at every snapshot); it is taken only when every line holds
    exactly two tokens, which is what the kernel writes.
    """
    tokens = text.split()
    if len(tokens) == 2 * text.count("\n"):
        pairs = iter(tokens)
        return dict(zip(pairs, pairs, strict=False))
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[0]] = parts[1]
    return out


def parse_flat_keyed(text: str) -> dict[str, int]:
    """``KEY VALUE`` lines (memory.events, cpu.stat, cgroup.events) with integer values."""
    parsed = {key: to_int(value) for key, value in parse_flat_keyed_str(text).items()}
    return {key: value for key, value in parsed.items() if value is not None}


def to_int(value: str | None) -> int | None:
    """An optional number from a parsed file; garbage is None."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def parse_pressure(text: str) -> dict[str, int]:
    """PSI ``some``/``full`` lines to their ``total=`` (microseconds), see :func:`pressure_totals`."""
    some, full = pressure_totals(text.encode("ascii", "replace"))
    return {k: v for k, v in (("some", some), ("full", full)) if v is not None}


def parse_io_stat(text: str) -> tuple[int, int]:
    """v2 ``io.stat``: sum of ``rbytes``/``wbytes`` over all devices.

    ``8:0 rbytes=90430464 wbytes=299008000 rios=8950 wios=1252 dbytes=0 dios=0``
    """
    read = write = 0
    for line in text.splitlines():
        for field in line.split()[1:]:
            key, _, value = field.partition("=")
            if key == "rbytes":
                read += int(value)
            elif key == "wbytes":
                write += int(value)
    return read, write


def parse_blkio_bytes(text: str) -> tuple[int, int]:
    """v1 ``blkio.throttle.io_service_bytes[_recursive]``: Read/Write sums.

    ``8:0 Read 4096`` ... ``8:0 Total 4096`` and a last ``Total N`` line.
    """
    read = write = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            if parts[1] == "Read":
                read += int(parts[2])
            elif parts[1] == "Write":
                write += int(parts[2])
    return read, write


def parse_pids(text: str) -> list[int]:
    """``cgroup.procs``: one pid a line, possibly repeated (the kernel says so)."""
    seen: dict[int, None] = {}
    for line in text.split():
        try:
            seen[int(line)] = None
        except ValueError:
            continue
    return list(seen)


def parse_words(text: str) -> frozenset[str]:
    """``cgroup.controllers`` / ``cgroup.subtree_control``: space separated names."""
    # A fixture tree is plain files: what we wrote ("+memory +cpu") reads back
    # with its signs; the kernel itself never shows them.
    return frozenset(w.lstrip("+") for w in text.split() if not w.startswith("-"))
