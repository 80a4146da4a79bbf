"""callvault.store.crypto: encrypted records and blobs, the key file, wrapping, rotation, shredding.

The layouts are checked against the module docstring (format v1) with struct
and AESGCM directly, not through the module's own helpers.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap

from callvault.errors import CallvaultError, InputError
from callvault.store import crypto
from callvault.store.crypto import CryptoError, KeyFile, KeyFileError, KeyMissing

CALL = b"tenant-7/call-0001"
BODY = bytes(range(256)) * 6  # about one second of one leg of Opus (1.5 KB)


@pytest.fixture
def key() -> crypto.DataKey:
    return crypto.new_data_key()


@pytest.fixture
def keyfile_path(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "callvault.keys"


@pytest.fixture
def encrypted(key: crypto.DataKey) -> bytes:
    return crypto.encrypt_record(
        key, call_id=CALL, leg=1, seq=42, plaintext=BODY, aad_extra=b"f=2100"
    )


def decrypt(key: crypto.DataKey | bytes, ciphertext: bytes, **over: object) -> bytes:
    args: dict[str, object] = {"call_id": CALL, "leg": 1, "seq": 42, "aad_extra": b"f=2100"}
    args.update(over)
    return crypto.decrypt_record(key, ciphertext=ciphertext, **args)  # type: ignore[arg-type]


def flip(data: bytes, index: int, bit: int = 0) -> bytes:
    b = bytearray(data)
    b[index] ^= 1 << bit
    return bytes(b)


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (the venv's), as another process would."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


# --------------------------------------------------------------------------
# Encrypted records


def test_record_round_trip(key: crypto.DataKey, encrypted: bytes) -> None:
    assert decrypt(key, encrypted) == BODY
    # The raw key bytes work the same as the DataKey (which caches its cipher).
    assert decrypt(key.key, encrypted) == BODY
    empty = crypto.encrypt_record(key.key, call_id=CALL, leg=0, seq=0, plaintext=b"")
    assert crypto.decrypt_record(key, call_id=CALL, leg=0, seq=0, ciphertext=empty) == b""


def test_encrypted_record_matches_documented_layout(key: crypto.DataKey, encrypted: bytes) -> None:
    assert len(encrypted) == 1 + len(BODY) + 16
    assert encrypted[0] == 1
    nonce = bytes([0x00, 0x00]) + struct.pack(">H", 1) + struct.pack(">Q", 42)
    aad = b"cvr1" + struct.pack(">H", len(CALL)) + CALL + struct.pack(">HQ", 1, 42) + b"f=2100"
    assert AESGCM(key.key).decrypt(nonce, encrypted[1:], aad) == BODY


def test_decrypt_record_wrong_key_raises(encrypted: bytes) -> None:
    with pytest.raises(CryptoError, match="failed authentication"):
        decrypt(crypto.new_data_key(), encrypted)


def test_decrypt_record_wrong_call_id_raises(key: crypto.DataKey, encrypted: bytes) -> None:
    with pytest.raises(CryptoError, match="failed authentication"):
        decrypt(key, encrypted, call_id=b"tenant-7/call-0002")


def test_decrypt_record_wrong_leg_raises(key: crypto.DataKey, encrypted: bytes) -> None:
    with pytest.raises(CryptoError, match="leg 0 seq 42 failed authentication"):
        decrypt(key, encrypted, leg=0)


def test_decrypt_record_wrong_seq_raises(key: crypto.DataKey, encrypted: bytes) -> None:
    with pytest.raises(CryptoError, match="failed authentication"):
        decrypt(key, encrypted, seq=43)


def test_decrypt_record_wrong_aad_extra_raises(key: crypto.DataKey, encrypted: bytes) -> None:
    with pytest.raises(CryptoError, match="failed authentication"):
        decrypt(key, encrypted, aad_extra=b"f=2150")


def test_decrypt_record_flipped_ciphertext_bit_raises(
    key: crypto.DataKey, encrypted: bytes
) -> None:
    with pytest.raises(CryptoError, match="altered"):
        decrypt(key, flip(encrypted, 1 + len(BODY) // 2, bit=3))


def test_decrypt_record_flipped_tag_bit_raises(key: crypto.DataKey, encrypted: bytes) -> None:
    with pytest.raises(CryptoError, match="altered"):
        decrypt(key, flip(encrypted, len(encrypted) - 1, bit=7))


def test_decrypt_record_unknown_version_or_truncated_raises(
    key: crypto.DataKey, encrypted: bytes
) -> None:
    with pytest.raises(CryptoError, match="version 2"):
        decrypt(key, b"\x02" + encrypted[1:])
    with pytest.raises(CryptoError, match="shorter"):
        decrypt(key, encrypted[:16])


def test_record_nonces_distinct_across_leg_seq_and_deterministic() -> None:
    pairs = [(leg, seq) for leg in (0, 1, 2, 255, 256, 0xFFFF) for seq in range(2000)]
    pairs += [(0, 2**64 - 1), (1, 2**32), (0, 2**16)]
    nonces = [crypto.record_nonce(leg, seq) for leg, seq in pairs]
    assert all(len(n) == 12 for n in nonces)
    assert len(set(nonces)) == len(pairs)
    assert nonces == [crypto.record_nonce(leg, seq) for leg, seq in pairs]


def test_encrypting_the_same_record_twice_gives_the_same_bytes(key: crypto.DataKey) -> None:
    a = crypto.encrypt_record(key, call_id=CALL, leg=0, seq=7, plaintext=BODY)
    b = crypto.encrypt_record(key.key, call_id=CALL, leg=0, seq=7, plaintext=BODY)
    assert a == b  # the nonce is derived, not random: a retried record is the same record


def test_record_arguments_out_of_range_raise_input_error(key: crypto.DataKey) -> None:
    for leg, seq in ((-1, 0), (0x10000, 0), (0, -1), (0, 2**64)):
        with pytest.raises(InputError):
            crypto.encrypt_record(key, call_id=CALL, leg=leg, seq=seq, plaintext=b"x")
    with pytest.raises(InputError, match="call_id"):
        crypto.encrypt_record(key, call_id=b"", leg=0, seq=0, plaintext=b"x")
    with pytest.raises(InputError, match="32 bytes"):
        crypto.encrypt_record(b"short", call_id=CALL, leg=0, seq=0, plaintext=b"x")


# --------------------------------------------------------------------------
# Encrypted blobs (call metadata)

NUMBER = b"+44 20 7946 0958"
BLOB_AAD = b"tenant-7\0call-0001\0customer_number"


def test_blob_round_trip_with_random_nonce(key: crypto.DataKey) -> None:
    a = crypto.encrypt_blob(key, plaintext=NUMBER, aad=BLOB_AAD)
    b = crypto.encrypt_blob(key, plaintext=NUMBER, aad=BLOB_AAD)
    assert a != b
    assert a[0] == 1 and a[1] == 0x01 and len(a) == 1 + 12 + len(NUMBER) + 16
    assert crypto.decrypt_blob(key, blob=a, aad=BLOB_AAD) == NUMBER
    assert crypto.decrypt_blob(key.key, blob=b, aad=BLOB_AAD) == NUMBER
    assert AESGCM(key.key).decrypt(a[1:13], a[13:], b"cvb1" + BLOB_AAD) == NUMBER


def test_decrypt_blob_wrong_aad_raises(key: crypto.DataKey) -> None:
    blob = crypto.encrypt_blob(key, plaintext=NUMBER, aad=BLOB_AAD)
    with pytest.raises(CryptoError, match="context"):
        crypto.decrypt_blob(key, blob=blob, aad=b"tenant-7\0call-0002\0customer_number")


def test_decrypt_blob_flipped_bit_or_wrong_key_raises(key: crypto.DataKey) -> None:
    blob = crypto.encrypt_blob(key, plaintext=NUMBER, aad=BLOB_AAD)
    for i in (2, 13, len(blob) - 1):
        with pytest.raises(CryptoError, match="altered"):
            crypto.decrypt_blob(key, blob=flip(blob, i), aad=BLOB_AAD)
    with pytest.raises(CryptoError):
        crypto.decrypt_blob(crypto.new_data_key(), blob=blob, aad=BLOB_AAD)


# --------------------------------------------------------------------------
# Key file


def test_keyfile_created_with_mode_0600(keyfile_path: Path) -> None:
    old = os.umask(0)  # a permissive umask must not widen the file
    try:
        kf = KeyFile.open(keyfile_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(keyfile_path.stat().st_mode) == 0o600
    assert kf.active == 1
    assert [(v.id, v.state) for v in kf.versions()] == [(1, crypto.KekState.ACTIVE)]
    kf.rotate()
    assert stat.S_IMODE(keyfile_path.stat().st_mode) == 0o600


def test_keyfile_refuses_0644_with_chmod_hint(keyfile_path: Path) -> None:
    KeyFile.open(keyfile_path)
    keyfile_path.chmod(0o644)
    with pytest.raises(KeyFileError) as e:
        KeyFile.open(keyfile_path)
    assert f"chmod 600 {keyfile_path}" in str(e.value)
    assert "0644" in str(e.value)
    keyfile_path.chmod(0o640)  # group-readable only: refused too
    with pytest.raises(KeyFileError, match="0640"):
        KeyFile.open(keyfile_path)
    keyfile_path.chmod(0o600)
    assert KeyFile.open(keyfile_path).active == 1


def test_keyfile_open_missing_without_create_raises(keyfile_path: Path) -> None:
    keyfile_path.parent.mkdir()
    with pytest.raises(KeyFileError, match="does not exist"):
        KeyFile.open(keyfile_path, create=False)
    assert not keyfile_path.exists()


def test_keyfile_reopened_has_same_keks(keyfile_path: Path, key: crypto.DataKey) -> None:
    kf = KeyFile.open(keyfile_path)
    blob = kf.wrap(key)
    kf.rotate()
    again = KeyFile.open(keyfile_path, create=False)
    assert again.active == 2
    assert again.versions() == kf.versions()
    assert again.unwrap(blob) == key.key


def test_keyfile_matches_documented_layout(keyfile_path: Path) -> None:
    kf = KeyFile.open(keyfile_path)
    kf.rotate()
    kf.retire(1)
    data = keyfile_path.read_bytes()
    assert len(data) == 12 + 2 * 56 + 32
    assert data[:4] == b"CVKF" and data[4] == 1 and data[5:8] == bytes(3)
    assert struct.unpack(">I", data[8:12]) == (2,)
    assert hashlib.sha256(data[:-32]).digest() == data[-32:]
    e1 = struct.unpack(">IB3sQQ32s", data[12:68])
    e2 = struct.unpack(">IB3sQQ32s", data[68:124])
    assert (e1[0], e1[1], e1[5]) == (1, 3, bytes(32))  # retired: key erased
    assert e1[4] >= e1[3] > 0
    assert (e2[0], e2[1], e2[4]) == (2, 1, 0) and e2[5] != bytes(32)


def test_keyfile_damaged_is_refused(keyfile_path: Path) -> None:
    KeyFile.open(keyfile_path)
    data = keyfile_path.read_bytes()
    keyfile_path.write_bytes(flip(data, 40))
    with pytest.raises(KeyFileError, match="damaged"):
        KeyFile.open(keyfile_path)
    keyfile_path.write_bytes(data[:-1])
    with pytest.raises(KeyFileError, match="bytes"):
        KeyFile.open(keyfile_path)


def test_keyfile_writes_leave_no_temp_file(keyfile_path: Path, key: crypto.DataKey) -> None:
    kf = KeyFile.open(keyfile_path)
    kf.rotate()
    kf.rotate()
    kf.retire(1)
    names = sorted(p.name for p in keyfile_path.parent.iterdir())
    assert names == ["callvault.keys", "callvault.keys.lock"]


CRASH_IN_RENAME = """
    import os, sys
    from callvault.store import crypto
    kf = crypto.KeyFile.open(sys.argv[1], create=False)
    os.replace = lambda src, dst: os._exit(77)  # the process dies before the rename
    kf.rotate()
"""


def test_keyfile_crash_before_rename_keeps_old_file(
    keyfile_path: Path, key: crypto.DataKey
) -> None:
    kf = KeyFile.open(keyfile_path)
    blob = kf.wrap(key)
    before = keyfile_path.read_bytes()
    r = run_python(CRASH_IN_RENAME, str(keyfile_path))
    assert r.returncode == 77, r.stderr
    tmp = keyfile_path.with_name("callvault.keys.tmp")
    # The crash left the new content, whole and fsynced, in the temp file only.
    assert tmp.exists() and len(tmp.read_bytes()) == 12 + 2 * 56 + 32
    assert keyfile_path.read_bytes() == before
    reopened = KeyFile.open(keyfile_path, create=False)
    assert reopened.active == 1 and reopened.unwrap(blob) == key.key
    assert not tmp.exists()  # cleaned under the lock on open
    assert reopened.rotate() == 2


# --------------------------------------------------------------------------
# Wrapping, rotation, retirement


def test_wrap_unwrap_round_trip_and_layout(keyfile_path: Path, key: crypto.DataKey) -> None:
    kf = KeyFile.open(keyfile_path)
    blob = kf.wrap(key)
    assert len(blob) == 45 and blob[0] == 1 and blob[1:5] == struct.pack(">I", 1)
    assert crypto.wrapped_kek_id(blob) == 1
    assert kf.unwrap(blob) == key.key
    assert kf.unwrap(kf.wrap(key.key)) == key.key
    # RFC 3394 under KEK 1, read straight from the documented key-file entry.
    kek1 = keyfile_path.read_bytes()[12 + 24 : 12 + 56]
    assert aes_key_unwrap(kek1, blob[5:]) == key.key


def test_unwrap_tampered_blob_raises_crypto_error(keyfile_path: Path, key: crypto.DataKey) -> None:
    kf = KeyFile.open(keyfile_path)
    blob = kf.wrap(key)
    for i in (5, 20, 44):
        with pytest.raises(CryptoError, match="integrity check"):
            kf.unwrap(flip(blob, i))
    with pytest.raises(CryptoError, match="version"):
        kf.unwrap(b"\x02" + blob[1:])
    with pytest.raises(CryptoError, match="45"):
        kf.unwrap(blob[:-1])


def test_unwrap_with_changed_kek_id_raises_crypto_error(
    keyfile_path: Path, key: crypto.DataKey
) -> None:
    kf = KeyFile.open(keyfile_path)
    blob = kf.wrap(key)
    kf.rotate()
    with pytest.raises(CryptoError, match="integrity check"):
        kf.unwrap(blob[:1] + struct.pack(">I", 2) + blob[5:])


def test_unwrap_unknown_kek_raises_key_missing(keyfile_path: Path, key: crypto.DataKey) -> None:
    kf = KeyFile.open(keyfile_path)
    blob = kf.wrap(key)
    forged = blob[:1] + struct.pack(">I", 9) + blob[5:]
    with pytest.raises(KeyMissing, match="KEK 9 is not in key file") as e:
        kf.unwrap(forged)
    assert e.value.kek_id == 9
    assert isinstance(e.value, CallvaultError) and isinstance(e.value, LookupError)


def test_rotation_rewrap_then_retire(keyfile_path: Path, key: crypto.DataKey) -> None:
    kf = KeyFile.open(keyfile_path)
    old = kf.wrap(key)
    assert crypto.wrapped_kek_id(old) == 1
    assert kf.rotate() == 2 and kf.active == 2
    assert kf.unwrap(old) == key.key  # the previous KEK still unwraps
    new = kf.rewrap(old)
    assert crypto.wrapped_kek_id(new) == 2 and new != old
    assert kf.unwrap(new) == key.key
    kf.retire(1)
    assert [(v.id, v.state) for v in kf.versions()] == [
        (1, crypto.KekState.RETIRED),
        (2, crypto.KekState.ACTIVE),
    ]
    with pytest.raises(KeyMissing, match="KEK 1 .* was retired"):
        kf.unwrap(old)
    assert kf.unwrap(new) == key.key
    reopened = KeyFile.open(keyfile_path, create=False)
    with pytest.raises(KeyMissing):
        reopened.unwrap(old)
    assert reopened.unwrap(new) == key.key
    assert reopened.rotate() == 3  # ids are never reused


def test_retire_active_kek_refused(keyfile_path: Path) -> None:
    kf = KeyFile.open(keyfile_path)
    with pytest.raises(InputError, match="rotate before retiring"):
        kf.retire(1)
    with pytest.raises(KeyMissing):
        kf.retire(5)
    assert kf.versions()[0].state == crypto.KekState.ACTIVE


def test_rotation_by_another_instance_is_seen(keyfile_path: Path, key: crypto.DataKey) -> None:
    vault_view = KeyFile.open(keyfile_path)
    admin_view = KeyFile.open(keyfile_path, create=False)
    assert admin_view.rotate() == 2
    blob = admin_view.wrap(key)
    assert vault_view.unwrap(blob) == key.key  # unknown KEK id: re-read once
    assert vault_view.active == 2
    assert vault_view.rotate() == 3  # re-read under the lock: no lost rotation
    admin_view.reload()
    assert [v.id for v in admin_view.versions()] == [1, 2, 3]


# --------------------------------------------------------------------------
# No plaintext at rest; crypto-shredding


def windows(data: bytes, size: int) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data) - size + 1))


def test_no_plaintext_in_key_file_wrapped_key_or_encrypted_bytes(
    keyfile_path: Path, key: crypto.DataKey, encrypted: bytes
) -> None:
    kf = KeyFile.open(keyfile_path)
    blob = kf.wrap(key)
    kf.rotate()
    rewrapped = kf.rewrap(blob)
    keyfile = keyfile_path.read_bytes()
    for stored in (keyfile, blob, rewrapped, encrypted):
        assert key.key not in stored
        # not even half of the data key appears anywhere
        assert not any(w in stored for w in windows(key.key, 16))
    # No 8-byte run of the record body (varied, no repeats within 256 bytes) survives.
    assert not any(w in encrypted for w in windows(BODY[:256], 8))
    number = crypto.encrypt_blob(key, plaintext=NUMBER, aad=BLOB_AAD)
    assert not any(w in number for w in windows(NUMBER, 4))


SHRED_READER = """
    import sys
    from pathlib import Path
    from callvault.store import crypto
    d = Path(sys.argv[1])
    record = (d / "record").read_bytes()
    def try_open(k):
        try:
            return crypto.decrypt_record(k, call_id=b"call-9", leg=0, seq=0, ciphertext=record)
        except crypto.CryptoError:
            return None
    wrapped = d / "wrapped-key"
    if wrapped.exists():
        kf = crypto.KeyFile.open(d / "keys", create=False)
        try:
            key = kf.unwrap(wrapped.read_bytes())
        except crypto.KeyMissing as e:
            print("KeyMissing", e.kek_id)
            sys.exit(0)
        print("opened", try_open(key).hex())
        sys.exit(0)
    # No wrapped key: try every 32-byte run of every file left as the key.
    tried = 0
    for f in sorted(d.iterdir()):
        data = f.read_bytes()
        for i in range(len(data) - 31):
            tried += 1
            if try_open(data[i : i + 32]) is not None:
                print("opened with bytes of", f.name)
                sys.exit(0)
    print("cannot decrypt", tried)
"""


def test_crypto_shredding_fresh_process_cannot_decrypt(tmp_path: Path) -> None:
    kf = KeyFile.open(tmp_path / "keys")
    key = crypto.new_data_key()
    (tmp_path / "record").write_bytes(
        crypto.encrypt_record(key, call_id=b"call-9", leg=0, seq=0, plaintext=BODY)
    )
    (tmp_path / "wrapped-key").write_bytes(kf.wrap(key))
    del key
    r = run_python(SHRED_READER, str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["opened", BODY.hex()]  # the files on disk suffice ...
    (tmp_path / "wrapped-key").unlink()  # ... until the vault deletes the wrapped key
    r = run_python(SHRED_READER, str(tmp_path))
    assert r.returncode == 0, r.stderr
    verdict, tried = r.stdout.split()[:2], int(r.stdout.split()[2])
    assert verdict == ["cannot", "decrypt"]
    assert tried > len(BODY)  # the key file's and the record's bytes were all tried


def test_crypto_shredding_by_retiring_kek_defeats_a_copied_wrapped_key(tmp_path: Path) -> None:
    kf = KeyFile.open(tmp_path / "keys")
    key = crypto.new_data_key()
    (tmp_path / "record").write_bytes(
        crypto.encrypt_record(key, call_id=b"call-9", leg=0, seq=0, plaintext=BODY)
    )
    (tmp_path / "wrapped-key").write_bytes(kf.wrap(key))  # e.g. an old backup's copy
    kf.rotate()
    kf.retire(1)
    r = run_python(SHRED_READER, str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["KeyMissing", "1"]


def test_data_key_repr_hides_key(key: crypto.DataKey) -> None:
    assert key.key.hex() not in repr(key)
    assert repr(key.key) not in repr(key)
    with pytest.raises(InputError):
        crypto.DataKey(b"\0" * 16)
