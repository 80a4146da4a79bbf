"""Ogg Opus files (RFC 7845 on the Ogg container of RFC 3533): writer and reader.

Layout written by :class:`OggOpusWriter`:

* page 0 (BOS): the ID header ``OpusHead`` alone (RFC 7845 5.1). Mono uses
  channel mapping family 0; two channels (dual-track: one leg per channel)
  use family 1 with two uncoupled mono streams, mapping ``[0, 1]``, so the
  packets are those of :func:`callvault._opus.pack_multistream`.
* page 1..: the comment header ``OpusTags`` (RFC 7845 5.2), ending its page.
* audio pages: at most ``page_duration`` (1 s) of packets each; the granule
  position of a page is the number of 48 kHz samples decoded through the last
  packet completed on it, pre-skip included (RFC 7845 4). The last page has
  the EOS flag and, if the writer was given the true duration, a smaller
  granule position (end trimming, RFC 7845 4.4) so that players output
  exactly that many samples.

:class:`OggOpusReader` checks every page (capture pattern, version, CRC,
sequence numbers, a single logical stream) and raises
:class:`~callvault.errors.FormatError` on anything malformed. It builds a
page index on open (the file is read into memory: at 12 kb/s an hour is about
5.4 MB); ``seek`` bisects that index by granule position.

The silence question (DTX and third-party decoders) is discussed in
docs/opus-silence.md: :func:`replace_dtx` swaps TOC-only DTX packets for real
ones; the pipeline calls it as it encodes (engine/callvault/media/pipeline.py),
:func:`dtx_safe` on a stream of packets that was stored with them.
:func:`write_call` is the one writer of a call's (dual-track) Ogg file.
"""

from __future__ import annotations

import bisect
import os
import secrets
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import BinaryIO, NamedTuple

import numpy as np
import numpy.typing as npt

from callvault import _opus
from callvault.errors import FormatError, InputError
from callvault.media.packets import PacketRun
from callvault.timeline import (
    FRAME_SAMPLES_48K,
    FRAMES_PER_SECOND,
    OPUS_GRANULE_RATE,
    SAMPLE_RATE,
)

__all__ = [
    "OggOpusReader",
    "OggOpusWriter",
    "OggPacket",
    "OpusHead",
    "channel_comments",
    "dtx_safe",
    "replace_dtx",
    "write_call",
]

# RFC 3533 6: page header flags.
FLAG_CONTINUED = 0x01
FLAG_BOS = 0x02
FLAG_EOS = 0x04
CAPTURE = b"OggS"
# Fixed part of a page header, RFC 3533 6: capture, version, flags, granule,
# serial, sequence, crc, segment count.
PAGE_HEADER = struct.Struct("<4sBBqIIIB")
MAX_SEGMENTS = 255  # a page's segment table holds at most 255 lacing values
NO_GRANULE = -1  # granule of a page on which no packet ends (RFC 3533 6)
RATE = OPUS_GRANULE_RATE  # Ogg Opus granule positions always count 48 kHz samples (RFC 7845 4)
# RFC 7845 4.6: decode at least 80 ms before a seek target so the decoder converges.
PREROLL_48K = 3840


@dataclass(frozen=True)
class OpusHead:
    """The ID header (RFC 7845 5.1)."""

    channels: int
    pre_skip: int
    input_sample_rate: int = SAMPLE_RATE
    output_gain: int = 0  # Q7.8 dB
    mapping_family: int = 0
    stream_count: int = 1
    coupled_count: int = 0
    mapping: tuple[int, ...] = field(default=(0,))
    version: int = 1

    def to_bytes(self) -> bytes:
        out = struct.pack(
            "<8sBBHIhB",
            b"OpusHead",
            self.version,
            self.channels,
            self.pre_skip,
            self.input_sample_rate,
            self.output_gain,
            self.mapping_family,
        )
        if self.mapping_family != 0:
            out += bytes([self.stream_count, self.coupled_count, *self.mapping])
        return out

    @classmethod
    def parse(cls, data: bytes) -> OpusHead:
        if len(data) < 19 or data[:8] != b"OpusHead":
            raise FormatError("first packet is not an OpusHead ID header (RFC 7845 5.1)")
        version, channels, pre_skip, rate, gain, family = struct.unpack_from("<BBHIhB", data, 8)
        if version >> 4 != 0:
            raise FormatError(f"unsupported Ogg Opus version {version} (major must be 0)")
        if channels == 0:
            raise FormatError("OpusHead: channel count is 0")
        if family == 0:
            if channels > 2:
                raise FormatError(f"OpusHead: mapping family 0 with {channels} channels")
            return cls(
                channels,
                pre_skip,
                rate,
                gain,
                0,
                1,
                1 if channels == 2 else 0,
                tuple(range(channels)),
                version,
            )
        if len(data) < 21 + channels:
            raise FormatError("OpusHead: channel mapping table truncated")
        streams, coupled = data[19], data[20]
        mapping = tuple(data[21 : 21 + channels])
        if (
            streams == 0
            or coupled > streams
            or any(m != 255 and m >= streams + coupled for m in mapping)
        ):
            raise FormatError(
                f"OpusHead: invalid mapping (streams={streams}, coupled={coupled}, "
                f"mapping={list(mapping)})"
            )
        return cls(channels, pre_skip, rate, gain, family, streams, coupled, mapping, version)


def _comment_header(vendor: str, comments: dict[str, str]) -> bytes:
    v = vendor.encode()
    out = [b"OpusTags", struct.pack("<I", len(v)), v, struct.pack("<I", len(comments))]
    for key, value in comments.items():
        if not key or "=" in key or not all(0x20 <= ord(c) <= 0x7D for c in key):
            raise ValueError(f"invalid comment field name {key!r} (RFC 7845 5.2)")
        c = f"{key}={value}".encode()
        out += [struct.pack("<I", len(c)), c]
    return b"".join(out)


def _parse_tags(data: bytes) -> tuple[str, dict[str, str]]:
    try:
        if data[:8] != b"OpusTags":
            raise FormatError("second packet is not an OpusTags comment header (RFC 7845 5.2)")
        (n,) = struct.unpack_from("<I", data, 8)
        vendor = data[12 : 12 + n].decode("utf-8", "replace")
        pos = 12 + n
        (count,) = struct.unpack_from("<I", data, pos)
        pos += 4
        comments: dict[str, str] = {}
        for _ in range(count):
            (n,) = struct.unpack_from("<I", data, pos)
            pos += 4
            if pos + n > len(data):
                raise FormatError("OpusTags: comment runs past the end of the header")
            key, _, value = data[pos : pos + n].decode("utf-8", "replace").partition("=")
            comments[key.upper()] = value
            pos += n
    except struct.error as e:
        raise FormatError(f"OpusTags header truncated: {e}") from e
    return vendor, comments


# --------------------------------------------------------------------------
# Writer


class OggOpusWriter:
    """Write Opus packets into an Ogg Opus file (see the module docstring for the layout).

    ``pre_skip`` is the encoder's delay at 48 kHz (``Encoder.lookahead``).
    Call :meth:`close` with ``duration_48k`` (the original audio's length at
    48 kHz) to trim the end exactly; the trimmed amount must fit in the last
    page, which always holds at least one packet.
    """

    def __init__(
        self,
        file: str | os.PathLike[str] | BinaryIO,
        *,
        channels: int,
        pre_skip: int,
        input_sample_rate: int = SAMPLE_RATE,
        vendor: str = "callvault",
        comments: dict[str, str] | None = None,
        serial: int | None = None,
        page_duration_48k: int = RATE,
    ) -> None:
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, not {channels}")
        if not 0 <= pre_skip <= 0xFFFF:
            raise ValueError(f"pre_skip {pre_skip} does not fit 16 bits")
        if page_duration_48k < 120:
            raise ValueError("page_duration_48k must be at least one 2.5 ms frame (120)")
        self._f: BinaryIO
        if isinstance(file, str | os.PathLike):
            self._f = open(file, "wb")  # noqa: SIM115  (closed by close())
            self._own = True
        else:
            self._f = file
            self._own = False
        self.channels = channels
        self.pre_skip = pre_skip
        self.serial = secrets.randbits(32) if serial is None else serial & 0xFFFFFFFF
        self.page_duration_48k = page_duration_48k
        self._seq = 0
        self._granule = 0  # 48 kHz samples of every packet accepted so far
        self._pending: list[tuple[bytes, int]] = []  # (packet, granule after it)
        self._pending_samples = 0
        self._closed = False
        if channels == 1:
            head = OpusHead(1, pre_skip, input_sample_rate)
        else:
            head = OpusHead(2, pre_skip, input_sample_rate, 0, 1, 2, 0, (0, 1))
        self.head = head
        self._write_packets_as_pages([(head.to_bytes(), 0)], FLAG_BOS)
        self._write_packets_as_pages([(_comment_header(vendor, comments or {}), 0)], 0)

    # -- pages
    def _page(self, flags: int, granule: int, segments: list[int], body: bytes) -> None:
        header = PAGE_HEADER.pack(
            CAPTURE, 0, flags, granule, self.serial, self._seq, 0, len(segments)
        ) + bytes(segments)
        crc = _opus.ogg_crc(body, _opus.ogg_crc(header))
        page = header[:22] + struct.pack("<I", crc) + header[26:] + body
        self._f.write(page)
        self._seq += 1

    def _write_packets_as_pages(
        self, packets: list[tuple[bytes, int]], flags: int, last_granule: int | None = None
    ) -> None:
        """Lay ``packets`` out on as few pages as the 255-segment limit allows."""
        segs: list[int] = []
        body: list[bytes] = []
        granule = NO_GRANULE
        cont = 0
        for i, (pkt, g) in enumerate(packets):
            pos = 0
            lacing = [255] * (len(pkt) // 255) + [len(pkt) % 255]
            while lacing:
                room = MAX_SEGMENTS - len(segs)
                take = lacing[:room]
                lacing = lacing[room:]
                n = sum(take)
                segs += take
                body.append(pkt[pos : pos + n])
                pos += n
                if not lacing:
                    granule = g
                    if i == len(packets) - 1:
                        break
                if len(segs) == MAX_SEGMENTS:
                    self._page(cont | (flags & FLAG_BOS), granule, segs, b"".join(body))
                    flags &= ~FLAG_BOS
                    cont = FLAG_CONTINUED if lacing else 0
                    segs, body, granule = [], [], NO_GRANULE
        if segs or flags & FLAG_EOS:
            if last_granule is not None:
                granule = last_granule
            self._page(cont | flags, granule, segs, b"".join(body))

    # -- packets
    def write_packet(self, packet: bytes, samples_48k: int = FRAME_SAMPLES_48K) -> None:
        """Append one Opus packet lasting ``samples_48k`` samples at 48 kHz (20 ms = 960)."""
        if self._closed:
            raise ValueError("write to a closed OggOpusWriter")
        if not packet:
            raise ValueError("empty packet: fill losses with a real packet (e.g. PLC output)")
        if samples_48k <= 0:
            raise ValueError("samples_48k must be positive")
        self._granule += samples_48k
        self._pending.append((bytes(packet), self._granule))
        self._pending_samples += samples_48k
        if self._pending_samples > self.page_duration_48k:
            # Emit one page of at most page_duration (at least one packet), keeping
            # the rest pending: the final page then always holds a packet, which
            # leaves room for end trimming.
            base = self._granule - self._pending_samples
            k = 1
            while (
                k < len(self._pending) - 1 and self._pending[k][1] - base <= self.page_duration_48k
            ):
                k += 1
            page, self._pending = self._pending[:k], self._pending[k:]
            self._pending_samples = self._granule - page[-1][1]
            self._write_packets_as_pages(page, 0)

    def write_packets(
        self, data: bytes, lengths: npt.ArrayLike, samples_48k: int = FRAME_SAMPLES_48K
    ) -> None:
        """Append a batch (packets concatenated + lengths), each ``samples_48k`` long."""
        for packet in PacketRun(data, np.asarray(lengths)):
            self.write_packet(packet, samples_48k)

    @property
    def granule(self) -> int:
        """48 kHz samples written so far (pre-skip included)."""
        return self._granule

    def close(self, duration_48k: int | None = None) -> None:
        """Write the last page (EOS), end-trimmed to ``duration_48k`` if given."""
        if self._closed:
            return
        final = self._granule
        if duration_48k is not None:
            final = self.pre_skip + duration_48k
            if final > self._granule:
                raise ValueError(
                    f"duration {duration_48k} + pre-skip {self.pre_skip} exceeds the "
                    f"{self._granule} samples written: encode more frames to flush the encoder"
                )
            start = self._granule - self._pending_samples
            if final < start:
                raise ValueError(
                    f"end trimming of {self._granule - final} samples exceeds the last page "
                    f"({self._pending_samples} samples)"
                )
        self._closed = True
        self._write_packets_as_pages(self._pending, FLAG_EOS, last_granule=final)
        self._pending = []
        self._f.flush()
        if self._own:
            self._f.close()

    def __enter__(self) -> OggOpusWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        elif self._own:
            self._f.close()


def channel_comments(leg_names: Sequence[str]) -> dict[str, str]:
    """The OpusTags naming each channel's leg (docs/format.md section 6)."""
    return {f"CALLVAULT_CHANNEL_{i}": name for i, name in enumerate(leg_names)}


def identity_comments(call_id: str, tenant: str, start_us: int) -> list[str]:
    """The OpusTags naming which call an export is (docs/format.md section 6), as
    ``KEY=VALUE`` strings: the call id, its tenant, its start (unix µs, exact) and a
    DATE (ISO 8601 UTC, the common Vorbis comment field players show). No personal
    data: nothing of the call's metadata beyond what identifies it. The one rule
    for every export writer and for verify-bundle's expected headers."""
    start = datetime.fromtimestamp(start_us / 1e6, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return [
        f"CALLVAULT_CALL_ID={call_id}",
        f"CALLVAULT_TENANT={tenant}",
        f"CALLVAULT_START_US={start_us}",
        f"DATE={start[:-4]}Z",  # milliseconds
    ]


def call_comments(
    leg_names: Sequence[str], call_id: str, tenant: str, start_us: int
) -> dict[str, str]:
    """The OpusTags of a call's Ogg export: each channel's leg, then the call's
    identity (docs/format.md section 6). The vault's export writes them and
    verify-bundle expects exactly them."""
    comments = channel_comments(leg_names)
    for item in identity_comments(call_id, tenant, start_us):
        key, _, value = item.partition("=")
        comments[key] = value
    return comments


def write_call(
    file: str | os.PathLike[str] | BinaryIO,
    legs: Sequence[PacketRun | tuple[bytes, npt.ArrayLike]],
    *,
    pre_skip: int,
    frames: int,
    comments: dict[str, str] | None = None,
) -> None:
    """A call's legs as one Ogg Opus file, never re-encoded (docs/format.md sections 5, 6).

    ``legs`` holds one or two legs' packet runs, one packet per frame, each
    covering at least ``frames`` frames (the encoder's flush packet after them
    is trimmed away by the end granule). Two legs become the dual-track
    multistream packets of :func:`callvault._opus.pack_multistream`; the one
    writer of a recording's Ogg export (transcode, vault export)."""
    runs = [r if isinstance(r, PacketRun) else PacketRun(r[0], np.asarray(r[1])) for r in legs]
    if len(runs) == 1:
        data, lengths = runs[0].data, runs[0].lengths
    elif len(runs) == 2:
        (da, la), (db, lb) = (r.astuple() for r in runs)
        data, lengths = _opus.pack_multistream(da, la, db, lb)
    else:
        raise InputError(f"{len(runs)} legs: Ogg export takes one or two legs")
    w = OggOpusWriter(file, channels=len(runs), pre_skip=pre_skip, comments=comments)
    w.write_packets(data, lengths)
    w.close(duration_48k=frames * FRAME_SAMPLES_48K)  # exact: the flush packet is trimmed away


# --------------------------------------------------------------------------
# Reader


class OggPacket(NamedTuple):
    """One audio packet: its bytes, granule position after it, start time (s, pre-skip removed)."""

    data: bytes
    granule: int
    time: float
    samples_48k: int


class _Page(NamedTuple):
    offset: int
    granule: int
    first_packet: int  # index of the first packet that starts on this page
    end_packet: int  # one past the last packet completed on this page


class OggOpusReader:
    """Read an Ogg Opus file: headers, packets with their times, seeking, decoding to PCM."""

    def __init__(self, file: str | os.PathLike[str] | BinaryIO) -> None:
        if isinstance(file, str | os.PathLike):
            with open(file, "rb") as f:
                raw = f.read()
        else:
            raw = file.read()
        self._parse(bytes(raw))
        self._pos = 0

    # -- parsing
    def _parse(self, raw: bytes) -> None:
        pos = 0
        serial: int | None = None
        seq = 0
        packets: list[bytes] = []
        partial: list[bytes] = []
        pages: list[_Page] = []
        page_granules: list[int] = []
        eos = False
        while pos < len(raw):
            if len(raw) - pos < PAGE_HEADER.size:
                raise FormatError(f"truncated page header at byte {pos}")
            capture, version, flags, granule, ser, pseq, crc, nseg = PAGE_HEADER.unpack_from(
                raw, pos
            )
            if capture != CAPTURE:
                raise FormatError(f"no Ogg capture pattern at byte {pos}")
            if version != 0:
                raise FormatError(f"unsupported Ogg version {version} at byte {pos}")
            hlen = PAGE_HEADER.size + nseg
            if len(raw) - pos < hlen:
                raise FormatError(f"truncated segment table at byte {pos}")
            lacing = raw[pos + PAGE_HEADER.size : pos + hlen]
            blen = sum(lacing)
            if len(raw) - pos < hlen + blen:
                raise FormatError(
                    f"truncated page at byte {pos}: {hlen + blen} bytes announced, "
                    f"{len(raw) - pos} left"
                )
            check = _opus.ogg_crc(
                raw[pos + 26 : pos + hlen + blen], _opus.ogg_crc(raw[pos : pos + 22] + b"\0\0\0\0")
            )
            if check != crc:
                raise FormatError(
                    f"page {pseq} at byte {pos}: CRC mismatch "
                    f"(stored {crc:#010x}, computed {check:#010x})"
                )
            if serial is None:
                if not flags & FLAG_BOS:
                    raise FormatError("first page lacks the BOS flag")
                serial = ser
            elif ser != serial:
                raise FormatError(
                    f"page at byte {pos} belongs to stream {ser:#x}: multiplexed or chained "
                    "Ogg streams are not supported"
                )
            if eos:
                raise FormatError(f"page at byte {pos} follows the EOS page")
            if pseq != seq:
                raise FormatError(f"page sequence jumps from {seq - 1} to {pseq} (lost page)")
            seq += 1
            if bool(flags & FLAG_CONTINUED) != bool(partial):
                raise FormatError(f"page {pseq}: continuation flag disagrees with the packets")
            first = len(packets) + (1 if partial else 0)
            body = pos + hlen
            for v in lacing:
                partial.append(raw[body : body + v])
                body += v
                if v < 255:
                    packets.append(b"".join(partial))
                    partial = []
            pages.append(_Page(pos, granule, first, len(packets)))
            page_granules.append(granule)
            eos = bool(flags & FLAG_EOS)
            pos += hlen + blen
        if not pages:
            raise FormatError("empty file: no Ogg page")
        if partial:
            raise FormatError("file ends inside a packet (truncated)")
        if not eos:
            raise FormatError("file ends without an EOS page (truncated)")
        if len(packets) < 2:
            raise FormatError("missing Opus headers")
        if pages[0].end_packet != 1:
            raise FormatError("the ID header must be alone on the first page (RFC 7845 3)")
        self.head = OpusHead.parse(packets[0])
        self.vendor, self.comments = _parse_tags(packets[1])
        self.header_packets = (packets[0], packets[1])  # as stored, for byte comparison
        hdr_end = next((i for i, p in enumerate(pages) if p.end_packet >= 2), None)
        if hdr_end is None or pages[hdr_end].end_packet != 2:
            raise FormatError("the comment header must end its page (RFC 7845 3)")
        audio_pages = pages[hdr_end + 1 :]
        self._build_index(packets[2:], audio_pages)

    def _build_index(self, packets: list[bytes], pages: list[_Page]) -> None:
        n = len(packets)
        samples = np.empty(n, dtype=np.int64)
        for i, pk in enumerate(packets):
            if not pk:
                raise FormatError(f"audio packet {i} is empty")
            try:
                samples[i] = _opus.packet_samples(pk, RATE)
            except Exception as e:
                raise FormatError(f"audio packet {i} is not a valid Opus packet: {e}") from e
        ends = np.cumsum(samples)
        # Granule of the first page fixes where the stream starts (RFC 7845 4.3).
        start = 0
        done = [p for p in pages if p.granule != NO_GRANULE and p.end_packet > 2]
        if done:
            p0 = done[0]
            start = p0.granule - int(ends[p0.end_packet - 3])
            if start < 0 and p0 is not pages[-1]:
                raise FormatError(
                    f"first audio page granule {p0.granule} is less than its packets' "
                    f"{int(ends[p0.end_packet - 3])} samples"
                )
            start = max(start, 0)
        self.start_granule = start
        total = start + (int(ends[-1]) if n else 0)
        self.final_granule = pages[-1].granule if pages else 0
        if n and (self.final_granule == NO_GRANULE or self.final_granule > total):
            raise FormatError(
                f"last page granule {self.final_granule} does not match the {total} samples "
                "in the stream"
            )
        prev = 0
        for p in pages:
            if p.granule != NO_GRANULE:
                if p.granule < prev:
                    raise FormatError(f"granule positions go backwards ({prev} -> {p.granule})")
                prev = p.granule
        self._run = PacketRun.of(packets)
        self.lengths = self._run.lengths
        self.samples_48k = samples
        self.granules = start + ends  # granule after each packet
        # Page index for seek: granule (end) of every page where a packet ends,
        # with the first packet starting there. Built once here.
        self._page_granules: list[int] = []
        self._page_first: list[int] = []
        for p in pages:
            if p.granule != NO_GRANULE and p.end_packet > 2:
                self._page_granules.append(int(self.granules[p.end_packet - 3]))
                self._page_first.append(max(p.first_packet - 2, 0))

    # -- header accessors
    @property
    def channels(self) -> int:
        return self.head.channels

    @property
    def pre_skip(self) -> int:
        return self.head.pre_skip

    @property
    def input_sample_rate(self) -> int:
        return self.head.input_sample_rate

    @property
    def mapping_family(self) -> int:
        return self.head.mapping_family

    @property
    def duration_48k(self) -> int:
        """Playable length in 48 kHz samples (final granule - pre-skip, end trimming honoured)."""
        return max(self.final_granule - self.pre_skip, 0)

    @property
    def duration(self) -> float:
        return self.duration_48k / RATE

    def __len__(self) -> int:
        return len(self.lengths)

    def packet(self, i: int) -> OggPacket:
        g = int(self.granules[i])
        s = int(self.samples_48k[i])
        return OggPacket(self._run[i], g, (g - s - self.pre_skip) / RATE, s)

    def packets_data(self) -> tuple[bytes, npt.NDArray[np.int32]]:
        """All audio packets as one batch (data, lengths), for the batch decoders."""
        return self._run.data, self.lengths.copy()

    # -- iteration and seeking
    def __iter__(self) -> Iterator[OggPacket]:
        while self._pos < len(self.lengths):
            i = self._pos
            self._pos += 1
            yield self.packet(i)

    def tell(self) -> int:
        """Index of the next packet iteration yields."""
        return self._pos

    def seek(self, seconds: float) -> float:
        """Position at the page containing ``seconds``; return the start time of its first packet.

        The page is found by bisecting the index of page granule positions
        built on open; iteration resumes at the first packet that starts on it.
        """
        if seconds < 0:
            raise ValueError("cannot seek before the start")
        target = self.pre_skip + round(seconds * RATE)
        k = bisect.bisect_right(self._page_granules, target)
        if k >= len(self._page_granules):
            self._pos = len(self.lengths)
            return self.duration
        self._pos = self._page_first[k]
        return self.packet(self._pos).time if self._pos < len(self.lengths) else self.duration

    # -- decoding
    def _decoder(self, rate: int) -> _opus.Decoder | _opus.MultistreamDecoder:
        h = self.head
        if h.mapping_family == 0:
            return _opus.Decoder(sample_rate=rate, channels=h.channels)
        if h.mapping_family == 1:
            return _opus.MultistreamDecoder(
                rate, h.channels, h.stream_count, h.coupled_count, bytes(h.mapping)
            )
        raise FormatError(f"channel mapping family {h.mapping_family} is not supported")

    def read_pcm(
        self,
        start_s: float | None = None,
        end_s: float | None = None,
        sample_rate: int = SAMPLE_RATE,
    ) -> npt.NDArray[np.int16]:
        """Decode [start_s, end_s) to int16 (n, channels) at 8 or 48 kHz.

        Pre-skip and end trimming are honoured, so the whole file decodes to
        exactly ``duration`` seconds. A partial read starts decoding 80 ms
        (RFC 7845 4.6) before ``start_s`` with a fresh decoder and discards that.
        """
        if sample_rate not in (8000, 12000, 16000, 24000, 48000):
            raise ValueError(f"sample_rate {sample_rate} not supported")
        ratio = RATE // sample_rate
        ch = self.channels
        s0 = 0 if start_s is None else max(round(start_s * RATE), 0)
        s1 = self.duration_48k if end_s is None else min(round(end_s * RATE), self.duration_48k)
        if s1 <= s0 or not len(self.lengths):
            return np.zeros((0, ch), dtype=np.int16)
        g0 = self.pre_skip + s0  # granules of the wanted span
        g1 = self.pre_skip + s1
        starts = self.granules - self.samples_48k
        first = int(np.searchsorted(self.granules, g0 - (PREROLL_48K if s0 else 0), "right"))
        last = int(np.searchsorted(starts, g1, "left"))  # one past the last packet needed
        first = min(first, max(last - 1, 0))
        dec = self._decoder(sample_rate)
        sub = self.samples_48k[first:last]
        run = self._run[first:last]
        if len(sub) and (sub == sub[0]).all():
            pcm = dec.decode_frames(run.data, run.lengths, int(sub[0]) // ratio).reshape(-1, ch)
        else:
            parts = []
            for i in range(first, last):
                pk = self._run[i]
                parts.append(dec.decode(pk, int(self.samples_48k[i]) // ratio).reshape(-1, ch))
            pcm = np.concatenate(parts)
        base = int(starts[first])  # granule of pcm[0]
        a = (g0 - base) // ratio
        b = a + (s1 - s0) // ratio
        out = pcm[a:b]
        if self.head.output_gain:
            gain = 10 ** (self.head.output_gain / (256 * 20))
            out = np.clip(np.round(out * gain), -32768, 32767).astype(np.int16)
        return np.ascontiguousarray(out)


# A DTX packet is the TOC byte alone (libopus: "2 bytes or less need not be transmitted").
DTX_MAX_BYTES = 2
# Size cap of the comfort-noise packets dtx_safe writes. Below 15 bytes per 20 ms
# (6 kb/s) libopus switches to CELT-only, and ffmpeg's native decoder fails on
# the SILK/CELT mix ("Internal bug"); at 15 it stays SILK NB (docs/opus-silence.md).
COMFORT_NOISE_BYTES = 15
COMFORT_NOISE_BITRATE = 6000  # lowest SILK rate: the noise needs level and spectrum only


def replace_dtx(
    run: PacketRun, pcm: npt.NDArray[np.int16], encoder: _opus.Encoder, max_bytes: int
) -> PacketRun:
    """``run`` (one mono leg, one packet per frame) with each TOC-only DTX packet replaced
    by ``encoder``'s packet of at most ``max_bytes`` for the same frame of ``pcm``
    (frames x samples). The DTX replacer of the pipeline's step path (with the frames
    it encoded and a noise encoder that lives as long as the leg) and of dtx_safe (stored
    packets, with the frames libopus decodes from them). The pipeline's C core
    (ext/_leg.pyx) does the same in the encode loop, packet by packet, with the same
    noise encoder calls: the same bytes (tests/media/test_pipeline_core.py)."""
    dtx = np.flatnonzero(run.lengths <= DTX_MAX_BYTES)
    if not len(dtx):
        return run
    cn_data, cn_lens = encoder.encode_frames(np.ascontiguousarray(pcm[dtx]), max_bytes=max_bytes)
    return run.replace(dtx, PacketRun(cn_data, cn_lens))


def dtx_safe(
    data: bytes,
    lengths: npt.ArrayLike,
    *,
    sample_rate: int = SAMPLE_RATE,
    max_bytes: int = COMFORT_NOISE_BYTES,
    bitrate: int = COMFORT_NOISE_BITRATE,
) -> tuple[bytes, npt.NDArray[np.int32]]:
    """One mono leg's packets with every DTX packet replaced by real comfort noise.

    ffmpeg's built-in Opus decoder has no DTX/CNG: it runs its SILK decoder
    on a 0-byte frame, reading whatever bytes follow (in a non-last stream of
    a multistream packet: the next stream's packet), so TOC-only packets
    decode to silence or to bursts of garbage (docs/opus-silence.md). Here
    the leg is decoded with libopus, whose concealment renders each DTX frame
    as comfort noise, and only those frames are re-encoded, by a second
    encoder capped at ``max_bytes`` per packet, into small real packets that
    every decoder decodes alike (:func:`replace_dtx`). Other packets are kept
    byte for byte. Returns (data, lengths) like the input, with the same number
    of packets.
    """
    run = PacketRun(data, np.asarray(lengths))
    if not (run.lengths <= DTX_MAX_BYTES).any():
        return run.data, run.lengths.copy()
    if (run.lengths == 0).any():
        raise ValueError("empty (lost) packets: fill losses before dtx_safe")
    pcm = _opus.Decoder(sample_rate=sample_rate).decode_frames(
        run.data, run.lengths, sample_rate // FRAMES_PER_SECOND
    )
    side = _opus.Encoder(sample_rate=sample_rate, bitrate=bitrate, dtx=False)
    out = replace_dtx(run, pcm, side, max_bytes)
    return out.data, out.lengths.copy()
