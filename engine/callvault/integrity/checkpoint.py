"""Signed checkpoints of the Merkle log: C2SP tlog-checkpoint in a C2SP signed note.

Formats, signs, parses and verifies the notes of docs/format.md 8.8 (checkpoint
text, signature lines and key ids, the verifier key, the private key file
``DIR/checkpoint-signer.key``, and the signed-note verification rules).

:class:`CheckpointLog` keeps the last checkpoint it signed (``DIR/checkpoint``,
the signed note itself) and never signs a tree that is not an append-only
extension of it (tlog-checkpoint: "A log MUST not sign any checkpoint which is
inconsistent with any checkpoint it previously signed").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from callvault.durable import write_atomic
from callvault.errors import CallvaultError
from callvault.integrity import merkle
from callvault.integrity.log import LogCorruptError, MerkleLog

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointLog",
    "InconsistentCheckpointError",
    "Signer",
    "Verifier",
    "format_body",
    "key_id",
    "open_note",
    "parse",
    "parse_verifier_key",
    "sign_note",
    "verify",
]

ED25519_TYPE = 0x01
"""Signed-note signature type byte of Ed25519."""
SIGNATURE_PREFIX = "\u2014 "
"""Em dash and space open every signature line."""
MAX_SIGNATURES = 100
"""Signature lines accepted per note (the spec asks for at least 16)."""
KEY_FILE = "checkpoint-signer.key"
CHECKPOINT_FILE = "checkpoint"

_SIZE_RE = re.compile(r"0|[1-9][0-9]*")
_HEX8_RE = re.compile(r"[0-9a-f]{8}")


class CheckpointError(CallvaultError):
    """A note or checkpoint is malformed, or its signature does not verify."""


class InconsistentCheckpointError(CheckpointError):
    """Signing was refused: the tree does not extend the last signed checkpoint."""


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: the log's origin, its size and the RFC 6962 root at that size."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()


def key_id(name: str, public_key: bytes) -> int:
    """Signed-note key ID of an Ed25519 key: SHA-256(name || 0x0A || 0x01 || key)[:4]."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([ED25519_TYPE]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def _check_key_name(name: str) -> None:
    if not name:
        raise CheckpointError("key name is empty")
    if "+" in name or any(c.isspace() for c in name) or _has_control(name):
        raise CheckpointError(f"key name {name!r} contains a space, '+' or a control character")


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 and c != "\n" for c in text)


def _b64decode(s: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(s.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise CheckpointError(f"{what} is not valid base64: {s!r}") from e
    if base64.b64encode(raw).decode() != s:
        raise CheckpointError(f"{what} is not canonical base64: {s!r}")
    return raw


@dataclass(frozen=True)
class Verifier:
    """A known Ed25519 note key: its name, key ID and public key."""

    name: str
    key_id: int
    public_key: bytes

    def key(self) -> str:
        """The verifier key text ``<name>+<hex key ID>+<base64(0x01 || key)>``."""
        blob = base64.b64encode(bytes([ED25519_TYPE]) + self.public_key).decode()
        return f"{self.name}+{self.key_id:08x}+{blob}"

    def verify(self, text: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, text)
        except InvalidSignature:
            return False
        return True


def parse_verifier_key(vkey: str) -> Verifier:
    """Parse ``<name>+<hex key ID>+<base64(0x01 || public key)>``; check the key ID."""
    parts = vkey.strip().split("+", 2)  # the base64 key may itself hold '+'
    if len(parts) != 3:
        raise CheckpointError(f"verifier key {vkey!r} is not <name>+<key ID>+<key>")
    name, hex_id, blob = parts
    _check_key_name(name)
    if not _HEX8_RE.fullmatch(hex_id):
        raise CheckpointError(f"verifier key ID {hex_id!r} is not 8 lowercase hex digits")
    raw = _b64decode(blob, "verifier key")
    if len(raw) != 33 or raw[0] != ED25519_TYPE:
        raise CheckpointError("verifier key is not an Ed25519 key (type 0x01, 32 bytes)")
    public = raw[1:]
    if key_id(name, public) != int(hex_id, 16):
        raise CheckpointError(
            f"verifier key ID {hex_id} does not match its name {name!r} and public key"
        )
    return Verifier(name, int(hex_id, 16), public)


class Signer:
    """An Ed25519 note signer with a key name (the log's origin)."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        _check_key_name(name)
        self.name = name
        self._key = private_key
        public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.verifier = Verifier(name, key_id(name, public), public)

    @classmethod
    def from_seed(cls, name: str, seed: bytes) -> Signer:
        """A signer from a 32-byte Ed25519 seed (RFC 8032 private key)."""
        if len(seed) != 32:
            raise CheckpointError(f"Ed25519 seed is {len(seed)} bytes, not 32")
        return cls(name, Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def open(cls, directory: str | os.PathLike[str], origin: str) -> Signer:
        """The signer kept in ``directory``; a new key pair is made on first use."""
        _check_key_name(origin)
        path = Path(directory) / KEY_FILE
        if not path.exists():
            Path(directory).mkdir(parents=True, exist_ok=True)
            signer = cls(origin, Ed25519PrivateKey.generate())
            _write_durably(path, signer._private_text().encode(), 0o600, exclusive=True)
            return signer
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise CheckpointError(f"{path}: private key file has mode {mode:o}, want 600")
        signer = cls._from_private_text(path.read_text().strip(), str(path))
        if signer.name != origin:
            raise CheckpointError(f"{path}: key is named {signer.name!r}, not origin {origin!r}")
        return signer

    def _private_text(self) -> str:
        seed = self._key.private_bytes_raw()
        blob = base64.b64encode(bytes([ED25519_TYPE]) + seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier.key_id:08x}+{blob}\n"

    @classmethod
    def _from_private_text(cls, text: str, where: str) -> Signer:
        parts = text.split("+", 4)  # the base64 key may itself hold '+'
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise CheckpointError(f"{where}: not a PRIVATE+KEY+<name>+<id>+<key> file")
        raw = _b64decode(parts[4], f"{where}: private key")
        if len(raw) != 33 or raw[0] != ED25519_TYPE:
            raise CheckpointError(f"{where}: not an Ed25519 private key")
        signer = cls.from_seed(parts[2], raw[1:])
        if f"{signer.verifier.key_id:08x}" != parts[3]:
            raise CheckpointError(f"{where}: key ID {parts[3]} does not match the key")
        return signer

    def verifier_key(self) -> str:
        """This key in the note verifier-key format."""
        return self.verifier.key()

    def sign_text(self, text: bytes) -> bytes:
        """One signature line (with its newline) over a note text."""
        sig = self._key.sign(text)
        blob = base64.b64encode(self.verifier.key_id.to_bytes(4, "big") + sig).decode()
        return f"{SIGNATURE_PREFIX}{self.name} {blob}\n".encode()

    def sign(self, size: int, root: bytes, extensions: Sequence[str] = ()) -> bytes:
        """A signed checkpoint note of (origin = key name, size, root)."""
        return sign_note(format_body(Checkpoint(self.name, size, root, tuple(extensions))), [self])


def format_body(cp: Checkpoint) -> bytes:
    """The tlog-checkpoint note text of a checkpoint."""
    if not cp.origin or "\n" in cp.origin or _has_control(cp.origin):
        raise CheckpointError(f"origin {cp.origin!r} is empty or has control characters")
    if cp.size < 0:
        raise CheckpointError(f"tree size {cp.size} is negative")
    if len(cp.root) != merkle.HASH_SIZE:
        raise CheckpointError(f"root hash is {len(cp.root)} bytes, not {merkle.HASH_SIZE}")
    for line in cp.extensions:
        if not line or "\n" in line or _has_control(line):
            raise CheckpointError(f"extension line {line!r} is empty or has control characters")
    lines = [cp.origin, str(cp.size), base64.b64encode(cp.root).decode(), *cp.extensions]
    return ("\n".join(lines) + "\n").encode()


def sign_note(text: bytes, signers: Sequence[Signer]) -> bytes:
    """A signed note: text, blank line, one signature line per signer."""
    _check_text(text)
    return text + b"\n" + b"".join(s.sign_text(text) for s in signers)


def _check_text(text: bytes) -> None:
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"note text is not UTF-8: {e}") from e
    if not decoded.endswith("\n"):
        raise CheckpointError("note text does not end with a newline")
    if _has_control(decoded):
        raise CheckpointError("note text has an ASCII control character other than newline")


def _split(note: bytes | str) -> tuple[bytes, list[str]]:
    """Text and signature lines of a note (syntax checked, signatures not verified)."""
    raw = note.encode() if isinstance(note, str) else bytes(note)
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"note is not UTF-8: {e}") from e
    if _has_control(decoded):
        raise CheckpointError("note has an ASCII control character other than newline")
    if not decoded.endswith("\n"):
        raise CheckpointError("note does not end with a newline")
    cut = decoded.rfind("\n\n")
    if cut < 0:
        raise CheckpointError("note has no blank line before its signatures")
    text = decoded[: cut + 1]
    sig_lines = decoded[cut + 2 :].split("\n")[:-1]
    if not sig_lines:
        raise CheckpointError("note has no signature lines")
    if len(sig_lines) > MAX_SIGNATURES:
        raise CheckpointError(f"note has {len(sig_lines)} signatures, more than {MAX_SIGNATURES}")
    return text.encode(), sig_lines


def _parse_signature_line(line: str) -> tuple[str, int, bytes]:
    if not line.startswith(SIGNATURE_PREFIX):
        raise CheckpointError(f"signature line does not start with an em dash: {line!r}")
    rest = line[len(SIGNATURE_PREFIX) :]
    name, sep, blob = rest.partition(" ")
    if not sep or not name or " " in blob:
        raise CheckpointError(f"signature line is not '\u2014 <name> <signature>': {line!r}")
    _check_key_name(name)
    sig = _b64decode(blob, f"signature of {name!r}")
    if len(sig) < 5:
        raise CheckpointError(f"signature of {name!r} is {len(sig)} bytes, too short")
    return name, int.from_bytes(sig[:4], "big"), sig[4:]


def open_note(note: bytes | str, verifiers: Sequence[Verifier]) -> bytes:
    """The text of a note once a known key's signature on it verifies.

    Signature lines by keys not in ``verifiers`` (name and key ID both must
    match) are ignored; a failing signature by a known key rejects the note.
    """
    text, lines = _split(note)
    known = {(v.name, v.key_id): v for v in verifiers}
    verified = 0
    seen = []
    for line in lines:
        name, kid, sig = _parse_signature_line(line)
        seen.append(f"{name}+{kid:08x}")
        v = known.get((name, kid))
        if v is None:
            continue
        if len(sig) != 64 or not v.verify(text, sig):
            raise CheckpointError(f"signature by known key {name}+{kid:08x} does not verify")
        verified += 1
    if not verified:
        want = ", ".join(f"{v.name}+{v.key_id:08x}" for v in verifiers)
        raise CheckpointError(
            f"no signature by a known key ({want}); the note is signed by {', '.join(seen)}"
        )
    return text


def parse_body(text: bytes) -> Checkpoint:
    """Parse a tlog-checkpoint note text (no signatures)."""
    _check_text(text)
    lines = text.decode()[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError(f"checkpoint has {len(lines)} lines, needs origin, size and root")
    origin, size_text, root_text, *extensions = lines
    if not origin:
        raise CheckpointError("checkpoint origin is empty")
    if not _SIZE_RE.fullmatch(size_text):
        raise CheckpointError(f"checkpoint tree size {size_text!r} is not a plain decimal")
    root = _b64decode(root_text, "checkpoint root hash")
    if len(root) != merkle.HASH_SIZE:
        raise CheckpointError(f"checkpoint root hash is {len(root)} bytes, not 32")
    if any(not e for e in extensions):
        raise CheckpointError("checkpoint has an empty extension line")
    return Checkpoint(origin, int(size_text), root, tuple(extensions))


def parse(note: bytes | str) -> Checkpoint:
    """Parse a signed checkpoint note WITHOUT verifying it (use :func:`verify`)."""
    text, _ = _split(note)
    return parse_body(text)


def verify(note_text: bytes | str, verifier_key: str, origin: str | None = None) -> Checkpoint:
    """Verify a signed checkpoint with a verifier key; return the checkpoint.

    ``origin`` defaults to the key's name. Raises CheckpointError saying why.
    """
    v = parse_verifier_key(verifier_key)
    cp = parse_body(open_note(note_text, [v]))
    want = v.name if origin is None else origin
    if cp.origin != want:
        raise CheckpointError(f"checkpoint origin {cp.origin!r} is not {want!r}")
    return cp


def _write_durably(path: Path, data: bytes, mode: int, exclusive: bool = False) -> None:
    """Write a file whole (callvault.durable.write_atomic), as a CheckpointError."""
    try:
        write_atomic(path, data, mode, exclusive=exclusive)
    except FileExistsError as e:
        raise CheckpointError(str(e)) from e


class CheckpointLog:
    """Signs checkpoints of a :class:`MerkleLog`, each consistent with the last.

    The last signed checkpoint is kept (as its signed note) in
    ``DIR/checkpoint``. Before signing a tree of size n it checks: n is not
    below the last signed size; the log still gives the last signed root at
    that size; and the log's consistency proof from the last signed tree to
    the new one verifies against the remembered root. Otherwise it refuses
    with :class:`InconsistentCheckpointError`.
    """

    def __init__(
        self, directory: Path, log: MerkleLog, signer: Signer, last: Checkpoint | None
    ) -> None:
        self.directory = directory
        self.log = log
        self.signer = signer
        self.last = last

    @classmethod
    def open(
        cls, directory: str | os.PathLike[str], log: MerkleLog, signer: Signer
    ) -> CheckpointLog:
        """Open the checkpoint state in ``directory`` (created empty if absent)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        path = d / CHECKPOINT_FILE
        last = None
        if path.exists():
            try:
                last = verify(path.read_bytes(), signer.verifier_key())
            except CheckpointError as e:
                raise CheckpointError(f"{path}: last signed checkpoint is unusable: {e}") from e
            if last.size > log.size:
                raise InconsistentCheckpointError(
                    f"the log has {log.size} leaves but checkpoint {last.size} was signed: "
                    "signed leaves are missing"
                )
        return cls(d, log, signer, last)

    def sign(self, size: int | None = None) -> bytes:
        """Sync the log, check consistency with the last checkpoint, sign and persist.

        Returns the signed note of the tree of ``size`` leaves (default: all).
        """
        self.log.sync()  # never sign leaves that a crash could take back
        n = self.log.size if size is None else size
        if not 0 <= n <= self.log.size:
            raise CheckpointError(f"tree size {n} is beyond the log's {self.log.size} leaves")
        new_root = self.log.root(n)
        last = self.last
        if last is not None:
            self._check_extends(last, n, new_root)
        note = self.signer.sign(n, new_root)
        _write_durably(self.directory / CHECKPOINT_FILE, note, 0o644)
        self.last = Checkpoint(self.signer.name, n, new_root)
        return note

    def _check_extends(self, last: Checkpoint, n: int, new_root: bytes) -> None:
        if n < last.size:
            raise InconsistentCheckpointError(
                f"refusing to sign size {n}: the last signed checkpoint has size {last.size}"
            )
        if last.size == 0:
            return  # every tree extends the empty tree
        try:
            stored = self.log.root(last.size)
            proof = self.log.consistency_proof(last.size, n)
        except LogCorruptError as e:
            raise InconsistentCheckpointError(f"refusing to sign: the log is damaged: {e}") from e
        if stored != last.root:
            raise InconsistentCheckpointError(
                f"refusing to sign: the log's root at size {last.size} is {stored.hex()}, "
                f"the last signed checkpoint says {last.root.hex()}"
            )
        try:
            merkle.verify_consistency(last.size, n, last.root, new_root, proof)
        except merkle.ProofError as e:
            raise InconsistentCheckpointError(
                f"refusing to sign size {n}: not consistent with the last signed "
                f"checkpoint (size {last.size}): {e}"
            ) from e
