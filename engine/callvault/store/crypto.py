"""Encryption at rest: per-call data keys, key-encryption keys (KEKs), encrypted records.

The bytes (key file, wrapped data key, encrypted record with its nonce and
AAD, encrypted blob) are docs/format.md 8.6, version 1; this docstring says
why they are so and what callers must keep to.

Key hierarchy
=============
Each call has its own random 256-bit **data key** (:func:`new_data_key`). The
call's records and metadata are encrypted with it (AES-256-GCM:
:func:`encrypt_record`, :func:`encrypt_blob`). The data key is stored only
*wrapped* under a **KEK**; the KEKs live in one **key file** (:class:`KeyFile`)
whose path the vault passes in.

Per-tenant KEKs (docs/format.md 8.6): the vault gives each tenant its own KEK
(``callvault.vault.keys.TenantKeks``), itself stored wrapped under the key file's
active KEK exactly like a data key (version 1); new data keys are wrapped under
their tenant's KEK (:func:`wrap_tenant`, version 2, which names the generation of
the tenant's KEK instead of a key-file KEK). Destroying a tenant's KEK shreds
every call of the tenant at once.

Rotation: :meth:`KeyFile.rotate` adds a new active KEK; older KEKs stay in the
file (state ``previous``) and still unwrap. :meth:`KeyFile.rewrap` moves a
wrapped key to the active KEK without touching any audio (45 bytes per call).
Once the vault has rewrapped every key wrapped under an old KEK it calls
:meth:`KeyFile.retire`, which erases that KEK's bytes from the file; the id
is kept (state ``retired``) so ids are never reused.

Crypto-shredding: there is no "shred" function. To erase a call, the vault
deletes the call's wrapped data key (and drops any copy of the data key it
held). Without the data key, :func:`decrypt_record` cannot succeed: the key is
256 random bits, it appears in no file (the key file holds only KEKs, the
record holds only ciphertext), and the stored ciphertext (which the call's
hash chain covers) stays in place, so other calls' chains and the log remain
verifiable. Limits, stated plainly: a backup or an older copy of the index
that still holds the wrapped key, together with a key file holding its KEK,
can still decrypt; retiring the KEK after rewrapping every other call ends
that too, except for backups of the key file itself. Python cannot wipe
memory: a data key in a running process lives until garbage-collected.

Why AES key wrap (RFC 3394) for data keys, not AES-GCM
------------------------------------------------------
AES-KW (NIST SP 800-38F) is built for wrapping keys: deterministic, no nonce,
so there is no nonce to manage and no limit on the number of wraps under one
KEK. AES-GCM with random 96-bit nonces is limited to 2**32 wraps per KEK
(NIST SP 800-38D 8.3), and one repeated nonce would leak the GHASH key and let
an attacker forge wrapped keys. A data key is 32 bytes, a multiple of 8, so
RFC 3394 applies without the padding of RFC 5649. AES-KW carries no
associated data; that costs nothing here: the wrapped key's version byte is
checked, a changed KEK id picks a different KEK and the unwrap integrity check
fails (probability of passing 2**-64), and a wrapped key moved to another call
decrypts none of that call's records (different key and AAD: GCM rejects them).

Nonces
======
A record's nonce is derived from (leg, seq) (:func:`record_nonce`), so nonce
reuse cannot happen as long as a data key belongs to one call (a fresh random
key per call) and, within a call, (leg, seq) names one record and is never
encrypted twice with different input. Encryption is deterministic, so a retry
of the same record gives the same bytes. Blobs take a random nonce of another
kind: with 88 random bits, 2**32 blobs under one key collide with probability
below 2**-24; a call has a handful.

The caller's side of that contract: never encrypt one (leg, seq) of a call
twice with *any* input different (plaintext, or AAD: aad_extra included). Same
nonce and different plaintext leaks their XOR; same nonce and different AAD
lets one solve for the GHASH key and forge records. In particular, recovery
that truncates a torn record must not hand its seq to different bytes
(its partial ciphertext may survive on disk): resume past it, or re-encrypt
the identical record.

Cost: AES-GCM through ``cryptography`` is a few microseconds per call plus
about a nanosecond per byte; building the cipher object costs about as much
again, so a :class:`DataKey` keeps its ``AESGCM`` object and passing the
``DataKey`` (rather than its bytes) to :func:`encrypt_record` saves it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import stat
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from callvault.durable import write_atomic
from callvault.errors import CallvaultError, InputError

__all__ = [
    "CryptoError",
    "DataKey",
    "KekState",
    "KekVersion",
    "KeyFile",
    "KeyFileError",
    "KeyMissing",
    "decrypt_blob",
    "decrypt_record",
    "encrypt_blob",
    "encrypt_record",
    "new_data_key",
    "record_nonce",
    "unwrap_tenant",
    "wrap_tenant",
    "wrapped_header",
    "wrapped_kek_id",
]


class CryptoError(CallvaultError):
    """Authenticated decryption failed (altered bytes, wrong key or wrong context)."""


class KeyFileError(CryptoError):
    """The key file cannot be used (permissions, damage, unknown version)."""


def read_private_file(path: Path, what: str, exposed: str) -> bytes:
    """The bytes of a key file only its owner may read: a regular file (not followed
    through a symlink) with no group or other permission bits. KeyFileError naming
    ``what`` (e.g. "key file") otherwise; ``exposed`` says what must then be treated
    as exposed. FileNotFoundError passes through: what a missing file means is the
    caller's."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise KeyFileError(f"{what} {path} cannot be opened: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{what} {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"{what} {path} has mode {mode:04o}: group or others may access it,"
                f" so {exposed} must be treated as exposed. If it was not, restrict it"
                f" to its owner with `chmod 600 {path}` and start again"
            )
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


class KeyMissing(CallvaultError, LookupError):
    """The KEK a wrapped key names is not in the key file, or was retired."""

    def __init__(self, kek_id: int, message: str) -> None:
        super().__init__(message)
        self.kek_id = kek_id


KEY_BYTES = 32  # AES-256, for data keys and KEKs alike.
TAG_BYTES = 16  # AES-GCM tag, full length (NIST SP 800-38D 5.2.1.2).
NONCE_BYTES = 12  # 96-bit GCM nonce, the length GCM is designed for.

KEYFILE_MAGIC = b"CVKF"
KEYFILE_VERSION = 1
_KF_HEADER = struct.Struct(">4sB3sI")  # magic, version, reserved, n
_KF_ENTRY = struct.Struct(">IB3sQQ32s")  # id, state, reserved, created, retired, key
_KF_DIGEST = 32
KEYFILE_MODE = 0o600

WRAP_VERSION = 1  # wrapped under a KEK of the key file (the master KEKs)
WRAP_VERSION_TENANT = 2  # wrapped under a generation of the call's tenant's KEK
_WRAP_HEADER = struct.Struct(">BI")  # version, KEK id
_WRAPPED_KEY_BYTES = KEY_BYTES + 8  # RFC 3394 adds one 64-bit block.
WRAPPED_BYTES = _WRAP_HEADER.size + _WRAPPED_KEY_BYTES

RECORD_VERSION = 1
_RECORD_DOMAIN = b"cvr1"
_NONCE_KIND_RECORD = 0x00
_NONCE = struct.Struct(">BBHQ")  # kind, reserved, leg, seq
_AAD_CALL_LEN = struct.Struct(">H")
_AAD_POSITION = struct.Struct(">HQ")  # leg, seq
MAX_LEG = 0xFFFF
MAX_SEQ = 0xFFFF_FFFF_FFFF_FFFF
MAX_CALL_ID = 0xFFFF

BLOB_VERSION = 1
_BLOB_DOMAIN = b"cvb1"
_NONCE_KIND_BLOB = 0x01


class KekState(IntEnum):
    """State byte of a key-file entry."""

    ACTIVE = 1  # wraps new data keys; exactly one entry
    PREVIOUS = 2  # replaced by a rotation; still unwraps
    RETIRED = 3  # key bytes erased; keys wrapped under it raise KeyMissing


@dataclass(frozen=True)
class KekVersion:
    """One KEK as listed by :meth:`KeyFile.versions` (without its key bytes)."""

    id: int
    state: KekState
    created_ns: int
    retired_ns: int


@dataclass(frozen=True)
class _Kek:
    id: int
    state: KekState
    created_ns: int
    retired_ns: int
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class DataKey:
    """A call's 256-bit data key. Its repr never shows the key."""

    key: bytes = field(repr=False)
    _aead: AESGCM = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes) or len(self.key) != KEY_BYTES:
            raise InputError(f"a data key is {KEY_BYTES} bytes")
        object.__setattr__(self, "_aead", AESGCM(self.key))


def new_data_key() -> DataKey:
    """A fresh random data key (``os.urandom`` via :mod:`secrets`)."""
    return DataKey(secrets.token_bytes(KEY_BYTES))


def _aead(key: DataKey | bytes) -> AESGCM:
    if isinstance(key, DataKey):
        return key._aead
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise InputError(f"a data key is {KEY_BYTES} bytes")
    return AESGCM(key)


def _key_bytes(key: DataKey | bytes) -> bytes:
    if isinstance(key, DataKey):
        return key.key
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise InputError(f"a data key is {KEY_BYTES} bytes")
    return key


# --------------------------------------------------------------------------
# Records and blobs


def record_nonce(leg: int, seq: int) -> bytes:
    """The 96-bit GCM nonce of record (leg, seq) of a call: kind 0x00, 0, leg, seq."""
    if not 0 <= leg <= MAX_LEG:
        raise InputError(f"leg {leg} outside 0..{MAX_LEG}")
    if not 0 <= seq <= MAX_SEQ:
        raise InputError(f"seq {seq} outside 0..2**64-1")
    return _NONCE.pack(_NONCE_KIND_RECORD, 0, leg, seq)


def _record_aad(call_id: bytes, leg: int, seq: int, aad_extra: bytes) -> bytes:
    if not 1 <= len(call_id) <= MAX_CALL_ID:
        raise InputError(f"call_id must be 1..{MAX_CALL_ID} bytes, got {len(call_id)}")
    return b"".join(
        (
            _RECORD_DOMAIN,
            _AAD_CALL_LEN.pack(len(call_id)),
            call_id,
            _AAD_POSITION.pack(leg, seq),
            aad_extra,
        )
    )


def encrypt_record(
    key: DataKey | bytes,
    *,
    call_id: bytes,
    leg: int,
    seq: int,
    plaintext: bytes,
    aad_extra: bytes = b"",
) -> bytes:
    """Encrypt and authenticate one record body: version byte, ciphertext, tag."""
    nonce = record_nonce(leg, seq)
    aad = _record_aad(call_id, leg, seq, aad_extra)
    return bytes((RECORD_VERSION,)) + _aead(key).encrypt(nonce, plaintext, aad)


def decrypt_record(
    key: DataKey | bytes,
    *,
    call_id: bytes,
    leg: int,
    seq: int,
    ciphertext: bytes,
    aad_extra: bytes = b"",
) -> bytes:
    """Inverse of :func:`encrypt_record`; :class:`CryptoError` if anything does not match."""
    if len(ciphertext) < 1 + TAG_BYTES:
        raise CryptoError(
            f"encrypted record of call {call_id!r} leg {leg} seq {seq} is {len(ciphertext)} bytes,"
            f" shorter than version byte and tag ({1 + TAG_BYTES})"
        )
    if ciphertext[0] != RECORD_VERSION:
        raise CryptoError(
            f"encrypted record of call {call_id!r} leg {leg} seq {seq} has version"
            f" {ciphertext[0]}; this build reads version {RECORD_VERSION}"
        )
    nonce = record_nonce(leg, seq)
    aad = _record_aad(call_id, leg, seq, aad_extra)
    try:
        return _aead(key).decrypt(nonce, memoryview(ciphertext)[1:], aad)
    except InvalidTag:
        raise CryptoError(
            f"record of call {call_id!r} leg {leg} seq {seq} failed authentication:"
            " its bytes were altered, or the key, call, leg, seq or position is not"
            " the one it was encrypted with"
        ) from None


def encrypt_blob(key: DataKey | bytes, *, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt a small value (call metadata) with a random nonce; ``aad`` binds its context."""
    nonce = bytes((_NONCE_KIND_BLOB,)) + secrets.token_bytes(NONCE_BYTES - 1)
    ciphertext = _aead(key).encrypt(nonce, plaintext, _BLOB_DOMAIN + aad)
    return bytes((BLOB_VERSION,)) + nonce + ciphertext


def decrypt_blob(key: DataKey | bytes, *, blob: bytes, aad: bytes) -> bytes:
    """Inverse of :func:`encrypt_blob`; :class:`CryptoError` if anything does not match."""
    if len(blob) < 1 + NONCE_BYTES + TAG_BYTES:
        raise CryptoError(f"encrypted blob is {len(blob)} bytes, too short to be one")
    if blob[0] != BLOB_VERSION:
        raise CryptoError(f"encrypted blob has version {blob[0]}; this build reads {BLOB_VERSION}")
    nonce = blob[1 : 1 + NONCE_BYTES]
    if nonce[0] != _NONCE_KIND_BLOB:
        raise CryptoError(f"encrypted blob has nonce kind {nonce[0]:#04x}, not a blob nonce")
    try:
        return _aead(key).decrypt(nonce, blob[1 + NONCE_BYTES :], _BLOB_DOMAIN + aad)
    except InvalidTag:
        raise CryptoError(
            "encrypted blob failed authentication: its bytes were altered, or the key or"
            " context (aad) is not the one it was encrypted with"
        ) from None


# --------------------------------------------------------------------------
# Key file


def wrapped_header(wrapped: bytes) -> tuple[int, int]:
    """(version, KEK id) of a wrapped key: version 1 names a KEK of the key file,
    version 2 a generation of the tenant's KEK (docs/format.md 8.6)."""
    if len(wrapped) != WRAPPED_BYTES:
        raise CryptoError(f"wrapped key is {len(wrapped)} bytes, expected {WRAPPED_BYTES}")
    version, kek_id = _WRAP_HEADER.unpack_from(wrapped)
    if version not in (WRAP_VERSION, WRAP_VERSION_TENANT):
        raise CryptoError(
            f"wrapped key has version {version}; this build reads {WRAP_VERSION}"
            f" and {WRAP_VERSION_TENANT}"
        )
    return int(version), int(kek_id)


def wrapped_kek_id(wrapped: bytes) -> int:
    """The id of the key-file KEK a wrapped data key was wrapped under (to find what
    to rewrap); CryptoError for a key wrapped under a tenant KEK (version 2)."""
    version, kek_id = wrapped_header(wrapped)
    if version != WRAP_VERSION:
        raise CryptoError(f"wrapped key has version {version}; this build reads {WRAP_VERSION}")
    return kek_id


def wrap_tenant(kek: bytes, generation: int, data_key: DataKey | bytes) -> bytes:
    """A data key wrapped under generation ``generation`` of a tenant's KEK ``kek``
    (version 2, 45 bytes; docs/format.md 8.6)."""
    if len(kek) != KEY_BYTES:
        raise InputError(f"a KEK is {KEY_BYTES} bytes")
    if not 1 <= generation <= 0xFFFF_FFFF:
        raise InputError(f"tenant KEK generation {generation} outside 1..2**32-1")
    return _WRAP_HEADER.pack(WRAP_VERSION_TENANT, generation) + aes_key_wrap(
        kek, _key_bytes(data_key)
    )


def unwrap_tenant(kek: bytes, wrapped: bytes) -> bytes:
    """Inverse of :func:`wrap_tenant` (the caller found ``kek`` by the generation in
    :func:`wrapped_header`); CryptoError if the wrapped key was altered."""
    version, generation = wrapped_header(wrapped)
    if version != WRAP_VERSION_TENANT:
        raise CryptoError(f"wrapped key has version {version}, not a tenant KEK's")
    try:
        return aes_key_unwrap(kek, wrapped[_WRAP_HEADER.size :])
    except InvalidUnwrap:
        raise CryptoError(
            f"wrapped key (tenant KEK generation {generation}) failed its integrity check:"
            " the wrapped key was altered or its generation changed"
        ) from None


def _encode_keyfile(keks: list[_Kek]) -> bytes:
    parts = [_KF_HEADER.pack(KEYFILE_MAGIC, KEYFILE_VERSION, b"\0\0\0", len(keks))]
    for k in keks:
        parts.append(_KF_ENTRY.pack(k.id, k.state, b"\0\0\0", k.created_ns, k.retired_ns, k.key))
    body = b"".join(parts)
    return body + hashlib.sha256(body).digest()


def _decode_keyfile(data: bytes, path: Path) -> list[_Kek]:
    def bad(why: str) -> KeyFileError:
        return KeyFileError(f"key file {path} is not a valid callvault key file: {why}")

    if len(data) < _KF_HEADER.size + _KF_DIGEST:
        raise bad(f"{len(data)} bytes, too short")
    magic, version, reserved, n = _KF_HEADER.unpack_from(data)
    if magic != KEYFILE_MAGIC:
        raise bad(f"magic {magic!r}, expected {KEYFILE_MAGIC!r}")
    if version != KEYFILE_VERSION:
        raise bad(f"format version {version}; this build reads version {KEYFILE_VERSION}")
    size = _KF_HEADER.size + n * _KF_ENTRY.size + _KF_DIGEST
    if len(data) != size:
        raise bad(f"{len(data)} bytes, but {n} entries make {size}")
    body = data[:-_KF_DIGEST]
    if hashlib.sha256(body).digest() != data[-_KF_DIGEST:]:
        raise bad("SHA-256 check failed (the file is damaged)")
    if reserved != b"\0\0\0" or n < 1:
        raise bad("reserved bytes set or no entries")
    keks: list[_Kek] = []
    for i in range(n):
        kid, state, res, created, retired, key = _KF_ENTRY.unpack_from(
            data, _KF_HEADER.size + i * _KF_ENTRY.size
        )
        if res != b"\0\0\0" or state not in KekState._value2member_map_:
            raise bad(f"entry {i} has reserved bytes set or unknown state {state}")
        if kid < 1 or (keks and kid <= keks[-1].id):
            raise bad(f"entry {i} has id {kid}; ids start at 1 and strictly increase")
        if (state == KekState.RETIRED) != (retired != 0 and key == bytes(KEY_BYTES)):
            raise bad(f"KEK {kid}: retired state, retired time and erased key disagree")
        keks.append(_Kek(kid, KekState(state), created, retired, key))
    if sum(k.state == KekState.ACTIVE for k in keks) != 1:
        raise bad("there must be exactly one active KEK")
    return keks


class KeyFile:
    """The key-encryption keys, in one owner-only file. See the module docstring.

    Contract: an instance caches the file's content; :meth:`rotate` and
    :meth:`retire` re-read the file under its lock before changing it, and
    :meth:`unwrap` re-reads it once when a wrapped key names a KEK it does not know
    (another process rotated). Thread safety: not shared between threads
    without the caller's lock.
    """

    def __init__(self, path: Path, keks: list[_Kek]) -> None:
        self.path = path
        self._keks = {k.id: k for k in keks}

    # -- opening, reading, writing

    @classmethod
    def open(cls, path: str | os.PathLike[str], create: bool = True) -> KeyFile:
        """Open the key file at ``path``; create it with one KEK if absent and ``create``."""
        p = Path(path)
        if not p.parent.is_dir():
            if not create:
                raise KeyFileError(f"key file {p}: directory {p.parent} does not exist")
            p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with cls._locked(p):
            if not p.exists() and not p.is_symlink():
                if not create:
                    raise KeyFileError(f"key file {p} does not exist (and create=False)")
                first = _Kek(1, KekState.ACTIVE, time.time_ns(), 0, secrets.token_bytes(KEY_BYTES))
                cls._write(p, [first])
            return cls(p, cls._read(p))

    @staticmethod
    @contextlib.contextmanager
    def _locked(path: Path) -> Iterator[None]:
        """Exclusive flock on ``<name>.lock``; removes a ``<name>.tmp`` left by a crash."""
        lock = path.with_name(path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, KEYFILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            tmp = path.with_name(path.name + ".tmp")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            yield
        finally:
            os.close(fd)  # releases the flock

    @staticmethod
    def _read(path: Path) -> list[_Kek]:
        try:
            data = read_private_file(path, "key file", "its keys")
        except FileNotFoundError:
            raise KeyFileError(f"key file {path} does not exist") from None
        return _decode_keyfile(data, path)

    @staticmethod
    def _write(path: Path, keks: list[_Kek]) -> None:
        """Atomic replace (callvault.durable.write_atomic: a 0600 temp file written and
        fsynced, renamed, the directory fsynced); the caller holds the lock."""
        write_atomic(path, _encode_keyfile(keks), KEYFILE_MODE)

    def reload(self) -> None:
        """Re-read the key file (after another process rotated or retired)."""
        self._keks = {k.id: k for k in self._read(self.path)}

    def _mutate(self, change: dict[int, _Kek]) -> None:
        keks = dict(self._keks)
        keks.update(change)
        self._write(self.path, [keks[i] for i in sorted(keks)])
        self._keks = keks

    # -- KEK versions

    @property
    def active(self) -> int:
        """The id of the KEK that wraps new data keys."""
        (kid,) = (k.id for k in self._keks.values() if k.state == KekState.ACTIVE)
        return kid

    def versions(self) -> list[KekVersion]:
        """Every KEK ever in the file, oldest first, without key bytes."""
        return [
            KekVersion(k.id, k.state, k.created_ns, k.retired_ns)
            for k in sorted(self._keks.values(), key=lambda k: k.id)
        ]

    def rotate(self) -> int:
        """Add a new active KEK (the old one becomes ``previous``); return its id."""
        with self._locked(self.path):
            self.reload()
            old = self._keks[self.active]
            new = _Kek(
                max(self._keks) + 1,
                KekState.ACTIVE,
                time.time_ns(),
                0,
                secrets.token_bytes(KEY_BYTES),
            )
            self._mutate(
                {
                    old.id: _Kek(old.id, KekState.PREVIOUS, old.created_ns, 0, old.key),
                    new.id: new,
                }
            )
            return new.id

    def retire(self, kek_id: int) -> None:
        """Erase KEK ``kek_id`` from the file; its id stays, marked retired.

        The caller states that no wrapped key under ``kek_id`` remains (it has
        rewrapped them all, see :func:`wrapped_kek_id`); keys still wrapped
        under it raise :class:`KeyMissing` from now on. The active KEK cannot
        be retired (rotate first). Retiring a retired KEK does nothing.
        """
        with self._locked(self.path):
            self.reload()
            k = self._keks.get(kek_id)
            if k is None:
                raise KeyMissing(kek_id, f"KEK {kek_id} is not in key file {self.path}")
            if k.state == KekState.RETIRED:
                return
            if k.state == KekState.ACTIVE:
                raise InputError(f"KEK {kek_id} is the active KEK; rotate before retiring it")
            retired = _Kek(k.id, KekState.RETIRED, k.created_ns, time.time_ns(), bytes(KEY_BYTES))
            self._mutate({kek_id: retired})

    # -- wrapping data keys

    def _kek(self, kek_id: int, for_unwrap: bool) -> bytes:
        k = self._keks.get(kek_id)
        if k is None and for_unwrap:
            self.reload()  # another process may have rotated
            k = self._keks.get(kek_id)
        if k is None:
            raise KeyMissing(kek_id, f"KEK {kek_id} is not in key file {self.path}")
        if k.state == KekState.RETIRED:
            raise KeyMissing(
                kek_id,
                f"KEK {kek_id} in key file {self.path} was retired; keys wrapped under it"
                " can no longer be unwrapped",
            )
        return k.key

    def wrap(self, data_key: DataKey | bytes, kek_id: int | None = None) -> bytes:
        """Wrap a data key under ``kek_id`` (default: the active KEK); 45 bytes."""
        kid = self.active if kek_id is None else kek_id
        kek = self._kek(kid, for_unwrap=False)
        return _WRAP_HEADER.pack(WRAP_VERSION, kid) + aes_key_wrap(kek, _key_bytes(data_key))

    def unwrap(self, wrapped: bytes) -> bytes:
        """The data key in ``wrapped``; :class:`KeyMissing` if its KEK is gone,
        :class:`CryptoError` if the wrapped key was altered."""
        kid = wrapped_kek_id(wrapped)
        kek = self._kek(kid, for_unwrap=True)
        try:
            return aes_key_unwrap(kek, wrapped[_WRAP_HEADER.size :])
        except InvalidUnwrap:
            raise CryptoError(
                f"wrapped key (KEK {kid}) failed its integrity check: the wrapped key was altered"
                " or its KEK id changed"
            ) from None

    def rewrap(self, wrapped: bytes, kek_id: int | None = None) -> bytes:
        """The same data key wrapped under ``kek_id`` (default: active); no audio touched."""
        return self.wrap(self.unwrap(wrapped), kek_id)
