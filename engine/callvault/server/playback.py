"""Playback of a call, sealed or still being recorded (Archive.Play).

``play`` yields the call's frames in chunks, in timeline order, every leg
alike: the stored Opus packets, or PCM decoded on the timeline. On a call
still being recorded it goes up to the last frame durable on every leg and,
with ``follow``, waits for more (a supervisor listening in) until the call is
sealed or ``active()`` turns false (the client left).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from callvault.errors import InputError
from callvault.server.ingest import Ingestor, LiveCall
from callvault.timeline import (
    FRAME_MS,
    FRAME_SAMPLES,
    FRAME_US,
    FRAMES_PER_SECOND,
    OPUS_DELAY_SAMPLES,
    OPUS_PRE_SKIP_48K,
    SAMPLE_RATE,
)
from callvault.vault import Vault, VaultError

# frames_per_chunk 0 (proto/callvault/v1): one second of frames per chunk
DEFAULT_CHUNK = FRAMES_PER_SECOND
# PCM from the middle of a call: the decoder first runs over this many frames
# before the range, so its state (pitch, LPC, energy) is the stream's, not a reset's.
WARMUP_FRAMES = 10

LegData = tuple[bytes, npt.NDArray[np.int32] | None]  # (packets or PCM, packet lengths)


@dataclass
class Chunk:
    first_frame: int
    frames: int
    legs: list[LegData]
    live: bool
    pre_skip: int = 0


def durable_frames(vault: Vault, ingestor: Ingestor | None, call_id: str, *, tenant: str) -> int:
    """Frames per leg: a sealed call's length, or what every leg has durable so far."""
    e = vault.get_call(call_id, tenant=tenant)
    if e.end_us:
        return (e.end_us - e.start_us) // FRAME_US
    live = ingestor.get(tenant, call_id) if ingestor is not None else None
    if live is not None:
        with live.changed:
            return min(live.durable, default=0)
    return min(vault.durable_frames(call_id, tenant=tenant), default=0)


def play(
    vault: Vault,
    ingestor: Ingestor | None,
    call_id: str,
    *,
    tenant: str = "default",
    from_ms: int = 0,
    to_ms: int | None = None,
    chunk: int = DEFAULT_CHUNK,
    follow: bool = False,
    pcm: bool = False,
    active: Callable[[], bool] = lambda: True,
) -> Iterator[Chunk]:
    if not 1 <= chunk <= 500:
        raise InputError(f"frames_per_chunk {chunk}: 1 to 500")
    if to_ms is not None and to_ms <= from_ms:
        raise InputError(f"to_ms {to_ms} is not after from_ms {from_ms}")
    e = vault.get_call(call_id, tenant=tenant)
    if e.state == "erased":
        raise VaultError(f"call {call_id} was erased: its audio is gone")
    start = from_ms // FRAME_MS
    stop = None if to_ms is None else -(-to_ms // FRAME_MS)
    live = ingestor.get(tenant, call_id) if ingestor is not None else None
    being_raw = live is not None and live.settings.store_codec == "g711"
    if vault.is_raw(e) or being_raw:  # peak mode, not compacted yet: G.711 records
        raw = _opus_chunks(
            vault, ingestor, call_id, tenant, start, stop, chunk, follow, active, flush=False
        )
        laws = vault.leg_laws(e)
        if live is not None and live.pipes is not None:  # being recorded: its legs' laws
            laws = [p.law if p.law is not None else laws[g] for g, p in enumerate(live.pipes)]
        yield from (_g711_pcm_chunks(raw, laws) if pcm else _encoded_chunks(raw, laws))
        return
    if pcm:
        warm = max(0, start - WARMUP_FRAMES)
        packets = _opus_chunks(vault, ingestor, call_id, tenant, warm, stop, chunk, follow, active)
        yield from _pcm_chunks(packets, warm, start, chunk, len(e.legs))
        return
    packets = _opus_chunks(vault, ingestor, call_id, tenant, start, stop, chunk, follow, active)
    first = True
    for c in packets:
        c.pre_skip = OPUS_PRE_SKIP_48K if first else 0
        first = False
        yield c


def _opus_chunks(
    vault: Vault,
    ingestor: Ingestor | None,
    call_id: str,
    tenant: str,
    start: int,
    stop: int | None,
    chunk: int,
    follow: bool,
    active: Callable[[], bool],
    *,
    flush: bool = True,
) -> Iterator[Chunk]:
    pos = start
    while active():
        e = vault.get_call(call_id, tenant=tenant)
        sealed = e.state != "open"
        avail = durable_frames(vault, ingestor, call_id, tenant=tenant)
        if sealed and flush:
            avail += 1  # the encoder's flush packet (frame = length) goes too: PCM needs it
        end = avail if stop is None else min(avail, stop + (1 if sealed and flush else 0))
        if pos < end:
            for first, legs in vault.iter_frames(
                call_id, tenant=tenant, from_frame=pos, to_frame=end, chunk=chunk
            ):
                n = len(legs[0][1])
                yield Chunk(first, n, list(legs), not sealed)
                pos = first + n
        if sealed or not follow or (stop is not None and pos >= stop):
            return
        live = ingestor.get(tenant, call_id) if ingestor is not None else None
        if live is None:
            time.sleep(0.2)  # open, but no stream is recording it right now
            continue
        _wait_durable(live, pos)


def _g711_pcm_chunks(chunks: Iterator[Chunk], laws: list[int]) -> Iterator[Chunk]:
    """A raw call's G.711 chunks as PCM: decoded exactly, no codec delay."""
    from callvault import _g711

    for c in chunks:
        out: list[LegData] = []
        for g, (data, _lengths) in enumerate(c.legs):
            out.append((_g711.decode(data, laws[g]).astype("<i2").tobytes(), None))
        yield Chunk(c.first_frame, c.frames, out, c.live)


def _encoded_chunks(chunks: Iterator[Chunk], laws: list[int]) -> Iterator[Chunk]:
    """A raw call's G.711 chunks as Opus packets, encoded on the fly at the product's
    settings from the first frame played (the first chunk carries the pre-skip);
    after a sealed call's last frame, the encoders' flush packets."""
    from callvault import _g711
    from callvault.media.pipeline import LegPipeline, Settings

    pipes = [LegPipeline("leg", "play", Settings()) for _ in laws]
    first = True
    last: Chunk | None = None
    for c in chunks:
        legs: list[LegData] = []
        for g, (data, _lengths) in enumerate(c.legs):
            pipes[g].push_pcm(_g711.decode(data, laws[g]))
            r = pipes[g].result
            run = r.opus_run()
            r.packets.clear()
            legs.append(run.astuple())
        yield Chunk(c.first_frame, c.frames, legs, c.live, OPUS_PRE_SKIP_48K if first else 0)
        first = False
        last = c
    if last is not None and not last.live:
        legs = []
        for p in pipes:
            p.finish()
            legs.append(p.result.opus_run().astuple())
        yield Chunk(last.first_frame + last.frames, 1, legs, False)


def _wait_durable(live: LiveCall, pos: int, timeout: float = 1.0) -> None:
    """Until the call is sealed or every leg is durable beyond ``pos`` (or timeout)."""

    def ready() -> bool:
        return live.sealed is not None or min(live.durable, default=0) > pos

    with live.changed:
        live.changed.wait_for(ready, timeout=timeout)


def _pcm_chunks(
    chunks: Iterator[Chunk], decode_from: int, start: int, chunk: int, nlegs: int
) -> Iterator[Chunk]:
    """Decode Opus chunks to PCM on the timeline: the decoder's output lags its
    input by the encoder lookahead, so timeline sample t is decoded sample
    t + OPUS_DELAY_SAMPLES (counted from the first packet decoded); a frame goes
    out once all of it is decoded, so a sealed call's last frame waits for the
    flush packet."""
    from callvault import _opus

    decoders = [_opus.Decoder(sample_rate=SAMPLE_RATE) for _ in range(nlegs)]
    bufs: list[npt.NDArray[np.int16]] = [np.zeros(0, np.int16) for _ in range(nlegs)]
    t0 = decode_from * FRAME_SAMPLES - OPUS_DELAY_SAMPLES  # timeline sample of bufs[g][0]
    pos = start
    for c in chunks:
        for g, (data, lengths) in enumerate(c.legs):
            assert lengths is not None  # Opus chunks carry their packet lengths
            out = decoders[g].decode_frames(data, lengths).reshape(-1)
            bufs[g] = np.concatenate([bufs[g], out])
        drop = max(0, pos * FRAME_SAMPLES - t0)
        whole = (len(bufs[0]) - drop) // FRAME_SAMPLES
        while whole > 0:
            n = min(whole, chunk)
            lo, hi = drop, drop + n * FRAME_SAMPLES
            yield Chunk(
                pos,
                n,
                [(bufs[g][lo:hi].astype("<i2").tobytes(), None) for g in range(nlegs)],
                c.live,
            )
            pos += n
            whole -= n
            drop = hi
        bufs = [b[drop:] for b in bufs]
        t0 += drop
