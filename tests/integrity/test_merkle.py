"""Tests of callvault.integrity.merkle (RFC 9162 trees and proofs) and
callvault.integrity.log (the persistent Merkle log).

The conformance vectors are transparency-dev/merkle's testdata, vendored in
tests/integrity/vectors/merkle/ (Apache-2.0, its LICENSE and upstream commit
beside them in README.md). Every file is run; a missing directory fails the tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callvault.errors import InputError
from callvault.integrity import merkle
from callvault.integrity.log import (
    HEADER_SIZE,
    LogCorruptError,
    MerkleLog,
    record_length,
    record_offset,
)
from callvault.integrity.merkle import ProofError

VECTORS = Path(__file__).resolve().parent / "vectors" / "merkle"
TESTDATA = VECTORS / "testdata"


def _b64(s: str | None) -> bytes:
    return base64.b64decode(s or "", validate=True)


def _proof(d: dict[str, Any]) -> list[bytes]:
    return [_b64(p) for p in (d.get("proof") or [])]


def _run_vectors(kind: str, check: Callable[[dict[str, Any]], None]) -> int:
    """Run every vector file of ``kind``; fail listing each that disagrees."""
    directory = TESTDATA / kind
    assert directory.is_dir(), f"conformance vectors missing: {directory}"
    files = sorted(directory.rglob("*.json"))
    assert files, f"no vectors in {directory}"
    ran = 0
    wrong = []
    for f in files:
        d = json.loads(f.read_text())
        try:
            check(d)
            err: ProofError | None = None
        except ProofError as e:
            err = e
        ran += 1
        if (err is not None) != d["wantErr"]:
            wrong.append(f"{f.relative_to(TESTDATA)}: wantErr={d['wantErr']}, got {err!r}")
    assert not wrong, "\n".join(wrong)
    assert ran == len(files) == len(list(directory.rglob("*"))) - _dirs(directory)
    return ran


def _dirs(directory: Path) -> int:
    return sum(1 for p in directory.rglob("*") if p.is_dir())


# ---------------------------------------------------------------------------
# Conformance vectors


def test_inclusion_vectors_all_pass() -> None:
    ran = _run_vectors(
        "inclusion",
        lambda d: merkle.verify_inclusion(
            d["leafIdx"], d["treeSize"], _b64(d["leafHash"]), _proof(d), _b64(d["root"])
        ),
    )
    assert ran == 98


def test_consistency_vectors_all_pass() -> None:
    ran = _run_vectors(
        "consistency",
        lambda d: merkle.verify_consistency(
            d["size1"], d["size2"], _b64(d["root1"]), _b64(d["root2"]), _proof(d)
        ),
    )
    assert ran == 98


def test_subtree_inclusion_vectors_all_pass() -> None:
    ran = _run_vectors(
        "subtreeinclusion",
        lambda d: merkle.verify_subtree_inclusion(
            d["leafIdx"], d["start"], d["end"], _b64(d["leafHash"]), _proof(d), _b64(d["root"])
        ),
    )
    assert ran == 204


def test_subtree_consistency_vectors_all_pass() -> None:
    ran = _run_vectors(
        "subtreeconsistency",
        lambda d: merkle.verify_subtree_consistency(
            d["start"], d["end"], d["size"], _b64(d["root1"]), _b64(d["root2"]), _proof(d)
        ),
    )
    assert ran == 118


def test_vector_happy_paths_are_reproduced_by_our_proof_generator() -> None:
    # transparency-dev's test tree: leaf i's data is the i-th of these.
    leaves = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ]
    hashes = [merkle.leaf_hash(x) for x in leaves]
    checked = 0
    for f in sorted((TESTDATA / "inclusion").glob("[0-9]/happy-path.json")):
        d = json.loads(f.read_text())
        n = d["treeSize"]
        assert _b64(d["root"]) == merkle.root(hashes[:n])
        assert merkle.inclusion_proof(hashes[:n], d["leafIdx"]) == _proof(d)
        checked += 1
    for f in sorted((TESTDATA / "consistency").glob("[0-9]/happy-path.json")):
        d = json.loads(f.read_text())
        n = d["size2"]
        assert merkle.consistency_proof(hashes[:n], d["size1"]) == _proof(d)
        checked += 1
    assert checked == 10


# ---------------------------------------------------------------------------
# Hashes


def test_leaf_hash_is_sha256_of_zero_prefix_and_data() -> None:
    assert merkle.leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()


def test_node_hash_is_sha256_of_one_prefix_and_children() -> None:
    left, right = b"L" * 32, b"R" * 32
    assert merkle.node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()


def test_empty_tree_root_is_sha256_of_empty_string() -> None:
    assert merkle.root([]) == hashlib.sha256(b"").digest() == merkle.EMPTY_ROOT


def test_root_of_three_leaves_splits_at_two() -> None:
    a, b, c = (merkle.leaf_hash(x) for x in (b"a", b"b", b"c"))
    assert merkle.root([a, b, c]) == merkle.node_hash(merkle.node_hash(a, b), c)


# ---------------------------------------------------------------------------
# Proof shapes: RFC 6962 section 2.1.3's example tree of 7 leaves
# (a..f, d6 leaves; g=[0,2) h=[2,4) i=[4,6) j=d6, k=[0,4) l=[4,7)).


@pytest.mark.parametrize(
    ("index", "want"),
    [
        (0, [(1, 2), (2, 4), (4, 7)]),  # [b, h, l]
        (3, [(2, 3), (0, 2), (4, 7)]),  # [c, g, l]
        (4, [(5, 6), (6, 7), (0, 4)]),  # [f, j, k]
        (6, [(4, 6), (0, 4)]),  # [i, k]
    ],
)
def test_rfc6962_example_audit_paths(index: int, want: list[tuple[int, int]]) -> None:
    assert merkle.inclusion_ranges(index, 7) == want


@pytest.mark.parametrize(
    ("old", "want"),
    [
        (3, [(2, 3), (3, 4), (0, 2), (4, 7)]),  # [c, d, g, l]
        (4, [(4, 7)]),  # [l]
        (6, [(4, 6), (6, 7), (0, 4)]),  # [i, j, k]
    ],
)
def test_rfc6962_example_consistency_proofs(old: int, want: list[tuple[int, int]]) -> None:
    assert merkle.consistency_ranges(old, 7) == want


def test_subtree_consistency_proof_of_a_node_is_its_audit_path() -> None:
    # [4, 6) is node (level 1, index 2) of an 8-leaf tree: its proof is the
    # hashes of its two ancestors' siblings, [6, 8) then [0, 4).
    assert merkle.subtree_consistency_ranges(4, 6, 8) == [(6, 8), (0, 4)]


# ---------------------------------------------------------------------------
# Generated proofs verify; every mutation of them fails


def _hashes(n: int) -> list[bytes]:
    return [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def test_every_inclusion_proof_up_to_33_leaves_verifies() -> None:
    for n in range(1, 34):
        hs = _hashes(n)
        r = merkle.root(hs)
        for i in range(n):
            merkle.verify_inclusion(i, n, hs[i], merkle.inclusion_proof(hs, i), r)


def test_every_consistency_proof_up_to_33_leaves_verifies() -> None:
    for n in range(1, 34):
        hs = _hashes(n)
        for m in range(1, n + 1):
            proof = merkle.consistency_proof(hs, m)
            merkle.verify_consistency(m, n, merkle.root(hs[:m]), merkle.root(hs), proof)


def test_every_subtree_proof_up_to_20_leaves_verifies_including_nonzero_starts() -> None:
    nonzero_starts = 0
    for n in range(1, 21):
        hs = _hashes(n)
        r = merkle.root(hs)
        for end in range(1, n + 1):
            for start in range(end):
                if not merkle.is_valid_subtree(start, end):
                    continue
                nonzero_starts += start > 0
                sub = merkle.subtree_root(hs, start, end)
                proof = merkle.subtree_consistency_proof(hs, start, end)
                merkle.verify_subtree_consistency(start, end, n, sub, r, proof)
                for i in range(start, end):
                    p = merkle.subtree_inclusion_proof(hs, i, start, end)
                    merkle.verify_subtree_inclusion(i, start, end, hs[i], p, sub)
    assert nonzero_starts > 100


def test_subtree_consistency_from_zero_equals_rfc_consistency_proof() -> None:
    for n in range(1, 34):
        for m in range(1, n + 1):
            assert merkle.subtree_consistency_ranges(0, m, n) == merkle.consistency_ranges(m, n)


def _mutations(proof: list[bytes]) -> list[list[bytes]]:
    out = (
        [proof[:-1], proof[1:], [*proof, proof[-1]], [bytes(32), *proof]]
        if proof
        else [[bytes(32)]]
    )
    for i in range(len(proof)):
        flipped = bytearray(proof[i])
        flipped[7] ^= 0x10
        out.append([*proof[:i], bytes(flipped), *proof[i + 1 :]])
    return out


def test_mutated_inclusion_proofs_fail() -> None:
    for n in range(1, 18):
        hs = _hashes(n)
        r = merkle.root(hs)
        for i in range(n):
            for bad in _mutations(merkle.inclusion_proof(hs, i)):
                with pytest.raises(ProofError):
                    merkle.verify_inclusion(i, n, hs[i], bad, r)


def test_mutated_consistency_proofs_fail_in_both_verifiers() -> None:
    # RFC 9162's bit-walking verifier and the structural subtree verifier must
    # agree on every mutation.
    for n in range(2, 18):
        hs = _hashes(n)
        r = merkle.root(hs)
        for m in range(1, n):
            r1 = merkle.root(hs[:m])
            for bad in _mutations(merkle.consistency_proof(hs, m)):
                with pytest.raises(ProofError):
                    merkle.verify_consistency(m, n, r1, r, bad)
                with pytest.raises(ProofError):
                    merkle.verify_subtree_consistency(0, m, n, r1, r, bad)


@given(st.integers(1, 300), st.data())
def test_random_tree_proofs_verify_and_wrong_roots_fail(n: int, data: st.DataObject) -> None:
    hs = _hashes(n)
    r = merkle.root(hs)
    i = data.draw(st.integers(0, n - 1))
    m = data.draw(st.integers(1, n))
    merkle.verify_inclusion(i, n, hs[i], merkle.inclusion_proof(hs, i), r)
    merkle.verify_consistency(m, n, merkle.root(hs[:m]), r, merkle.consistency_proof(hs, m))
    with pytest.raises(ProofError, match="root"):
        merkle.verify_inclusion(i, n, hs[i], merkle.inclusion_proof(hs, i), bytes(32))


# ---------------------------------------------------------------------------
# Errors say why


def test_inclusion_index_out_of_range_is_reported() -> None:
    with pytest.raises(ProofError, match="out of range"):
        merkle.verify_inclusion(5, 5, bytes(32), [], bytes(32))


def test_inclusion_proof_too_long_is_reported() -> None:
    hs = _hashes(4)
    proof = merkle.inclusion_proof(hs, 1)
    with pytest.raises(ProofError, match="too long"):
        merkle.verify_inclusion(1, 4, hs[1], [*proof, bytes(32)], merkle.root(hs))


def test_inclusion_proof_too_short_is_reported() -> None:
    hs = _hashes(4)
    proof = merkle.inclusion_proof(hs, 1)
    with pytest.raises(ProofError, match="too short"):
        merkle.verify_inclusion(1, 4, hs[1], proof[:-1], merkle.root(hs))


def test_inclusion_wrong_root_is_reported() -> None:
    hs = _hashes(4)
    with pytest.raises(ProofError, match="not the expected"):
        merkle.verify_inclusion(1, 4, hs[1], merkle.inclusion_proof(hs, 1), bytes(32))


def test_consistency_shrinking_tree_is_reported() -> None:
    with pytest.raises(ProofError, match="smaller than old size"):
        merkle.verify_consistency(5, 4, bytes(32), bytes(32), [])


def test_consistency_wrong_old_root_is_reported() -> None:
    hs = _hashes(7)
    with pytest.raises(ProofError, match="old root"):
        merkle.verify_consistency(3, 7, bytes(32), merkle.root(hs), merkle.consistency_proof(hs, 3))


def test_proof_hash_of_wrong_length_is_reported() -> None:
    hs = _hashes(4)
    with pytest.raises(ProofError, match="33 bytes"):
        merkle.verify_inclusion(0, 4, hs[0], [bytes(33), bytes(32)], merkle.root(hs))


# ---------------------------------------------------------------------------
# The persistent log


def _data(i: int) -> bytes:
    return b"seal-%d" % i


def _filled(path: Path, n: int, sync: bool = True) -> MerkleLog:
    log = MerkleLog.open(path)
    log.append_many(_data(i) for i in range(n))
    if sync:
        log.sync()
    return log


def test_log_roots_and_proofs_equal_the_in_memory_tree(tmp_path: Path) -> None:
    n = 70
    hs = [merkle.leaf_hash(_data(i)) for i in range(n)]
    with MerkleLog.open(tmp_path) as log:
        for i in range(n):
            assert log.append(_data(i)) == i
        assert log.size == n
        for size in range(n + 1):
            assert log.root(size) == merkle.root(hs[:size])
            for i in range(size):
                assert log.inclusion_proof(i, size) == merkle.inclusion_proof(hs[:size], i)
            for old in range(size + 1):
                assert log.consistency_proof(old, size) == merkle.consistency_proof(hs[:size], old)
        assert [log.leaf_hash(i) for i in range(n)] == hs


def test_log_file_length_matches_documented_record_offsets(tmp_path: Path) -> None:
    with _filled(tmp_path, 13) as log:
        assert log.size == 13
    assert (tmp_path / "tree").stat().st_size == record_offset(13)
    # 13 leaves: 13 leaf hashes + 13 - popcount(13) = 10 node hashes + 13 CRCs.
    assert record_offset(13) == HEADER_SIZE + 32 * 23 + 4 * 13


def test_log_node_is_where_the_format_says(tmp_path: Path) -> None:
    hs = [merkle.leaf_hash(_data(i)) for i in range(8)]
    with _filled(tmp_path, 8):
        pass
    raw = (tmp_path / "tree").read_bytes()
    # node (level 2, index 1) = MTH of leaves [4, 8): hash 2 of record 7.
    off = record_offset(7) + 32 * 2
    assert raw[off : off + 32] == merkle.subtree_root(hs, 4, 8)
    assert raw[:8] == b"CVMRKLOG"


def test_log_reopens_with_same_root_and_appends_continue(tmp_path: Path) -> None:
    with _filled(tmp_path, 21) as log:
        r21 = log.root()
    with MerkleLog.open(tmp_path) as log:
        assert log.size == 21 and log.root() == r21
        assert log.recovery.truncated_bytes == 0
        log.append(_data(21))
        log.sync()
    hs = [merkle.leaf_hash(_data(i)) for i in range(22)]
    with MerkleLog.open(tmp_path) as log:
        assert log.root() == merkle.root(hs)


def test_log_proofs_take_logarithmic_reads(tmp_path: Path) -> None:
    n = (1 << 15) + 12345
    with _filled(tmp_path, n) as log:
        log.reads = 0
        log.root(n - 7)
        log.inclusion_proof(12345, n)
        log.consistency_proof(1000, n - 3)
        log.leaf_hash(n - 1)
        # log2(45113) ~ 15.5: each call reads at most ~2 log2 n nodes.
        assert 0 < log.reads <= 4 * 2 * 16


def test_log_reopen_reads_only_the_right_edge(tmp_path: Path) -> None:
    n = 5000
    with _filled(tmp_path, n):
        pass
    with MerkleLog.open(tmp_path) as log:
        assert log.size == n
        assert log.reads <= (n).bit_count()


def test_log_torn_tail_is_truncated_at_every_byte_offset_of_the_last_record(
    tmp_path: Path,
) -> None:
    # 11 synced leaves, then leaf 11 (whose record holds 3 node hashes: 12 = 0b1100 has
    # two trailing zeros, so 32*3 + 4 bytes) written but not synced.
    src = tmp_path / "src"
    with _filled(src, 11) as log:
        root11 = log.root()
        log.append(_data(11))
        root12 = log.root()
    full = (src / "tree").read_bytes()
    start, length = record_offset(11), record_length(11)
    assert len(full) == start + length and length == 32 * 3 + 4
    marker = (src / "synced").read_bytes()
    for cut in range(start, start + length + 1):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / "tree").write_bytes(full[:cut])
        (d / "synced").write_bytes(marker)
        with MerkleLog.open(d) as log:
            if cut == start + length:
                assert log.size == 12 and log.root() == root12
                assert log.recovery.truncated_bytes == 0
            else:
                assert log.size == 11, cut
                assert log.root() == root11
                assert log.recovery.truncated_bytes == cut - start
                assert (d / "tree").stat().st_size == start
                log.append(_data(11))
                assert log.root() == root12


def test_log_garbage_tail_of_whole_record_length_is_truncated(tmp_path: Path) -> None:
    with _filled(tmp_path, 3) as log:
        root3 = log.root()
    with open(tmp_path / "tree", "ab") as f:
        f.write(os.urandom(record_length(3)))
    with MerkleLog.open(tmp_path) as log:
        assert log.size == 3 and log.root() == root3
        assert log.recovery.truncated_bytes == record_length(3)


def test_log_unsynced_whole_records_survive_reopen(tmp_path: Path) -> None:
    with _filled(tmp_path, 5) as log:
        log.append_many([_data(5), _data(6)])
        root7 = log.root()
    with MerkleLog.open(tmp_path) as log:
        assert log.recovery.synced_leaves == 5
        assert log.size == 7 and log.root() == root7


def test_log_losing_synced_records_fails_closed(tmp_path: Path) -> None:
    with _filled(tmp_path, 9):
        pass
    tree = tmp_path / "tree"
    tree.write_bytes(tree.read_bytes()[:-1])
    with pytest.raises(LogCorruptError, match="synced"):
        MerkleLog.open(tmp_path)


def test_log_damaged_stored_node_is_reported_when_read(tmp_path: Path) -> None:
    with _filled(tmp_path, 8):
        pass
    tree = tmp_path / "tree"
    raw = bytearray(tree.read_bytes())
    raw[record_offset(2) + 5] ^= 1  # leaf 2's hash
    tree.write_bytes(bytes(raw))
    with MerkleLog.open(tmp_path) as log:
        with pytest.raises(LogCorruptError, match="record 2"):
            log.leaf_hash(2)
        with pytest.raises(LogCorruptError, match="record 2"):
            log.inclusion_proof(3, 8)


def test_log_bad_magic_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tree").write_bytes(b"NOTALOG!" + bytes(8))
    with pytest.raises(LogCorruptError, match="magic"):
        MerkleLog.open(tmp_path)


def test_log_size_beyond_end_is_an_input_error(tmp_path: Path) -> None:
    with _filled(tmp_path, 4) as log:
        with pytest.raises(InputError, match="beyond"):
            log.root(5)
        with pytest.raises(ProofError, match="out of range"):
            log.inclusion_proof(4, 4)


def test_log_damaged_right_edge_record_fails_open(tmp_path: Path) -> None:
    with _filled(tmp_path, 6):
        pass
    tree = tmp_path / "tree"
    raw = bytearray(tree.read_bytes())
    raw[record_offset(3) + 40] ^= 1  # node [0, 4), on the right edge of 6 leaves
    tree.write_bytes(bytes(raw))
    with pytest.raises(LogCorruptError, match="record 3"):
        MerkleLog.open(tmp_path)
