"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and their verification.

Pure functions, no I/O. Names follow RFC 9162 section 2.1:

- ``leaf_hash(d)  = SHA-256(0x00 || d)``        (MTH({d}))
- ``node_hash(l, r) = SHA-256(0x01 || l || r)``
- ``root(D[n])``: MTH(D[n]); the empty tree's hash is SHA-256 of the empty string;
  for n > 1, with k the largest power of two smaller than n,
  ``MTH(D[n]) = node_hash(MTH(D[0:k]), MTH(D[k:n]))``.
- ``inclusion_proof`` is PATH(m, D[n]) (2.1.3.1), verified by the algorithm of
  2.1.3.2 (``verify_inclusion``).
- ``consistency_proof`` is PROOF(m, D[n]) (2.1.4.1), verified by the algorithm
  of 2.1.4.2 (``verify_consistency``).

Subtrees (draft-ietf-plants-merkle-tree-certs, section 4): a subtree ``[start,
end)`` is valid when ``start <= end`` and ``start`` is a multiple of
BIT_CEIL(end - start); its hash is MTH(D[start:end]). A subtree inclusion proof
is PATH(index - start, D[start:end]); a subtree consistency proof shows that the
subtree's hash sits at those positions in the tree of size n. RFC 9162's
consistency proof is the subtree consistency proof of ``[0, m)``.

Every proof is a list of hashes of subtrees of the tree; the ``*_ranges``
functions name those subtrees (as ``(lo, hi)`` leaf ranges, in proof order) so
a store that keeps node hashes (callvault.integrity.log) builds the same proofs
from what it stored, reading O(log n) hashes.

Hash roles are domain-separated: 0x00 leaf, 0x01 node (RFC 6962). callvault's
per-call chain uses 0x02 and 0x03 elsewhere; nothing here uses them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from callvault.errors import CallvaultError

HASH_SIZE = 32
"""SHA-256 output size: every leaf hash, node hash and root is this long."""
LEAF_PREFIX = b"\x00"
"""RFC 6962 2.1: domain separation of leaf hashes from node hashes."""
NODE_PREFIX = b"\x01"
"""RFC 6962 2.1: prefix of an interior node's hash input."""
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256() (RFC 9162 2.1.1): the root of the empty tree."""

Range = tuple[int, int]


class ProofError(CallvaultError):
    """A Merkle proof does not verify, or cannot be made; the message says why."""


def leaf_hash(data: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d)."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def largest_power_of_two_below(n: int) -> int:
    """k, the largest power of two strictly smaller than n (n >= 2)."""
    if n < 2:
        raise ValueError(f"no power of two below {n} splits a tree")
    return 1 << ((n - 1).bit_length() - 1)


def bit_ceil(n: int) -> int:
    """The smallest power of two >= n (1 for n = 0)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def is_valid_subtree(start: int, end: int) -> bool:
    """``[start, end)`` is a subtree: start <= end, start a multiple of BIT_CEIL(end - start)."""
    return 0 <= start <= end and start % bit_ceil(end - start) == 0


def perfect_subtrees(lo: int, hi: int) -> list[tuple[int, int]]:
    """The aligned perfect subtrees whose fold is MTH(D[lo:hi]) for a valid subtree.

    Returns ``(level, index)`` pairs, left to right: node ``(level, index)``
    covers leaves ``[index << level, (index + 1) << level)``. MTH(D[lo:hi]) is
    the right fold ``node(P0, node(P1, ... Pk))`` of their hashes.
    """
    if not is_valid_subtree(lo, hi) or lo == hi:
        raise ValueError(f"[{lo}, {hi}) is not a non-empty subtree")
    out = []
    pos = lo
    size = hi - lo
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            out.append((level, pos >> level))
            pos += 1 << level
    return out


def fold_perfect(hashes: Sequence[bytes]) -> bytes:
    """Right fold of perfect-subtree hashes (left to right) into their MTH."""
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


# ---------------------------------------------------------------------------
# In-memory tree hashes


def subtree_root(leaf_hashes: Sequence[bytes], start: int, end: int) -> bytes:
    """MTH(D[start:end]) of the given leaf hashes (start < end)."""
    n = end - start
    if n == 1:
        return leaf_hashes[start]
    k = largest_power_of_two_below(n)
    return node_hash(
        subtree_root(leaf_hashes, start, start + k), subtree_root(leaf_hashes, start + k, end)
    )


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of a list of leaf hashes (RFC 9162 2.1.1)."""
    if not leaf_hashes:
        return EMPTY_ROOT
    return subtree_root(leaf_hashes, 0, len(leaf_hashes))


# ---------------------------------------------------------------------------
# Which subtrees a proof is made of


def subtree_inclusion_ranges(index: int, start: int, end: int) -> list[Range]:
    """PATH(index - start, D[start:end]) as subtree ranges, leaf to root."""
    if not 0 <= start < end:
        raise ProofError(f"subtree [{start}, {end}) is empty or negative")
    if not start <= index < end:
        raise ProofError(f"index {index} is outside the subtree [{start}, {end})")
    out: list[Range] = []
    lo, hi = start, end
    while hi - lo > 1:
        mid = lo + largest_power_of_two_below(hi - lo)
        if index < mid:
            out.append((mid, hi))
            hi = mid
        else:
            out.append((lo, mid))
            lo = mid
    out.reverse()
    return out


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """PATH(index, D[size]) (RFC 9162 2.1.3.1) as subtree ranges, leaf to root."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is out of range for tree size {size}")
    return subtree_inclusion_ranges(index, 0, size)


def subtree_consistency_ranges(start: int, end: int, size: int) -> list[Range]:
    """SUBTREE_PROOF(start, end, D[size]) as subtree ranges, in proof order."""
    _check_subtree_in_tree(start, end, size)
    out: list[Range] = []
    if start < end:
        _subtree_subproof(start, end, 0, size, True, out)
    return out


def consistency_ranges(old_size: int, new_size: int) -> list[Range]:
    """PROOF(old_size, D[new_size]) (RFC 9162 2.1.4.1) as subtree ranges."""
    if not 0 <= old_size <= new_size:
        raise ProofError(f"old size {old_size} is not within 0..new size {new_size}")
    if old_size == 0:
        return []
    return subtree_consistency_ranges(0, old_size, new_size)


def _check_subtree_in_tree(start: int, end: int, size: int) -> None:
    if start > end:
        raise ProofError(f"subtree start {start} is after its end {end}")
    if not is_valid_subtree(start, end):
        raise ProofError(f"[{start}, {end}) is not a valid subtree")
    if end > size:
        raise ProofError(f"subtree [{start}, {end}) exceeds the tree size {size}")


def _subtree_subproof(
    start: int, end: int, lo: int, hi: int, known: bool, out: list[Range]
) -> None:
    # SUBPROOF generalised to subtrees: [lo, hi) is the part of the tree being
    # described, [start, end) the part of the subtree inside it. ``known``:
    # the verifier already holds MTH(D[start:end]) when the two coincide.
    if start == lo and end == hi:
        if not known:
            out.append((lo, hi))
        return
    mid = lo + largest_power_of_two_below(hi - lo)
    if end <= mid:
        _subtree_subproof(start, end, lo, mid, known, out)
        out.append((mid, hi))
    elif start >= mid:
        _subtree_subproof(start, end, mid, hi, known, out)
        out.append((lo, mid))
    else:
        # start < mid < end: a valid subtree then starts at lo (start == lo);
        # its right part D[mid:end] is not a node the verifier holds.
        _subtree_subproof(mid, end, mid, hi, False, out)
        out.append((lo, mid))


# ---------------------------------------------------------------------------
# Proofs from in-memory leaf hashes


def _hashes_for(leaf_hashes: Sequence[bytes], ranges: list[Range]) -> list[bytes]:
    return [subtree_root(leaf_hashes, lo, hi) for lo, hi in ranges]


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) for n = len(leaf_hashes)."""
    return _hashes_for(leaf_hashes, inclusion_ranges(index, len(leaf_hashes)))


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """PROOF(old_size, D[n]) for n = len(leaf_hashes); empty when old_size is 0 or n."""
    return _hashes_for(leaf_hashes, consistency_ranges(old_size, len(leaf_hashes)))


def subtree_inclusion_proof(
    leaf_hashes: Sequence[bytes], index: int, start: int, end: int
) -> list[bytes]:
    """Inclusion of leaf ``index`` in the subtree ``[start, end)``."""
    if not is_valid_subtree(start, end):
        raise ProofError(f"[{start}, {end}) is not a valid subtree")
    if end > len(leaf_hashes):
        raise ProofError(f"subtree [{start}, {end}) exceeds the tree size {len(leaf_hashes)}")
    return _hashes_for(leaf_hashes, subtree_inclusion_ranges(index, start, end))


def subtree_consistency_proof(leaf_hashes: Sequence[bytes], start: int, end: int) -> list[bytes]:
    """SUBTREE_PROOF(start, end, D[n]) for n = len(leaf_hashes)."""
    return _hashes_for(leaf_hashes, subtree_consistency_ranges(start, end, len(leaf_hashes)))


# ---------------------------------------------------------------------------
# Verification


def _check_proof_hashes(proof: Sequence[bytes]) -> None:
    for i, p in enumerate(proof):
        if len(p) != HASH_SIZE:
            raise ProofError(f"proof hash {i} is {len(p)} bytes, not {HASH_SIZE}")


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` gives for ``leaf`` at ``index`` (RFC 9162 2.1.3.2, steps 1-4)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is out of range for tree size {size}")
    if len(leaf) != HASH_SIZE:
        raise ProofError(f"leaf hash is {len(leaf)} bytes, not {HASH_SIZE}")
    _check_proof_hashes(proof)
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise ProofError(f"inclusion proof is too long: {len(proof)} hashes")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"inclusion proof is too short: {len(proof)} hashes")
    return r


def verify_inclusion(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` with ``root``.

    RFC 9162 2.1.3.2. Raises ProofError saying why not.
    """
    got = root_from_inclusion_proof(index, size, leaf_hash, proof)
    if got != root:
        raise ProofError(
            f"inclusion proof for leaf {index} of {size} gives root {got.hex()}, "
            f"not the expected {root.hex()}"
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree (new_size, new_root) extends the tree (old_size, old_root).

    RFC 9162 2.1.4.2. A proof from the empty tree is meaningless and refused
    (every tree extends it; callers that need that case handle it first).
    Raises ProofError saying why the proof fails.
    """
    if old_size < 0 or new_size < old_size:
        raise ProofError(f"new size {new_size} is smaller than old size {old_size}")
    if old_size == new_size:
        if proof:
            raise ProofError(f"sizes are equal ({old_size}) but the proof is not empty")
        if old_root != new_root:
            raise ProofError(f"trees of equal size {old_size} have different roots")
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise ProofError("the root of the empty tree is not SHA-256 of the empty string")
        return
    if old_size == 0:
        raise ProofError("a consistency proof from the empty tree is meaningless")
    if not proof:
        raise ProofError(f"consistency proof from {old_size} to {new_size} is empty")
    _check_proof_hashes(proof)
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        # Step 2: old tree is a complete subtree, its root is the first node.
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"consistency proof is too long: {len(proof)} hashes")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"consistency proof is too short: {len(proof)} hashes")
    if fr != old_root:
        raise ProofError(
            f"consistency proof gives old root {fr.hex()}, not the expected {old_root.hex()}"
        )
    if sr != new_root:
        raise ProofError(
            f"consistency proof gives new root {sr.hex()}, not the expected {new_root.hex()}"
        )


def verify_subtree_inclusion(
    index: int, start: int, end: int, leaf_hash: bytes, proof: Sequence[bytes], subtree_hash: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the subtree ``[start, end)``."""
    if start >= end:
        raise ProofError(f"subtree [{start}, {end}) is empty")
    if not is_valid_subtree(start, end):
        raise ProofError(f"[{start}, {end}) is not a valid subtree")
    if not start <= index < end:
        raise ProofError(f"index {index} is outside the subtree [{start}, {end})")
    verify_inclusion(index - start, end - start, leaf_hash, proof, subtree_hash)


def verify_subtree_consistency(
    start: int, end: int, size: int, subtree_hash: bytes, root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that ``subtree_hash`` is MTH(D[start:end]) of the tree (size, root).

    An empty subtree (start == end) is in every tree: its hash must be the empty
    tree's and its proof empty. Raises ProofError saying why the proof fails.
    """
    _check_subtree_in_tree(start, end, size)
    if start == end:
        if proof:
            raise ProofError("the subtree is empty but the proof is not")
        if subtree_hash != EMPTY_ROOT:
            raise ProofError("the hash of an empty subtree is not SHA-256 of the empty string")
        return
    ranges = subtree_consistency_ranges(start, end, size)
    if len(proof) != len(ranges):
        raise ProofError(
            f"subtree consistency proof has {len(proof)} hashes, "
            f"[{start}, {end}) in a tree of {size} needs {len(ranges)}"
        )
    _check_proof_hashes(proof)
    given = dict(zip(ranges, proof, strict=True))
    old, new = _evaluate_subtree(start, end, 0, size, True, subtree_hash, given.__getitem__)
    if old != subtree_hash:
        raise ProofError(
            f"subtree consistency proof gives subtree hash {old.hex()}, "
            f"not the expected {subtree_hash.hex()}"
        )
    if new != root:
        raise ProofError(
            f"subtree consistency proof gives root {new.hex()}, not the expected {root.hex()}"
        )


def _evaluate_subtree(
    start: int,
    end: int,
    lo: int,
    hi: int,
    known: bool,
    subtree_hash: bytes,
    given: Callable[[Range], bytes],
) -> tuple[bytes, bytes]:
    # Mirror of _subtree_subproof: returns (hash of D[start:end], hash of D[lo:hi])
    # recomputed from the proof's hashes.
    if start == lo and end == hi:
        h = subtree_hash if known else given((lo, hi))
        return h, h
    mid = lo + largest_power_of_two_below(hi - lo)
    if end <= mid:
        old, new = _evaluate_subtree(start, end, lo, mid, known, subtree_hash, given)
        return old, node_hash(new, given((mid, hi)))
    if start >= mid:
        old, new = _evaluate_subtree(start, end, mid, hi, known, subtree_hash, given)
        return old, node_hash(given((lo, mid)), new)
    old, new = _evaluate_subtree(mid, end, mid, hi, False, subtree_hash, given)
    left = given((lo, mid))
    return node_hash(left, old), node_hash(left, new)
