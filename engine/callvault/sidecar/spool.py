"""The sidecar's store-and-forward spool: one directory per call.

The files (``spool``, append-only, and ``acked``), their records, the order
rules, recovery and durability are docs/format.md section 9 (version 2,
encrypted; version 1, plaintext, is still read and written without a key).

Encryption at rest (docs/format.md 9.4): the sidecar key (32 random bytes in
``SPOOL/sidecar.key``, mode 0600, :func:`load_sidecar_key`) wraps a random
data key per call, stored in the spool's file header; the CALL record (the
CallStart: customer number, agent, ...) and each BATCH's lengths, arrival
times and packets are AES-256-GCM blobs under that data key
(``store.crypto.encrypt_blob``), bound to their record type and place.
Directories are 0700.

A call's RTP is written here BEFORE it is forwarded, and stays until the
server says the call is Sealed: the Ingest contract asks a client to keep
every batch of a call until then, because a restarted server answers
``Started.resume_from_seq = 0`` and replays the call from its first batch.

Writer contract: a spool is created whole (written, fsynced and renamed into
place), so a directory without its CALL record never exists. Records are
written with ``write(2)`` on an O_APPEND descriptor as soon as they are made
(``append_batches``: the batches of one receive tick, one per leg, in one
write): they are in the OS the moment ``append``/``append_batches`` returns
and survive a SIGKILL of the sidecar.
Durability against a power cut is the caller's timer: ``sync()`` fsyncs when
something was written since the last one (the sidecar calls it every second,
at a call's end and on SIGTERM); ``end()`` fsyncs itself.

Reader contract: ``Spool.open`` scans the file, truncates a torn or damaged
tail at the first record that is short, fails its crc or is out of order, and
says how many bytes it dropped (``dropped_bytes``); it never skips a bad
record to read on. Any batch can be read back by seq, in any order, while the
writer appends.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
import numpy.typing as npt
from crc32c import crc32c

from callvault.durable import fsync_dir
from callvault.errors import CallvaultError, FormatError
from callvault.media.batch import LegBatch
from callvault.store import crypto

MAGIC = b"CVSPOOL\0"
VERSION = 2  # encrypted; 1 = plaintext (no key)
PLAIN_VERSION = 1
_FILE_HEADER = struct.Struct("<8sI")  # magic, version (+ crc u32)
_U32 = struct.Struct("<I")
_RECORD = struct.Struct("<IIB")  # crc, length, type
_CALL = struct.Struct("<qH")  # created_us, legs (+ ports, CallStart)
_I64 = struct.Struct("<q")
_BATCH = struct.Struct("<QII")  # seq, leg, count
_END = struct.Struct("<Qq")  # batches, end_us
_ACKED = struct.Struct("<QI")  # acked, crc

FILE_HEADER_SIZE = _FILE_HEADER.size + _U32.size  # version 1
_WRAPPED_SIZE = 1 + crypto.NONCE_BYTES + crypto.KEY_BYTES + crypto.TAG_BYTES  # a blob, 61
FILE_HEADER_SIZE_V2 = _FILE_HEADER.size + _WRAPPED_SIZE + _U32.size
_AAD_KEY = b"cvspool2/key"  # context of the wrapped data key
_AAD_RECORD = b"cvspool2/rec"  # + type u8 (+ the BATCH header) for record blobs
REC_CALL, REC_START, REC_BATCH, REC_END = 1, 2, 3, 4
_TYPE_BATCH = bytes((REC_BATCH,))
_AAD_BATCH = _AAD_RECORD + _TYPE_BATCH  # + the BATCH header: _record_aad(REC_BATCH, head)
# PCI pause (docs/format.md 9): a BATCH record with one of these legs and no packets is
# an Ingest Pause or Resume taking its seq; its payload is the instant (i64, µs)
LEG_PAUSE = 0xFFFF_FFFE
LEG_RESUME = 0xFFFF_FFFF
CONTROL_LEGS = (LEG_PAUSE, LEG_RESUME)
MAX_RECORD = 64 << 20  # a batch is ~100 ms of one leg; anything this large is damage

SPOOL_FILE = "spool"
ACKED_FILE = "acked"
KEY_FILE = "sidecar.key"
DIR_MODE = 0o700

_SK_MAGIC = b"CVSK"
_SK_VERSION = 1
_SK_HEADER = struct.Struct("<4sB3s")  # magic, version, reserved
_SK_SIZE = _SK_HEADER.size + crypto.KEY_BYTES + 32  # + SHA-256 of what precedes


class SpoolKeyError(CallvaultError):
    """The sidecar key file is missing (with spooled calls), damaged or exposed, or a
    spool cannot be opened with the key given."""


def _private_dir(path: Path) -> None:
    """Make ``path`` (and missing parents) a directory only its owner can enter."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)


def load_sidecar_key(root: Path) -> bytes:
    """The sidecar key of spool directory ``root`` (``root/sidecar.key``), created (0600)
    when absent and ``root`` holds no spooled call. A missing key file while calls are
    spooled is an error: a new key could not read them."""
    _private_dir(root)
    p = root / KEY_FILE
    try:
        data = crypto.read_private_file(p, "sidecar key file", "the spooled audio")
    except FileNotFoundError:
        spooled = [d for d in list_spools(root) if _version(d) == VERSION]
        if spooled:
            raise SpoolKeyError(
                f"sidecar key file {p} is missing but {len(spooled)} spooled call(s) in {root}"
                f" were encrypted with it: restore it from your backup, or move those spool"
                f" directories out of {root} (their audio cannot be read without the key)"
                " and start again"
            ) from None
        body = _SK_HEADER.pack(_SK_MAGIC, _SK_VERSION, b"\0\0\0") + secrets.token_bytes(
            crypto.KEY_BYTES
        )
        data = body + hashlib.sha256(body).digest()
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(root)
        return data[_SK_HEADER.size : _SK_HEADER.size + crypto.KEY_BYTES]
    except crypto.KeyFileError as e:
        raise SpoolKeyError(str(e)) from None
    magic, version, _ = _SK_HEADER.unpack_from(data.ljust(_SK_HEADER.size, b"\0"))
    if (
        len(data) != _SK_SIZE
        or magic != _SK_MAGIC
        or hashlib.sha256(data[:-32]).digest() != data[-32:]
    ):
        raise SpoolKeyError(f"sidecar key file {p} is damaged or not a sidecar key file")
    if version != _SK_VERSION:
        raise SpoolKeyError(
            f"sidecar key file {p} has version {version}; this build reads {_SK_VERSION}"
        )
    return data[_SK_HEADER.size : _SK_HEADER.size + crypto.KEY_BYTES]


@dataclass(frozen=True)
class End:
    """The call's end as spooled (``CallEnd``)."""

    batches: int
    end_us: int


def spool_name(tenant: str, call_id: str) -> str:
    """The directory name of a call's spool (unique per tenant and call id; never '.' or '..')."""
    return f"{quote(tenant or 'default', safe='')}+{call_id}"


def _record(kind: int, body: bytes) -> bytes:
    head = _U32.pack(len(body)) + bytes((kind,))
    return _U32.pack(crc32c(body, crc32c(head))) + head + body


def _version(directory: Path) -> int | None:
    """The format version in a spool's file header (None if it has none)."""
    try:
        with open(directory / SPOOL_FILE, "rb") as f:
            head = f.read(_FILE_HEADER.size)
    except OSError:
        return None
    if len(head) < _FILE_HEADER.size or head[:8] != MAGIC:
        return None
    return int(_FILE_HEADER.unpack(head)[1])


def _file_header(wrapped: bytes | None) -> bytes:
    if wrapped is None:
        head = _FILE_HEADER.pack(MAGIC, PLAIN_VERSION)
    else:
        head = _FILE_HEADER.pack(MAGIC, VERSION) + wrapped
    return head + _U32.pack(crc32c(head))


def _record_aad(kind: int, clear: bytes = b"") -> bytes:
    return _AAD_RECORD + bytes((kind,)) + clear


_U4 = np.dtype("<u4")
_I8 = np.dtype("<i8")


def _le(a: npt.NDArray[np.integer], dtype: np.dtype[np.integer]) -> bytes:
    """``a``'s values as ``dtype`` (little-endian) bytes; no conversion when ``a``
    holds them that way already (int32 lengths as u4: the same bytes, never
    negative)."""
    if a.dtype.itemsize == dtype.itemsize and a.dtype.kind in "iu" and a.dtype.str[0] == "<":
        return a.tobytes()
    return a.astype(dtype).tobytes()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Spool:
    """One call's spool directory, open for appending and reading (thread-safe)."""

    def __init__(self, directory: Path, fd: int, key: bytes | None = None) -> None:
        self.directory = directory
        self._fd = fd
        self._key = key  # the sidecar key
        self._data_key: crypto.DataKey | None = None  # this call's (version 2)
        self._header_size = FILE_HEADER_SIZE
        self._lock = threading.Lock()
        self._offsets: list[int] = []  # file offset of BATCH record seq
        self._size = 0
        self._dirty = False
        self.call_start = b""
        self.ports: tuple[int, ...] = ()
        self.created_us = 0
        self.start_us: int | None = None
        self.end: End | None = None
        self.dropped_bytes = 0
        self.acked = 0
        self._acked_written = False  # the acked file exists (stored_bytes)
        self._deleted = False
        self.packets = 0  # RTP packets in all batches
        self.paused = False  # the last PCI control record was a Pause

    # -- creating and opening ---------------------------------------------

    @classmethod
    def create(
        cls,
        root: Path,
        name: str,
        call_start: bytes,
        ports: Sequence[int],
        created_us: int,
        *,
        key: bytes | None = None,
    ) -> Spool:
        """A new spool ``root/name`` holding the CALL record, fsynced, made visible whole.
        FileExistsError if the call already has one. With ``key`` (the sidecar key) the
        spool is encrypted (version 2) under a new random data key; without, plaintext
        (version 1)."""
        final = root / name
        if final.exists():
            raise FileExistsError(f"spool {final} exists")
        tmp = root / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        _private_dir(tmp)
        body = (
            _CALL.pack(created_us, len(ports)) + struct.pack(f"<{len(ports)}H", *ports) + call_start
        )
        wrapped = None
        if key is not None:
            data_key = crypto.new_data_key()
            wrapped = crypto.encrypt_blob(key, plaintext=data_key.key, aad=_AAD_KEY)
            body = crypto.encrypt_blob(data_key, plaintext=body, aad=_record_aad(REC_CALL))
        fd = os.open(
            tmp / SPOOL_FILE, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
        try:
            _write_all(fd, _file_header(wrapped) + _record(REC_CALL, body))
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(tmp)
        os.rename(tmp, final)
        fsync_dir(root)
        return cls.open(final, key=key)

    @classmethod
    def open(cls, directory: Path, *, key: bytes | None = None) -> Spool:
        """Open an existing spool: scan it, truncate a torn tail (``dropped_bytes``).
        An encrypted spool needs ``key``, the sidecar key it was created with
        (:class:`SpoolKeyError` otherwise); a plaintext one opens with or without."""
        fd = os.open(directory / SPOOL_FILE, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        try:
            spool = cls(directory, fd, key)
            spool._scan()
        except BaseException:
            os.close(fd)
            raise
        spool.acked = spool._read_acked()
        return spool

    def _scan(self) -> None:
        size = os.fstat(self._fd).st_size
        head = os.pread(self._fd, FILE_HEADER_SIZE_V2, 0)
        if len(head) < _FILE_HEADER.size or head[:8] != MAGIC:
            raise FormatError(f"{self.directory}: not a callvault spool (bad file header)")
        version = _FILE_HEADER.unpack_from(head)[1]
        hsize = {PLAIN_VERSION: FILE_HEADER_SIZE, VERSION: FILE_HEADER_SIZE_V2}.get(version)
        if hsize is None:
            raise FormatError(
                f"{self.directory}: spool version {version}, this build reads"
                f" {PLAIN_VERSION} and {VERSION}"
            )
        if len(head) < hsize or _U32.unpack_from(head, hsize - 4)[0] != crc32c(head[: hsize - 4]):
            raise FormatError(f"{self.directory}: not a callvault spool (bad file header)")
        if version == VERSION:
            if self._key is None:
                raise SpoolKeyError(
                    f"{self.directory}: the spool is encrypted; it opens only with the sidecar"
                    f" key it was written with ({KEY_FILE})"
                )
            try:
                dk = crypto.decrypt_blob(
                    self._key, blob=head[_FILE_HEADER.size : hsize - 4], aad=_AAD_KEY
                )
            except crypto.CryptoError:
                raise SpoolKeyError(
                    f"{self.directory}: the sidecar key does not open this spool: it was written"
                    f" with another {KEY_FILE} (restore that one)"
                ) from None
            self._data_key = crypto.DataKey(dk)
        self._header_size = hsize
        pos = hsize
        while pos < size:
            hdr = os.pread(self._fd, _RECORD.size, pos)
            if len(hdr) < _RECORD.size:
                break
            crc, length, kind = _RECORD.unpack(hdr)
            if length > MAX_RECORD or pos + _RECORD.size + length > size:
                break
            body = os.pread(self._fd, length, pos + _RECORD.size)
            if crc32c(body, crc32c(hdr[4:])) != crc:
                break
            if not self._apply(kind, body, pos):
                break
            pos += _RECORD.size + length
        if pos == self._header_size:
            raise FormatError(f"{self.directory}: spool has no CALL record")
        if pos < size:
            self.dropped_bytes = size - pos
            os.ftruncate(self._fd, pos)
            os.fsync(self._fd)
        self._size = pos

    def _apply(self, kind: int, body: bytes, pos: int) -> bool:
        """Take one whole record into the in-memory state; False: out of place (damage)."""
        first = pos == self._header_size
        if first != (kind == REC_CALL) or self.end is not None:
            return False
        if kind == REC_CALL:
            if self._data_key is not None:
                # CRC-valid but not authentic: altered on purpose, not torn; refuse it whole
                body = crypto.decrypt_blob(self._data_key, blob=body, aad=_record_aad(REC_CALL))
            self.created_us, legs = _CALL.unpack_from(body)
            self.ports = struct.unpack_from(f"<{legs}H", body, _CALL.size)
            self.call_start = body[_CALL.size + 2 * legs :]
        elif kind == REC_START:
            if self.start_us is not None:
                return False
            self.start_us = _I64.unpack(body)[0]
        elif kind == REC_BATCH:
            seq, leg, count = _BATCH.unpack_from(body)
            if seq != len(self._offsets) or self.start_us is None:
                return False
            if leg in CONTROL_LEGS:
                self.paused = leg == LEG_PAUSE
            self._offsets.append(pos)
            self.packets += count
        elif kind == REC_END:
            batches, end_us = _END.unpack(body)
            if batches != len(self._offsets):
                return False
            self.end = End(batches, end_us)
        else:
            return False
        return True

    # -- writing ----------------------------------------------------------

    def _append(self, kind: int, body: bytes) -> int:
        rec = _record(kind, body)
        pos = self._size
        _write_all(self._fd, rec)
        self._size += len(rec)
        self._dirty = True
        return pos

    def set_start_us(self, start_us: int) -> None:
        """Record frame 0's instant (once, before the first batch)."""
        with self._lock:
            if self.start_us is not None:
                raise ValueError(f"{self.directory}: start_us is already {self.start_us}")
            self._append(REC_START, _I64.pack(start_us))
            self.start_us = start_us

    def append(
        self,
        leg: int,
        packets: bytes | memoryview,
        lengths: npt.NDArray[np.int32],
        arrival_us: npt.NDArray[np.int64],
    ) -> int:
        """Append one batch of ``leg``; returns its seq. In the OS when this returns."""
        return self.append_batches([(leg, packets, lengths, arrival_us)])[0]

    def append_batches(
        self,
        batches: Sequence[
            tuple[int, bytes | memoryview, npt.NDArray[np.int32], npt.NDArray[np.int64]]
        ],
    ) -> list[int]:
        """Append ``(leg, packets, lengths, arrival_us)`` batches in order, as one
        ``write(2)`` (the receiver's tick: both legs of a call at once); returns their
        seqs. In the OS when this returns; a write that fails leaves none of them
        counted (the reader drops a torn tail)."""
        for _, packets, lengths, arrival_us in batches:
            if len(arrival_us) != len(lengths) or int(
                np.add.reduce(lengths, dtype=np.int64)
            ) != len(packets):
                raise ValueError(
                    "a batch needs one length and one arrival per packet,"
                    " sum(lengths) == len(packets)"
                )
        with self._lock:
            if self.end is not None:
                raise ValueError(f"{self.directory}: the call has ended")
            if self.start_us is None:
                raise ValueError(f"{self.directory}: set_start_us before the first batch")
            first = len(self._offsets)
            records: list[bytes] = []
            offsets = []
            pos = self._size
            packets_in = 0
            for i, (leg, packets, lengths, arrival_us) in enumerate(batches):
                n = len(lengths)
                head = _BATCH.pack(first + i, leg, n)
                payload = b"".join((_le(lengths, _U4), _le(arrival_us, _I8), packets))
                if self._data_key is not None:
                    payload = crypto.encrypt_blob(
                        self._data_key, plaintext=payload, aad=_AAD_BATCH + head
                    )
                # _record(REC_BATCH, head + payload) without joining head and payload
                pre = _U32.pack(len(head) + len(payload)) + _TYPE_BATCH
                crc = crc32c(payload, crc32c(head, crc32c(pre)))
                records += (_U32.pack(crc), pre, head, payload)
                offsets.append(pos)
                pos += _RECORD.size + len(head) + len(payload)
                packets_in += n
            data = b"".join(records)
            _write_all(self._fd, data)
            self._size += len(data)
            self._dirty = True
            self._offsets.extend(offsets)
            self.packets += packets_in
            return list(range(first, first + len(batches)))

    def append_control(self, pause: bool, at_us: int) -> int:
        """Append a PCI Pause (``pause``) or Resume at ``at_us``, in order with the
        batches; returns its seq. In the OS when this returns."""
        with self._lock:
            if self.end is not None:
                raise ValueError(f"{self.directory}: the call has ended")
            if self.start_us is None:
                raise ValueError(f"{self.directory}: set_start_us before the first batch")
            seq = len(self._offsets)
            head = _BATCH.pack(seq, LEG_PAUSE if pause else LEG_RESUME, 0)
            payload = _I64.pack(at_us)
            if self._data_key is not None:
                payload = crypto.encrypt_blob(
                    self._data_key, plaintext=payload, aad=_AAD_BATCH + head
                )
            self._offsets.append(self._append(REC_BATCH, head + payload))
            self.paused = pause
            return seq

    def finish(self, end_us: int = 0) -> End:
        """Append the END record (batches = every batch appended) and fsync."""
        with self._lock:
            if self.end is None:
                end = End(len(self._offsets), end_us)
                self._append(REC_END, _END.pack(end.batches, end.end_us))
                self.end = end
        self.sync()
        assert self.end is not None
        return self.end

    @property
    def stored_bytes(self) -> int:
        """Bytes the spool holds on disk, kept in memory (ListCalls asks for every call
        several times a second): the spool file's records (with a torn tail its scan
        cut off) and the ``acked`` hint once written; 0 once deleted."""
        if self._deleted:
            return 0
        return self._size + (_ACKED.size if self._acked_written else 0)

    def sync(self) -> bool:
        """fsync if anything was written since the last sync; True if it did."""
        with self._lock:
            if not self._dirty:
                return False
            self._dirty = False
        os.fsync(self._fd)
        return True

    def set_acked(self, acked: int) -> None:
        """Remember the highest acknowledged seq + 1 (a hint; not fsynced)."""
        if acked <= self.acked:
            return
        self.acked = acked
        head = struct.pack("<Q", acked)
        data = head + _U32.pack(crc32c(head))
        try:
            fd = os.open(
                self.directory / ACKED_FILE, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        except FileNotFoundError:  # deleted meanwhile (sealed)
            return
        try:
            os.pwrite(fd, data, 0)
            self._acked_written = True
        finally:
            os.close(fd)

    def _read_acked(self) -> int:
        try:
            data = (self.directory / ACKED_FILE).read_bytes()
        except FileNotFoundError:
            return 0
        self._acked_written = True
        if len(data) != _ACKED.size:
            return 0
        acked, crc = _ACKED.unpack(data)
        return int(acked) if crc == crc32c(data[:8]) else 0

    # -- reading ----------------------------------------------------------

    @property
    def encrypted(self) -> bool:
        """True for a version 2 (encrypted) spool."""
        return self._data_key is not None

    @property
    def batches(self) -> int:
        """How many batches are spooled (the next seq)."""
        return len(self._offsets)

    def read(self, seq: int) -> LegBatch:
        """LegBatch ``seq`` as spooled."""
        with self._lock:
            if not 0 <= seq < len(self._offsets):
                raise IndexError(f"{self.directory}: no batch {seq} (have {len(self._offsets)})")
            pos = self._offsets[seq]
            end = self._offsets[seq + 1] if seq + 1 < len(self._offsets) else self._size
        data = os.pread(self._fd, end - pos, pos)
        length = _U32.unpack_from(data, 4)[0]
        record = memoryview(data)[_RECORD.size : _RECORD.size + length]
        got, leg, n = _BATCH.unpack_from(record)
        assert got == seq, (got, seq)
        body: bytes | memoryview = record[_BATCH.size :]
        if self._data_key is not None:
            body = crypto.decrypt_blob(
                self._data_key,
                blob=bytes(body),
                aad=_record_aad(REC_BATCH, bytes(record[: _BATCH.size])),
            )
        lengths = np.frombuffer(body, "<u4", n, 0).astype(np.int32)
        arrival = np.frombuffer(body, "<i8", n, 4 * n).astype(np.int64)
        packets = bytes(body[12 * n :])
        return LegBatch(seq, leg, packets, lengths, arrival)

    def read_from(self, seq: int) -> Iterator[LegBatch]:
        """Batches ``seq``, ``seq + 1``, ... up to the last one spooled when each is read."""
        while seq < self.batches:
            yield self.read(seq)
            seq += 1

    # -- closing ----------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                if self._dirty:
                    os.fsync(self._fd)
                    self._dirty = False
                os.close(self._fd)
                self._fd = -1

    def delete(self) -> None:
        """Remove the spool (the server sealed the call)."""
        self._deleted = True
        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)
        fsync_dir(self.directory.parent)


def list_spools(root: Path) -> list[Path]:
    """The call spools under ``root`` (leftover temporary directories are removed)."""
    out = []
    for p in sorted(root.iterdir()) if root.exists() else []:
        if p.name.startswith(".tmp-"):
            shutil.rmtree(p, ignore_errors=True)
        elif p.is_dir() and (p / SPOOL_FILE).exists():
            out.append(p)
    return out
