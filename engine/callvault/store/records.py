"""Record bodies of the vault's segment records: build and parse them.

The layout (the common plaintext header, then OPEN, AUDIO, SEAL and ERASE
bodies) is docs/format.md 8.5, version 1. An AUDIO body's payload is an
encrypted record (docs/format.md 8.6, :func:`callvault.store.crypto.encrypt_record`)
bound to the bytes before it; :meth:`Body.decrypt_audio` reverses it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from callvault.errors import FormatError
from callvault.store import crypto

BODY_VERSION = 1
OPEN, AUDIO, SEAL, ERASE, TRANSCODE = 1, 2, 3, 4, 5
# 7 erases a whole tenant (docs/format.md 8.6)
TENANT_ERASE = 7
# a call the recording policy did not record (docs/format.md 8.13): metadata only
DECISION = 6
# a change to a sealed call (tags, retention, holds, archive, disposal): docs/format.md 8.14
LIFECYCLE = 8
CODEC_OPUS = 1  # Opus, 8 kHz input, 20 ms frames, one packet per frame
# G.711 as the wire carried it (peak mode, docs/format.md 8.5): 160 bytes per 20 ms frame
CODEC_PCMU = 2  # G.711 mu-law
CODEC_PCMA = 3  # G.711 A-law
RAW_CODECS = (CODEC_PCMU, CODEC_PCMA)
G711_FRAME_BYTES = 160
NAMES = {
    OPEN: "open",
    AUDIO: "audio",
    SEAL: "seal",
    ERASE: "erase",
    TRANSCODE: "transcode",
    TENANT_ERASE: "tenant erase",
    DECISION: "decision",
    LIFECYCLE: "lifecycle",
}


def g711_law(codec: int) -> int:
    """The G.711 law (RTP payload type: 0 PCMU, 8 PCMA) of a raw codec byte."""
    if codec == CODEC_PCMU:
        return 0
    if codec == CODEC_PCMA:
        return 8
    raise FormatError(f"audio codec {codec} is not G.711")


_U64 = struct.Struct(">Q")
_AUDIO = struct.Struct(">BBIIH")  # leg, codec, chain index, first frame, frames
_SEAL = struct.Struct(">I32s32sQ")  # count, head, seal, end_us


def _id(value: str) -> bytes:
    raw = value.encode()
    if not 1 <= len(raw) <= 255:
        raise ValueError(f"identifier {value!r} must be 1 to 255 bytes of UTF-8")
    return bytes([len(raw)]) + raw


def call_aad(tenant: str, call_id: str) -> bytes:
    """The call identity bound into every encrypted record and blob of the call."""
    return tenant.encode() + b"\x00" + call_id.encode()


# A customer number sealed under the call's own customer-number key (not its data key,
# which a bundle ships) is stored as this prefix + hex; AAD call_aad + NUMBER_AAD
# (docs/format.md 8.6). Without the prefix: hex of a blob under the data key (older).
NUMBER_PREFIX = "k2:"
NUMBER_AAD = b"/customer-number"


def header(tenant: str, call_id: str) -> bytes:
    return bytes([BODY_VERSION]) + _id(tenant) + _id(call_id)


@dataclass
class Body:
    """A parsed record body: the common header and the type's fields."""

    rtype: int
    tenant: str
    call_id: str
    raw: bytes
    # OPEN
    start_us: int = 0
    meta: dict[str, Any] | None = None
    # AUDIO
    leg: int = 0
    codec: int = 0
    chain_index: int = 0
    first_frame: int = 0
    frames: int = 0
    encrypted_at: int = 0  # offset of the encrypted payload in raw
    # SEAL
    count: int = 0
    head: bytes = b""
    seal: bytes = b""
    end_us: int = 0
    manifest: bytes = b""
    # ERASE (and TRANSCODE: its time)
    time_us: int = 0
    reason: str = ""
    # TRANSCODE: the transcoding document (canonical JSON, docs/format.md 8.5);
    # DECISION: the decision (canonical JSON, docs/format.md 8.13)
    doc: bytes = b""

    def decrypt_audio(self, key: crypto.DataKey | bytes) -> tuple[npt.NDArray[np.int32], bytes]:
        """Decrypt an AUDIO body: (packet lengths, packets)."""
        if self.rtype != AUDIO:
            raise ValueError("not an audio record")
        plain = crypto.decrypt_record(
            key,
            call_id=call_aad(self.tenant, self.call_id),
            leg=self.leg,
            seq=self.chain_index,
            ciphertext=self.raw[self.encrypted_at :],
            aad_extra=self.raw[: self.encrypted_at],
        )
        n = self.frames
        if len(plain) < 2 * n:
            raise FormatError(f"audio record {self.chain_index} of {self.call_id} is short")
        lengths = np.frombuffer(plain, dtype=">u2", count=n).astype(np.int32)
        packets = plain[2 * n :]
        if int(lengths.sum()) != len(packets):
            raise FormatError(
                f"audio record {self.chain_index} of {self.call_id}: packet lengths do not add up"
            )
        return lengths, packets


def open_body(tenant: str, call_id: str, start_us: int, meta: dict[str, Any]) -> bytes:
    return (
        header(tenant, call_id)
        + _U64.pack(start_us)
        + json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    )


def audio_body(
    tenant: str,
    call_id: str,
    key: crypto.DataKey | bytes,
    *,
    leg: int,
    chain_index: int,
    first_frame: int,
    lengths: npt.NDArray[np.int32],
    packets: bytes,
    codec: int = CODEC_OPUS,
) -> bytes:
    n = len(lengths)
    if not 0 < n < 65536:
        raise ValueError(f"a record holds 1 to 65535 frames, not {n}")
    if int(np.asarray(lengths).max()) > 0xFFFF:
        raise ValueError("an Opus packet longer than 65535 bytes")
    if codec not in (CODEC_OPUS, *RAW_CODECS):
        raise ValueError(f"unknown audio codec {codec}")
    head = header(tenant, call_id) + _AUDIO.pack(leg, codec, chain_index, first_frame, n)
    plain = np.asarray(lengths, dtype=">u2").tobytes() + packets
    return head + crypto.encrypt_record(
        key,
        call_id=call_aad(tenant, call_id),
        leg=leg,
        seq=chain_index,
        plaintext=plain,
        aad_extra=head,
    )


def seal_body(
    tenant: str, call_id: str, *, count: int, head: bytes, seal: bytes, end_us: int, manifest: bytes
) -> bytes:
    return header(tenant, call_id) + _SEAL.pack(count, head, seal, end_us) + manifest


def erase_body(tenant: str, call_id: str, *, time_us: int, reason: str) -> bytes:
    return header(tenant, call_id) + _U64.pack(time_us) + reason.encode()


def tenant_erase_body(tenant: str, *, time_us: int, reason: str) -> bytes:
    """TENANT_ERASE: every call of the tenant erased, its KEK destroyed (docs/format.md
    8.6). The common header with an empty call id (c = 0): the record is the tenant's."""
    return bytes([BODY_VERSION]) + _id(tenant) + b"\x00" + _U64.pack(time_us) + reason.encode()


def transcode_body(tenant: str, call_id: str, *, time_us: int, doc: bytes) -> bytes:
    """TRANSCODE: compaction replaced the call's raw records (docs/format.md 8.5)."""
    return header(tenant, call_id) + _U64.pack(time_us) + doc


def decision_body(tenant: str, call_id: str, *, time_us: int, doc: bytes) -> bytes:
    """DECISION: the call is not recorded; ``doc`` the decision (canonical JSON,
    docs/format.md 8.13)."""
    return header(tenant, call_id) + _U64.pack(time_us) + doc


def lifecycle_body(tenant: str, call_id: str, *, time_us: int, doc: bytes) -> bytes:
    """LIFECYCLE: one change to a sealed call, chained after its seal; ``doc`` the
    change (canonical JSON, docs/format.md 8.14)."""
    return header(tenant, call_id) + _U64.pack(time_us) + doc


def parse(rtype: int, raw: bytes) -> Body:
    """Parse a body of the given record type; FormatError when malformed."""
    try:
        if raw[0] != BODY_VERSION:
            raise FormatError(f"record body version {raw[0]}; this build reads {BODY_VERSION}")
        t = raw[1]
        tenant = raw[2 : 2 + t].decode()
        c = raw[2 + t]
        call_id = raw[3 + t : 3 + t + c].decode()
        if len(tenant.encode()) != t or len(call_id.encode()) != c:
            raise FormatError("record body ends inside its header")
        pos = 3 + t + c
        if (c == 0) != (rtype == TENANT_ERASE):
            raise FormatError("a call id is 1 to 255 bytes (empty only in a tenant erase)")
        b = Body(rtype, tenant, call_id, raw)
        if rtype == OPEN:
            (b.start_us,) = _U64.unpack_from(raw, pos)
            b.meta = json.loads(raw[pos + 8 :])
        elif rtype == AUDIO:
            b.leg, b.codec, b.chain_index, b.first_frame, b.frames = _AUDIO.unpack_from(raw, pos)
            b.encrypted_at = pos + _AUDIO.size
        elif rtype == SEAL:
            b.count, b.head, b.seal, b.end_us = _SEAL.unpack_from(raw, pos)
            b.manifest = raw[pos + _SEAL.size :]
        elif rtype in (ERASE, TENANT_ERASE):
            (b.time_us,) = _U64.unpack_from(raw, pos)
            b.reason = raw[pos + 8 :].decode()
        elif rtype in (TRANSCODE, DECISION, LIFECYCLE):
            (b.time_us,) = _U64.unpack_from(raw, pos)
            b.doc = raw[pos + 8 :]
            json.loads(b.doc)
        else:
            raise FormatError(f"unknown record type {rtype}")
        return b
    except (IndexError, struct.error, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"malformed {NAMES.get(rtype, rtype)} record body: {e}") from e
