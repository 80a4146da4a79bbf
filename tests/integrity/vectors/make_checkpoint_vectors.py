"""Generate callvault's signed-checkpoint tamper vectors (tests/integrity/vectors/checkpoint/).

Each vector is named after its tamper and says whether verification must fail:

    {"desc": ..., "note": <signed note text>, "verifierKey": <note verifier key>,
     "wantErr": bool, "want": {"origin", "size", "root" (base64), "extensions"} | null}

A verifier checks ``note`` against ``verifierKey`` alone (the origin must be the
key's name). Keys come from fixed seeds and Ed25519 signatures are
deterministic (RFC 8032), so running this again writes the same bytes:

    .venv/bin/python tests/integrity/vectors/make_checkpoint_vectors.py
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from callvault.integrity import merkle
from callvault.integrity.checkpoint import Checkpoint, Signer, format_body

OUT = Path(__file__).resolve().parent / "checkpoint"
LOG_NAME = "callvault.test/log"


def _seed(label: str) -> bytes:
    return hashlib.sha256(b"callvault checkpoint test vectors: " + label.encode()).digest()


LOG = Signer.from_seed(LOG_NAME, _seed("log key"))
WITNESS = Signer.from_seed("witness.test/w1", _seed("witness key"))
IMPOSTOR = Signer.from_seed(LOG_NAME, _seed("impostor key with the log's name"))

SIZE = 5
ROOT = merkle.root([merkle.leaf_hash(b"seal-%d" % i) for i in range(SIZE)])
BODY = format_body(Checkpoint(LOG_NAME, SIZE, ROOT))


def _note(text: bytes, *signers: Signer) -> bytes:
    """A note signed without the signer's syntax checks (to sign malformed texts)."""
    return text + b"\n" + b"".join(s.sign_text(text) for s in signers)


def _sig_blob(line: bytes) -> bytes:
    return base64.b64decode(line.decode().rstrip("\n").rsplit(" ", 1)[1])


def _line(name: str, blob: bytes) -> bytes:
    return f"\u2014 {name} {base64.b64encode(blob).decode()}\n".encode()


def _want(cp: Checkpoint) -> dict[str, Any]:
    return {
        "origin": cp.origin,
        "size": cp.size,
        "root": base64.b64encode(cp.root).decode(),
        "extensions": list(cp.extensions),
    }


def build() -> dict[str, dict[str, Any]]:
    """Every vector, by file name."""
    vkey = LOG.verifier_key()
    good_line = LOG.sign_text(BODY)
    blob = _sig_blob(good_line)
    v: dict[str, dict[str, Any]] = {}

    def add(name: str, desc: str, note: bytes, want: Checkpoint | None) -> None:
        v[name] = {
            "desc": desc,
            "note": note.decode("utf-8"),
            "verifierKey": vkey,
            "wantErr": want is None,
            "want": None if want is None else _want(want),
        }

    valid = Checkpoint(LOG_NAME, SIZE, ROOT)
    add("valid.json", "a checkpoint signed by the log's key", _note(BODY, LOG), valid)
    ext = Checkpoint(LOG_NAME, SIZE, ROOT, ("callvault-extension 1",))
    add(
        "valid-extension-line.json",
        "a checkpoint with one extension line",
        _note(format_body(ext), LOG),
        ext,
    )
    add(
        "extra-signature-unknown-key.json",
        "a second signature by a key the verifier does not know (a witness): ignored",
        _note(BODY, LOG, WITNESS),
        valid,
    )
    add(
        "extra-signature-unknown-key-first.json",
        "the unknown key's signature comes before the log's: still ignored",
        _note(BODY, WITNESS, LOG),
        valid,
    )
    add(
        "unknown-key-same-name.json",
        "signed only by another key that has the log's name (different key ID)",
        _note(BODY, IMPOSTOR),
        None,
    )
    add(
        "unknown-key-same-name-and-valid.json",
        "the impostor key's signature beside the log's valid one: the impostor is ignored",
        _note(BODY, IMPOSTOR, LOG),
        valid,
    )
    add(
        "same-key-id-other-name.json",
        "the log's signature bytes under another key name: an unknown key, nothing verifies",
        BODY + b"\n" + _line("other.test/log", blob),
        None,
    )

    flipped = bytearray(blob)
    flipped[20] ^= 0x01
    add(
        "wrong-signature.json",
        "one bit of the Ed25519 signature flipped",
        BODY + b"\n" + _line(LOG_NAME, bytes(flipped)),
        None,
    )
    wrong_id = bytes([blob[0] ^ 0xFF]) + blob[1:]
    add(
        "wrong-key-hash.json",
        "the 4-byte key ID of the signature changed",
        BODY + b"\n" + _line(LOG_NAME, wrong_id),
        None,
    )
    add(
        "truncated-signature.json",
        "the signature cut to 30 of its 64 bytes",
        BODY + b"\n" + _line(LOG_NAME, blob[:34]),
        None,
    )
    add(
        "second-signature-known-key-invalid.json",
        "a valid signature and a failing one, both by the log's key: the note is rejected",
        BODY + b"\n" + good_line + _line(LOG_NAME, bytes(flipped)),
        None,
    )

    other_root = hashlib.sha256(b"another root").digest()
    add(
        "modified-root.json",
        "the root hash changed after signing",
        format_body(Checkpoint(LOG_NAME, SIZE, other_root)) + b"\n" + good_line,
        None,
    )
    add(
        "modified-size.json",
        "the tree size changed after signing",
        format_body(Checkpoint(LOG_NAME, SIZE + 1, ROOT)) + b"\n" + good_line,
        None,
    )
    add(
        "modified-origin.json",
        "the origin changed after signing",
        format_body(Checkpoint("other.test/log", SIZE, ROOT)) + b"\n" + good_line,
        None,
    )
    add(
        "appended-extension-line.json",
        "an extension line added after signing",
        format_body(ext) + b"\n" + good_line,
        None,
    )

    add("missing-newline.json", "the note's final newline removed", _note(BODY, LOG)[:-1], None)
    add(
        "missing-blank-line.json",
        "no blank line between text and signature",
        BODY + good_line,
        None,
    )
    add("no-signature.json", "the text and blank line, no signature line", BODY + b"\n", None)
    add(
        "hyphens-instead-of-em-dash.json",
        "signature line opens with '--' not U+2014",
        BODY + b"\n" + good_line.replace("\u2014".encode(), b"--"),
        None,
    )
    add(
        "crlf-line-endings.json",
        "CR LF line endings (CR is a control character)",
        _note(BODY, LOG).replace(b"\n", b"\r\n"),
        None,
    )

    # Malformed checkpoint texts carrying a valid signature by the log's key.
    root_b64 = base64.b64encode(ROOT).decode()
    add(
        "size-leading-zero.json",
        "tree size written as 005 (validly signed)",
        _note(f"{LOG_NAME}\n005\n{root_b64}\n".encode(), LOG),
        None,
    )
    add(
        "size-negative.json",
        "tree size -5 (validly signed)",
        _note(f"{LOG_NAME}\n-5\n{root_b64}\n".encode(), LOG),
        None,
    )
    add(
        "root-31-bytes.json",
        "a root hash of 31 bytes (validly signed)",
        _note(f"{LOG_NAME}\n5\n{base64.b64encode(ROOT[:31]).decode()}\n".encode(), LOG),
        None,
    )
    add(
        "root-unpadded-base64.json",
        "the root's base64 without its '=' (validly signed)",
        _note(f"{LOG_NAME}\n5\n{root_b64.rstrip('=')}\n".encode(), LOG),
        None,
    )
    add(
        "missing-root-line.json",
        "only origin and size (validly signed)",
        _note(f"{LOG_NAME}\n5\n".encode(), LOG),
        None,
    )
    add(
        "empty-extension-line.json",
        "an empty line after the root (validly signed)",
        _note(BODY + b"\n", LOG),
        None,
    )
    add(
        "tab-in-origin.json",
        "a tab (control character) in the origin (validly signed)",
        _note(BODY.replace(b"test/log", b"test/\tlog", 1), LOG),
        None,
    )
    add(
        "origin-is-not-key-name.json",
        "a well-formed checkpoint of another origin signed by the log's key",
        _note(format_body(Checkpoint("other.test/log", SIZE, ROOT)), LOG),
        None,
    )
    return v


def write(out: Path = OUT) -> list[Path]:
    """Write every vector to ``out`` (one JSON file each); return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, vector in sorted(build().items()):
        path = out / name
        path.write_text(json.dumps(vector, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT):
        print(p)
