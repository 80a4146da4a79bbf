"""callvault.sidecar.spool: the sidecar's per-call store-and-forward spool (docs/format.md 9)."""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from crc32c import crc32c

from callvault.errors import FormatError
from callvault.sidecar.spool import (
    FILE_HEADER_SIZE,
    KEY_FILE,
    SPOOL_FILE,
    End,
    Spool,
    SpoolKeyError,
    list_spools,
    load_sidecar_key,
    spool_name,
)
from callvault.store.crypto import CryptoError

START = b"\x0a\x04call"  # stands for a serialized CallStart: the spool keeps it as bytes


def _batch(i: int, n: int = 5) -> tuple[bytes, np.ndarray, np.ndarray]:
    lengths = np.array([172 + (i + k) % 9 for k in range(n)], np.int32)
    packets = bytes((i * 7 + k) % 256 for k in range(int(lengths.sum())))
    arrival = 1_700_000_000_000_000 + i * 20_000 + np.arange(n, dtype=np.int64) * 3
    return packets, lengths, arrival


def _filled(tmp_path: Path, batches: int = 10) -> Spool:
    s = Spool.create(tmp_path, spool_name("acme", "c-1"), START, [40000, 40001], 123)
    s.set_start_us(1_700_000_000_000_000 - 182_000)
    for i in range(batches):
        assert s.append(i % 2, *_batch(i)) == i
    return s


def test_round_trip(tmp_path: Path) -> None:
    s = _filled(tmp_path)
    s.finish(end_us=99)
    s.close()
    r = Spool.open(tmp_path / spool_name("acme", "c-1"))
    assert r.call_start == START and r.ports == (40000, 40001) and r.created_us == 123
    assert r.start_us == 1_700_000_000_000_000 - 182_000
    assert r.batches == 10 and r.end == End(10, 99) and r.dropped_bytes == 0
    for i in range(10):
        b = r.read(i)
        packets, lengths, arrival = _batch(i)
        assert (b.seq, b.leg, b.packets) == (i, i % 2, packets)
        assert b.lengths.tolist() == lengths.tolist()
        assert b.arrival_us.tolist() == arrival.tolist()


def _on_disk(d: Path) -> int:
    return sum(p.stat().st_size for p in d.iterdir() if p.is_file())


@pytest.mark.parametrize("cut", [0, 9])
def test_stored_bytes_is_what_the_directory_holds(tmp_path: Path, cut: int) -> None:
    """ListCalls' spool_bytes comes from memory (no directory scan per call and poll):
    it must equal the files' sizes through appends, acks, a reopen after a torn tail
    and the delete."""
    s = _filled(tmp_path, 4)
    d = tmp_path / spool_name("acme", "c-1")
    assert s.stored_bytes == _on_disk(d) > 0
    s.set_acked(2)
    assert s.stored_bytes == _on_disk(d)
    s.close()
    if cut:
        os.truncate(d / SPOOL_FILE, (d / SPOOL_FILE).stat().st_size - cut)
    r = Spool.open(d)
    assert r.stored_bytes == _on_disk(d)
    r.append_batches([(0, *_batch(4))])
    r.finish(end_us=5)
    assert r.stored_bytes == _on_disk(d)
    r.delete()
    assert r.stored_bytes == 0 and not d.exists()


def test_resume_from_seq(tmp_path: Path) -> None:
    s = _filled(tmp_path, 12)
    assert [b.seq for b in s.read_from(7)] == [7, 8, 9, 10, 11]
    assert list(s.read_from(12)) == []
    assert s.read(3).packets == _batch(3)[0]
    with pytest.raises(IndexError):
        s.read(12)


def test_reader_sees_batches_appended_after_it_started(tmp_path: Path) -> None:
    s = _filled(tmp_path, 2)
    it = s.read_from(0)
    assert next(it).seq == 0
    s.append(0, *_batch(2))
    assert [b.seq for b in it] == [1, 2]


@pytest.mark.parametrize("cut", [1, 5, 9, 40, 500])
def test_torn_tail_is_truncated_on_open(tmp_path: Path, cut: int) -> None:
    s = _filled(tmp_path, 6)
    s.close()
    path = tmp_path / spool_name("acme", "c-1") / SPOOL_FILE
    whole = path.stat().st_size
    os.truncate(path, whole - cut)  # the last batch record lost its tail
    r = Spool.open(path.parent)
    assert r.batches == 5 and r.dropped_bytes > 0
    assert path.stat().st_size == whole - cut - r.dropped_bytes
    # the spool goes on from there: the next batch takes seq 5
    assert r.append(1, *_batch(5)) == 5
    r.close()
    again = Spool.open(path.parent)
    assert again.batches == 6 and again.dropped_bytes == 0
    assert again.read(5).packets == _batch(5)[0]


def test_flipped_bit_in_a_record_drops_it_and_what_follows(tmp_path: Path) -> None:
    s = _filled(tmp_path, 6)
    s.close()
    path = tmp_path / spool_name("acme", "c-1") / SPOOL_FILE
    data = bytearray(path.read_bytes())
    # find batch 4's record and flip a bit in its packets
    r0 = Spool.open(path.parent)
    pos = r0._offsets[4]
    r0.close()
    data[pos + 60] ^= 0x10
    path.write_bytes(bytes(data))
    r = Spool.open(path.parent)
    assert r.batches == 4 and r.dropped_bytes == len(data) - pos


def test_not_a_spool_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "x"
    d.mkdir()
    (d / SPOOL_FILE).write_bytes(b"garbage" * 10)
    with pytest.raises(FormatError, match="not a callvault spool"):
        Spool.open(d)
    s = _filled(tmp_path, 1)
    s.close()
    path = tmp_path / spool_name("acme", "c-1") / SPOOL_FILE
    os.truncate(path, FILE_HEADER_SIZE + 3)  # the CALL record itself torn
    with pytest.raises(FormatError, match="no CALL record"):
        Spool.open(path.parent)


def test_writes_reach_the_os_at_once(tmp_path: Path) -> None:
    """A child appends batches without closing or syncing and is SIGKILLed: all are there."""
    code = (
        "import os, signal, sys\n"
        "import numpy as np\n"
        "from pathlib import Path\n"
        "from callvault.sidecar.spool import Spool\n"
        "s = Spool.create(Path(sys.argv[1]), 'c', b'', [5000], 1)\n"
        "s.set_start_us(1)\n"
        "for i in range(50):\n"
        "    s.append(0, b'x' * 172, np.array([172], np.int32), np.array([i], np.int64))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True)
    assert p.returncode == -9, p.stderr
    r = Spool.open(tmp_path / "c")
    assert r.batches == 50 and r.dropped_bytes == 0 and r.end is None
    assert r.read(49).arrival_us.tolist() == [49]


def test_acked_is_kept(tmp_path: Path) -> None:
    s = _filled(tmp_path, 3)
    s.set_acked(2)
    s.set_acked(1)  # never goes back
    s.close()
    assert Spool.open(tmp_path / spool_name("acme", "c-1")).acked == 2


def test_end_then_append_is_refused(tmp_path: Path) -> None:
    s = _filled(tmp_path, 2)
    assert s.finish() == End(2, 0)
    with pytest.raises(ValueError, match="ended"):
        s.append(0, *_batch(2))


def test_batch_before_start_us_is_refused(tmp_path: Path) -> None:
    s = Spool.create(tmp_path, "c", START, [1], 0)
    with pytest.raises(ValueError, match="set_start_us"):
        s.append(0, *_batch(0))
    with pytest.raises(ValueError, match="one length"):
        s.set_start_us(5)
        s.append(0, b"abc", np.array([2], np.int32), np.array([0], np.int64))


def test_create_twice_is_refused_and_delete_removes(tmp_path: Path) -> None:
    s = _filled(tmp_path, 1)
    with pytest.raises(FileExistsError):
        Spool.create(tmp_path, spool_name("acme", "c-1"), START, [1], 0)
    (tmp_path / ".tmp-leftover").mkdir()
    assert list_spools(tmp_path) == [tmp_path / spool_name("acme", "c-1")]
    assert not (tmp_path / ".tmp-leftover").exists()
    s.delete()
    assert list_spools(tmp_path) == []


def test_spool_names_are_safe() -> None:
    assert spool_name("", "a.b:c-1") == "default+a.b:c-1"
    assert spool_name("../x", ".") == "..%2Fx+."
    assert "/" not in spool_name("a/b", "c")


# -- encrypted at rest (version 2) ---------------------------------------------------

SECRET_START = b"\x0a\x04call\x1a\x0e+4930123456789"  # a CallStart holding a customer number


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _encrypted(root: Path, batches: int = 6) -> tuple[Spool, bytes]:
    key = load_sidecar_key(root)
    s = Spool.create(root, spool_name("acme", "c-1"), SECRET_START, [40000, 40001], 123, key=key)
    s.set_start_us(1_700_000_000_000_000 - 182_000)
    for i in range(batches):
        assert s.append(i % 2, *_batch(i)) == i
    return s, key


def test_encrypted_spool_round_trips_and_holds_no_plaintext(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    s, key = _encrypted(root)
    assert s.encrypted
    s.finish(end_us=99)
    s.close()
    d = root / spool_name("acme", "c-1")
    # directories 0700, key file and spool 0600
    assert _mode(root) == 0o700 and _mode(d) == 0o700
    assert _mode(root / KEY_FILE) == 0o600 and _mode(d / SPOOL_FILE) == 0o600
    raw = b"".join(p.read_bytes() for p in d.iterdir())
    assert b"4930123456789" not in raw
    for i in range(6):
        packets = _batch(i)[0]
        assert not any(packets[k : k + 16] in raw for k in range(0, len(packets) - 16, 16))
    r = Spool.open(d, key=load_sidecar_key(root))  # the same key, read again from its file
    assert r.call_start == SECRET_START and r.ports == (40000, 40001) and r.created_us == 123
    assert r.batches == 6 and r.end == End(6, 99) and r.dropped_bytes == 0
    for i in range(6):
        b = r.read(i)
        packets, lengths, arrival = _batch(i)
        assert (b.seq, b.leg, b.packets) == (i, i % 2, packets)
        assert b.lengths.tolist() == lengths.tolist()
        assert b.arrival_us.tolist() == arrival.tolist()


def test_encrypted_spool_needs_its_own_key(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    s, key = _encrypted(root)
    s.close()
    d = root / spool_name("acme", "c-1")
    with pytest.raises(SpoolKeyError, match="encrypted; it opens only with the sidecar key"):
        Spool.open(d)
    with pytest.raises(SpoolKeyError, match="does not open this spool"):
        Spool.open(d, key=bytes(32))
    # the key file gone while a call is spooled: an error naming it, never a new key
    (root / KEY_FILE).unlink()
    with pytest.raises(SpoolKeyError, match="sidecar.key is missing but 1 spooled call"):
        load_sidecar_key(root)
    assert not (root / KEY_FILE).exists()
    # a key file that others may read is refused
    (root / KEY_FILE).write_bytes(b"x")
    os.chmod(root / KEY_FILE, 0o644)
    with pytest.raises(SpoolKeyError, match="mode 0644"):
        load_sidecar_key(root)
    os.chmod(root / KEY_FILE, 0o600)
    with pytest.raises(SpoolKeyError, match="damaged"):
        load_sidecar_key(root)


def test_plaintext_spools_need_no_key_file(tmp_path: Path) -> None:
    s = _filled(tmp_path, 2)  # version 1, written by an older sidecar
    s.close()
    key = load_sidecar_key(tmp_path)  # created: nothing spooled needs an old key
    assert len(key) == 32 and load_sidecar_key(tmp_path) == key
    r = Spool.open(tmp_path / spool_name("acme", "c-1"), key=key)
    assert not r.encrypted and r.read(1).packets == _batch(1)[0]


def test_encrypted_spool_torn_tail_and_altered_records(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    s, key = _encrypted(root)
    s.close()
    path = root / spool_name("acme", "c-1") / SPOOL_FILE
    whole = path.stat().st_size
    os.truncate(path, whole - 7)
    r = Spool.open(path.parent, key=key)
    assert r.batches == 5 and r.dropped_bytes > 0
    assert r.append(1, *_batch(5)) == 5  # goes on with a fresh nonce
    r.close()
    r = Spool.open(path.parent, key=key)
    assert r.read(5).packets == _batch(5)[0]
    # a batch altered with its crc fixed up (on purpose, not torn) fails authentication
    pos = r._offsets[3]
    r.close()
    data = bytearray(path.read_bytes())
    length = struct.unpack_from("<I", data, pos + 4)[0]
    data[pos + 9 + 40] ^= 0x01
    struct.pack_into("<I", data, pos, crc32c(bytes(data[pos + 4 : pos + 9 + length])))
    path.write_bytes(bytes(data))
    r = Spool.open(path.parent, key=key)
    assert r.batches == 6
    with pytest.raises(CryptoError, match="failed authentication"):
        r.read(3)
    assert r.read(4).packets == _batch(4)[0]


@pytest.mark.parametrize("encrypted", [False, True])
def test_batches_appended_together_are_one_write_and_read_back_alone(
    tmp_path: Path, encrypted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """append_batches (the receiver's tick: both legs of a call at once) writes its
    records with one write(2) and they read back, and reopen, as if appended one by one;
    a batch that does not add up refuses the whole call and appends nothing."""
    key = load_sidecar_key(tmp_path) if encrypted else None
    s = Spool.create(tmp_path, spool_name("", "tick"), START, [1, 2], 5, key=key)
    s.set_start_us(1_700_000_000_000_000)
    writes: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: bytes) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counting_write)
    assert s.append_batches([(0, *_batch(0)), (1, *_batch(1, 3))]) == [0, 1]
    assert len(writes) == 1
    packets, lengths, arrival = _batch(2)
    assert s.append_batches([(1, memoryview(packets), lengths, arrival)]) == [2]
    with pytest.raises(ValueError):
        s.append_batches([(0, *_batch(3)), (1, b"short", np.array([6], np.int32), arrival[:1])])
    assert s.batches == 3 and len(writes) == 2
    monkeypatch.undo()
    s.close()
    r = Spool.open(tmp_path / spool_name("", "tick"), key=key)
    assert r.batches == 3 and r.dropped_bytes == 0 and r.packets == 5 + 3 + 5
    for seq, (leg, i, n) in enumerate([(0, 0, 5), (1, 1, 3), (1, 2, 5)]):
        b = r.read(seq)
        want = _batch(i, n)
        assert (b.seq, b.leg, b.packets) == (seq, leg, want[0])
        assert b.lengths.tolist() == want[1].tolist()
        assert b.arrival_us.tolist() == want[2].tolist()
    r.close()
