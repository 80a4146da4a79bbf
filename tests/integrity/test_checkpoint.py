"""Tests of callvault.integrity.checkpoint: C2SP signed-note checkpoints and the
CheckpointLog that never signs a tree inconsistent with the last one."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import shutil
import stat
from pathlib import Path
from types import ModuleType

import pytest

from callvault.integrity import checkpoint, merkle
from callvault.integrity.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointLog,
    InconsistentCheckpointError,
    Signer,
)
from callvault.integrity.log import MerkleLog, record_offset

VECTOR_DIR = Path(__file__).resolve().parent / "vectors" / "checkpoint"
SCRIPT = Path(__file__).resolve().parent / "vectors" / "make_checkpoint_vectors.py"

# Why each failing vector must fail (a fragment of the error message), so a
# vector cannot pass by failing for an unrelated reason.
REASONS = {
    "appended-extension-line.json": "does not verify",
    "crlf-line-endings.json": "control character",
    "empty-extension-line.json": "empty extension line",
    "hyphens-instead-of-em-dash.json": "em dash",
    "missing-blank-line.json": "no blank line",
    "missing-newline.json": "does not end with a newline",
    "missing-root-line.json": "2 lines",
    "modified-origin.json": "does not verify",
    "modified-root.json": "does not verify",
    "modified-size.json": "does not verify",
    "no-signature.json": "no signature lines",
    "origin-is-not-key-name.json": "origin 'other.test/log'",
    "root-31-bytes.json": "31 bytes",
    "root-unpadded-base64.json": "base64",
    "same-key-id-other-name.json": "no signature by a known key",
    "second-signature-known-key-invalid.json": "does not verify",
    "size-leading-zero.json": "plain decimal",
    "size-negative.json": "plain decimal",
    "tab-in-origin.json": "control character",
    "truncated-signature.json": "does not verify",
    "unknown-key-same-name.json": "no signature by a known key",
    "wrong-key-hash.json": "no signature by a known key",
    "wrong-signature.json": "does not verify",
}


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_checkpoint_vectors", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------
# Tamper vectors


def test_checkpoint_vectors_all_pass() -> None:
    files = sorted(VECTOR_DIR.glob("*.json"))
    assert len(files) == 28
    ran = 0
    for f in files:
        d = json.loads(f.read_text(encoding="utf-8"))
        if d["wantErr"]:
            with pytest.raises(CheckpointError, match=re.escape(REASONS[f.name])):
                checkpoint.verify(d["note"], d["verifierKey"])
        else:
            cp = checkpoint.verify(d["note"], d["verifierKey"])
            assert cp == Checkpoint(
                d["want"]["origin"],
                d["want"]["size"],
                base64.b64decode(d["want"]["root"]),
                tuple(d["want"]["extensions"]),
            ), f.name
        ran += 1
    assert ran == len(files)
    assert set(REASONS) == {f.name for f in files if json.loads(f.read_text())["wantErr"]}


def test_checkpoint_vectors_regenerate_byte_identical(tmp_path: Path) -> None:
    written = _load_script().write(tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in VECTOR_DIR.glob("*.json"))
    for p in written:
        assert p.read_bytes() == (VECTOR_DIR / p.name).read_bytes(), p.name


def test_extra_signature_by_unknown_key_verifies_per_signed_note_spec() -> None:
    d = json.loads((VECTOR_DIR / "extra-signature-unknown-key.json").read_text())
    assert d["wantErr"] is False
    assert d["note"].count("\u2014 ") == 2
    assert checkpoint.verify(d["note"], d["verifierKey"]).size == 5


# ---------------------------------------------------------------------------
# Interoperability: the example note of Go's golang.org/x/mod/sumdb/note docs

GO_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
GO_NOTE = (
    "This is an example message.\n\n"
    "\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3"
    "mFXmRKuwHjG1Yu72IneyaQM=\n"
)


def test_go_sumdb_note_example_verifies() -> None:
    v = checkpoint.parse_verifier_key(GO_VKEY)
    assert checkpoint.open_note(GO_NOTE, [v]) == b"This is an example message.\n"


def test_key_id_of_go_example_key() -> None:
    v = checkpoint.parse_verifier_key(GO_VKEY)
    assert checkpoint.key_id("example.com/foo", v.public_key) == 0x530D903A
    assert v.key() == GO_VKEY


def test_go_example_with_one_flipped_text_byte_fails() -> None:
    v = checkpoint.parse_verifier_key(GO_VKEY)
    with pytest.raises(CheckpointError, match="does not verify"):
        checkpoint.open_note(GO_NOTE.replace("example message", "example massage"), [v])


# ---------------------------------------------------------------------------
# Signer, keys, note format


def test_signed_checkpoint_has_the_c2sp_layout() -> None:
    s = Signer.from_seed("example.test/log", bytes(range(32)))
    root = bytes(range(32))
    note = s.sign(7, root).decode()
    text, sig = note.split("\n\n")
    assert text == f"example.test/log\n7\n{base64.b64encode(root).decode()}"
    m = re.fullmatch(r"\u2014 example\.test/log ([A-Za-z0-9+/=]+)\n", sig)
    assert m is not None
    blob = base64.b64decode(m.group(1))
    assert len(blob) == 4 + 64
    assert int.from_bytes(blob[:4], "big") == s.verifier.key_id


def test_verifier_key_format() -> None:
    s = Signer.from_seed("example.test/log", bytes(32))
    name, hex_id, key = s.verifier_key().split("+")
    assert name == "example.test/log" and re.fullmatch(r"[0-9a-f]{8}", hex_id)
    raw = base64.b64decode(key)
    assert raw[0] == 0x01 and len(raw) == 33
    assert int(hex_id, 16) == checkpoint.key_id(name, raw[1:])


def test_signer_open_creates_private_key_mode_0600(tmp_path: Path) -> None:
    s = Signer.open(tmp_path, "callvault.example/log")
    key_file = tmp_path / checkpoint.KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().startswith("PRIVATE+KEY+callvault.example/log+")
    again = Signer.open(tmp_path, "callvault.example/log")
    assert again.verifier_key() == s.verifier_key()


def test_signer_open_refuses_key_of_another_origin(tmp_path: Path) -> None:
    Signer.open(tmp_path, "callvault.example/log")
    with pytest.raises(CheckpointError, match="not origin"):
        Signer.open(tmp_path, "other.example/log")


def test_signer_open_refuses_group_readable_key(tmp_path: Path) -> None:
    Signer.open(tmp_path, "callvault.example/log")
    (tmp_path / checkpoint.KEY_FILE).chmod(0o640)
    with pytest.raises(CheckpointError, match="mode 640"):
        Signer.open(tmp_path, "callvault.example/log")


def test_verify_with_another_keys_verifier_fails() -> None:
    a = Signer.from_seed("example.test/log", bytes(32))
    b = Signer.from_seed("example.test/log", bytes([1]) * 32)
    with pytest.raises(CheckpointError, match="no signature by a known key"):
        checkpoint.verify(a.sign(1, bytes(32)), b.verifier_key())


def test_keys_whose_base64_holds_plus_signs_round_trip(tmp_path: Path) -> None:
    seed = next(
        bytes([i]) * 32
        for i in range(256)
        if "+" in Signer.from_seed("k.test/log", bytes([i]) * 32).verifier_key()[20:]
    )
    s = Signer.from_seed("k.test/log", seed)
    assert checkpoint.parse_verifier_key(s.verifier_key()) == s.verifier
    assert checkpoint.verify(s.sign(3, bytes(32)), s.verifier_key()).size == 3
    key_file_signer = Signer("k.test/log", s._key)
    (tmp_path / checkpoint.KEY_FILE).write_text(key_file_signer._private_text())
    (tmp_path / checkpoint.KEY_FILE).chmod(0o600)
    assert Signer.open(tmp_path, "k.test/log").verifier_key() == s.verifier_key()


def test_verifier_key_with_wrong_key_id_is_refused() -> None:
    s = Signer.from_seed("example.test/log", bytes(32))
    name, hex_id, key = s.verifier_key().split("+")
    bad = f"{name}+{int(hex_id, 16) ^ 1:08x}+{key}"
    with pytest.raises(CheckpointError, match="does not match"):
        checkpoint.parse_verifier_key(bad)


def test_parse_reads_a_checkpoint_without_verifying() -> None:
    s = Signer.from_seed("example.test/log", bytes(32))
    cp = checkpoint.parse(s.sign(12, b"\x07" * 32, ["ext one"]))
    assert cp == Checkpoint("example.test/log", 12, b"\x07" * 32, ("ext one",))


def test_sign_refuses_root_of_wrong_length() -> None:
    s = Signer.from_seed("example.test/log", bytes(32))
    with pytest.raises(CheckpointError, match="31 bytes"):
        s.sign(1, bytes(31))


# ---------------------------------------------------------------------------
# CheckpointLog: never sign an inconsistent tree

ORIGIN = "callvault.test/node1"


def _setup(tmp_path: Path, n: int) -> tuple[MerkleLog, CheckpointLog]:
    log = MerkleLog.open(tmp_path / "log")
    log.append_many(b"seal-%d" % i for i in range(n))
    signer = Signer.open(tmp_path / "keys", ORIGIN)
    return log, CheckpointLog.open(tmp_path / "cp", log, signer)


def test_checkpoint_log_signs_a_growing_log(tmp_path: Path) -> None:
    log, cps = _setup(tmp_path, 5)
    vkey = cps.signer.verifier_key()
    first = checkpoint.verify(cps.sign(), vkey)
    assert (first.size, first.root) == (5, log.root())
    log.append_many([b"seal-5", b"seal-6", b"seal-7"])
    second = checkpoint.verify(cps.sign(), vkey)
    assert second.size == 8
    merkle.verify_consistency(5, 8, first.root, second.root, log.consistency_proof(5, 8))
    assert log.synced_size == 8  # signing made the leaves durable first
    log.close()


def test_checkpoint_log_remembers_last_signed_across_reopen(tmp_path: Path) -> None:
    log, cps = _setup(tmp_path, 6)
    note = cps.sign()
    log.close()
    log = MerkleLog.open(tmp_path / "log")
    again = CheckpointLog.open(tmp_path / "cp", log, Signer.open(tmp_path / "keys", ORIGIN))
    assert again.last == checkpoint.parse(note)
    assert (tmp_path / "cp" / checkpoint.CHECKPOINT_FILE).read_bytes() == note
    log.close()


def test_checkpoint_log_refuses_smaller_size(tmp_path: Path) -> None:
    log, cps = _setup(tmp_path, 6)
    cps.sign()
    with pytest.raises(InconsistentCheckpointError, match="last signed checkpoint has size 6"):
        cps.sign(5)
    log.close()


def _rewrite_history(tmp_path: Path, n: int, index: int) -> None:
    """Replace the log's files by those of a log whose leaf ``index`` differs:
    leaf hash, node hashes and CRCs all recomputed, as a careful attacker would."""
    forged = tmp_path / "forged"
    with MerkleLog.open(forged) as f:
        f.append_many(b"forged" if i == index else b"seal-%d" % i for i in range(n))
        f.sync()
    shutil.copyfile(forged / "tree", tmp_path / "log" / "tree")


def test_checkpoint_log_refuses_after_stored_leaf_rewritten(tmp_path: Path) -> None:
    log, cps = _setup(tmp_path, 6)
    cps.sign()
    log.append_many([b"seal-6", b"seal-7"])
    log.sync()
    log.close()
    _rewrite_history(tmp_path, 8, index=3)
    log = MerkleLog.open(tmp_path / "log")
    cps = CheckpointLog.open(tmp_path / "cp", log, Signer.open(tmp_path / "keys", ORIGIN))
    with pytest.raises(InconsistentCheckpointError, match="root at size 6"):
        cps.sign()
    assert cps.last is not None and cps.last.size == 6  # nothing new was signed
    log.close()


def test_checkpoint_log_refuses_after_stored_leaf_hash_bytes_flipped(tmp_path: Path) -> None:
    log, cps = _setup(tmp_path, 4)
    cps.sign()
    log.append_many(b"seal-%d" % i for i in range(4, 8))
    log.sync()
    log.close()
    tree = tmp_path / "log" / "tree"
    raw = bytearray(tree.read_bytes())
    # Leaf 3's stored hash; its record also holds node [0, 4), the last signed
    # root, which signing re-reads (the open of an 8-leaf log reads only [0, 8)).
    raw[record_offset(3) + 1] ^= 0x80
    tree.write_bytes(bytes(raw))
    log = MerkleLog.open(tmp_path / "log")
    cps = CheckpointLog.open(tmp_path / "cp", log, Signer.open(tmp_path / "keys", ORIGIN))
    with pytest.raises(InconsistentCheckpointError, match="damaged"):
        cps.sign()
    log.close()


def test_checkpoint_log_refuses_to_open_when_signed_leaves_are_gone(tmp_path: Path) -> None:
    log, cps = _setup(tmp_path, 6)
    cps.sign()
    log.close()
    shutil.rmtree(tmp_path / "log")
    with MerkleLog.open(tmp_path / "log") as empty:
        empty.append(b"seal-0")
        with pytest.raises(InconsistentCheckpointError, match="signed leaves are missing"):
            CheckpointLog.open(tmp_path / "cp", empty, Signer.open(tmp_path / "keys", ORIGIN))


def test_checkpoint_log_refuses_tampered_checkpoint_file(tmp_path: Path) -> None:
    log, cps = _setup(tmp_path, 3)
    cps.sign()
    path = tmp_path / "cp" / checkpoint.CHECKPOINT_FILE
    path.write_bytes(path.read_bytes().replace(b"\n3\n", b"\n2\n", 1))
    with pytest.raises(CheckpointError, match="unusable"):
        CheckpointLog.open(tmp_path / "cp", log, cps.signer)
    log.close()
