"""What the sidecar accepts on a leg's UDP port (docs/server.md, "What the sidecar
accepts"): the per-packet check (:func:`check_packets`, the server's own RTP parse
plus its batch rule, so nothing the server would refuse or count as malformed is
spooled or forwarded) and source latching (:class:`SourceLatch`, in the manner of
rtpengine's strict-source learning: the first valid packet names the leg's source,
packets from any other source are dropped; a documented re-latch rule lets a
legitimate new source, an SBC failover or a restarted stream, take over).

Sources are ``(address, port, SSRC)``: the address and port as the 18 bytes
``callvault._net.recv_batch_from`` gives per datagram, the SSRC from the RTP header.

Re-latching (constants below):

- a different address or port: accepted once ``RELATCH_PACKETS`` consecutive valid
  packets came from it (no packet of another source in between) and the latched
  source has sent nothing for ``RELATCH_SILENCE_US`` (kernel arrival stamps) when
  the last of them arrived;
- the same address and port with a new SSRC (a PBX restarting its stream):
  accepted after ``RELATCH_PACKETS`` consecutive packets of the new SSRC, with no
  silence needed.

A candidate's packets are held (at most ``HOLD_PACKETS``, the oldest dropped
beyond that) and forwarded when it is latched, so a failover loses nothing; when
a packet of the latched source (or of another candidate) arrives first, they are
dropped and counted as foreign. A packet of the latched source always resets the
candidate, so a second sender competing with a live one never gets in.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from callvault import _net, _rtp
from callvault.media.batch import MAX_PACKET_BYTES
from callvault.media.packets import PacketRun

RELATCH_PACKETS = 5  # consecutive packets from a new source before it is latched
RELATCH_SILENCE_US = 1_000_000  # silence of the latched source a new address needs
HOLD_PACKETS = 100  # a candidate's packets held for forwarding if it is latched
SOURCE_SIZE: int = _net.SOURCE_SIZE  # bytes of a source address + port
DEFAULT_EVENT_PT = 101  # a leg's telephone-event payload type when none is declared
MIN_EVENT_PAYLOAD = 4  # RFC 4733 section 2.3: event, E/R/volume, duration

# RFC 5761 section 4: an RTCP packet's second byte (packet type) is 192..223; as RTP
# it would read as marker 1 with payload type 64..95. Not audio: refused.
_RTCP_TYPES = (192, 223)

Chunk = tuple[bytes, npt.NDArray[np.int32], npt.NDArray[np.int64]]


@functools.lru_cache(maxsize=64)
def second_byte_rules(event_pts: frozenset[int]) -> npt.NDArray[np.uint8]:
    """Per value of an RTP packet's second byte (marker << 7 | payload type): 0 passes,
    1 is refused (RTCP), 2 is an RFC 4733 event (needs MIN_EVENT_PAYLOAD bytes)."""
    rules = np.zeros(256, dtype=np.uint8)
    for pt in event_pts:
        if 0 <= pt < 128:
            rules[pt] = rules[pt | 0x80] = 2
    rules[_RTCP_TYPES[0] : _RTCP_TYPES[1] + 1] = 1
    return rules


def check_packets(
    packets: bytes, lengths: npt.NDArray[np.int32], event_pts: frozenset[int]
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.uint32]]:
    """Which datagrams of a leg the sidecar forwards, and every datagram's SSRC.

    A datagram passes when the server would take it as a packet: its length is 1 to
    ``MAX_PACKET_BYTES`` (the server refuses a batch holding any other length) and
    the server's RTP parse (``callvault._rtp.check_datagrams``: one C pass with the
    header parse that ``_rtp.parse`` and the jitter buffer use) finds it well formed
    (version 2, CSRC list, header extension and padding inside the datagram, a
    non-empty payload); an RFC 4733 event (one of
    ``event_pts``) needs a payload of 4 bytes or more; RTCP (second byte 192 to
    223, RFC 5761) is refused. Payload types the server does not decode pass: it
    records them as an unsupported-codec gap, which the sealed call must show."""
    lens = np.ascontiguousarray(lengths, dtype=np.int32)
    if not len(lens):
        return np.zeros(0, np.bool_), np.zeros(0, np.uint32)
    # one C pass over the datagrams with the jitter buffer's own header parse
    ok, ssrc, _ = _rtp.check_datagrams(
        packets, lens, second_byte_rules(event_pts), MIN_EVENT_PAYLOAD, MAX_PACKET_BYTES
    )
    return ok, ssrc


def describe_source(source: bytes | None, ssrc: int) -> str:
    """``address:port SSRC 0x...`` for logs (an IPv4-mapped address as dotted IPv4)."""
    if source is None:
        return "none"
    addr, port = source[:16], int.from_bytes(source[16:18], "big")
    if addr[:12] == b"\x00" * 10 + b"\xff\xff":
        host = ".".join(str(b) for b in addr[12:])
    else:
        host = f"[{ipaddress.IPv6Address(addr)}]"
    return f"{host}:{port} SSRC {ssrc:#010x}"


def _select(
    packets: bytes,
    lengths: npt.NDArray[np.int32],
    arrival: npt.NDArray[np.int64],
    keep: npt.NDArray[np.bool_],
) -> Chunk | None:
    """The packets where ``keep`` is true (vectorised: no Python object per packet)."""
    if not keep.any():
        return None
    data = np.frombuffer(packets, dtype=np.uint8)[np.repeat(keep, lengths)]
    return data.tobytes(), np.ascontiguousarray(lengths[keep]), np.ascontiguousarray(arrival[keep])


@dataclass
class Filtered:
    """What one received batch of a leg became: the chunk to spool (None when
    nothing passed) and the counts of what was dropped or changed."""

    chunk: Chunk | None
    invalid: int = 0
    foreign: int = 0
    relatches: int = 0


@dataclass
class SourceLatch:
    """One leg's latched source and its re-latch candidate (receive thread only)."""

    source: bytes | None = None  # 18-byte address + port; None before the first packet
    ssrc: int = 0
    last_us: int = 0  # arrival of the latched source's newest packet
    cand_source: bytes | None = None
    cand_ssrc: int = 0
    cand_count: int = 0  # consecutive packets of the candidate, held or not
    held: list[tuple[bytes, int]] = field(default_factory=list)  # (packet, arrival_us)

    def drop_candidate(self) -> int:
        """Forget the candidate; returns how many held packets that drops."""
        dropped = len(self.held)
        self.held = []
        self.cand_source = None
        self.cand_count = 0
        return dropped

    def filter(
        self,
        packets: bytes,
        lengths: npt.NDArray[np.int32],
        arrival: npt.NDArray[np.int64],
        sources: bytes,
        event_pts: frozenset[int],
    ) -> Filtered:
        """Check and latch one received batch of this leg (in arrival order)."""
        n = len(lengths)
        if not n:
            return Filtered(None)
        ok, ssrc = check_packets(packets, lengths, event_pts)
        invalid = n - int(np.count_nonzero(ok))
        if self.source is not None and not self.held:
            if n == 1:
                mine = not invalid and sources == self.source and int(ssrc[0]) == self.ssrc
            else:
                src = np.frombuffer(sources, dtype=np.uint8).reshape(n, SOURCE_SIZE)
                latched = np.frombuffer(self.source, dtype=np.uint8)
                match = (src == latched).all(axis=1) & (ssrc == self.ssrc)
                mine = bool((match | ~ok).all())
            if mine:
                # Every valid packet from the latched source: no per-packet work.
                self.last_us = max(self.last_us, int(arrival.max()))
                if not invalid:
                    return Filtered((packets, lengths, arrival))
                return Filtered(_select(packets, lengths, arrival, ok), invalid=invalid)
        return self._slow(packets, lengths, arrival, sources, ok, ssrc, invalid)

    def _slow(
        self,
        packets: bytes,
        lengths: npt.NDArray[np.int32],
        arrival: npt.NDArray[np.int64],
        sources: bytes,
        ok: npt.NDArray[np.bool_],
        ssrc: npt.NDArray[np.uint32],
        invalid: int,
    ) -> Filtered:
        out = Filtered(None, invalid=invalid)
        bounds = PacketRun(packets, lengths).bounds.tolist()
        kept: list[tuple[bytes, int]] = []
        arrivals = arrival.tolist()
        ssrcs = ssrc.tolist()
        for i in np.flatnonzero(ok).tolist():
            src = sources[i * SOURCE_SIZE : (i + 1) * SOURCE_SIZE]
            s, a = ssrcs[i], arrivals[i]
            pkt = packets[bounds[i] : bounds[i + 1]]
            if self.source is None:  # the leg's first valid packet names its source
                self.source, self.ssrc, self.last_us = src, s, a
                kept.append((pkt, a))
                continue
            if src == self.source and s == self.ssrc:
                self.last_us = max(self.last_us, a)
                out.foreign += self.drop_candidate()
                kept.append((pkt, a))
                continue
            if src != self.cand_source or s != self.cand_ssrc:
                out.foreign += self.drop_candidate()
                self.cand_source, self.cand_ssrc = src, s
            self.cand_count += 1
            self.held.append((pkt, a))
            if len(self.held) > HOLD_PACKETS:
                del self.held[0]
                out.foreign += 1
            same_address = src == self.source
            if self.cand_count >= RELATCH_PACKETS and (
                same_address or a - self.last_us >= RELATCH_SILENCE_US
            ):
                self.source, self.ssrc, self.last_us = src, s, a
                kept.extend(self.held)
                self.held = []
                self.cand_source = None
                self.cand_count = 0
                out.relatches += 1
        if kept:
            out.chunk = (
                b"".join(p for p, _ in kept),
                np.fromiter((len(p) for p, _ in kept), dtype=np.int32, count=len(kept)),
                np.fromiter((a for _, a in kept), dtype=np.int64, count=len(kept)),
            )
        return out
