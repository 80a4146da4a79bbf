"""Export: a call (or a time range of it) as dual-track Ogg Opus, the stored
packets without re-encoding, or as WAV (decoded). The bundle is vault/bundle.py."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from callvault import _opus
from callvault.errors import InputError
from callvault.media import ogg, wav
from callvault.timeline import (
    FRAME_SAMPLES,
    FRAMES_PER_SECOND,
    OPUS_DELAY_SAMPLES,
    OPUS_PRE_SKIP_48K,
    SAMPLE_RATE,
    frames_seconds,
)
from callvault.vault.reading import Reading


class Export(Reading):
    """The Vault's export verb."""

    def export(
        self,
        call_id: str,
        out: str | os.PathLike[str],
        *,
        tenant: str = "default",
        from_s: float = 0.0,
        to_s: float | None = None,
    ) -> int:
        """Write the call (or a time range) as dual-track Ogg Opus (no re-encoding) or WAV."""
        m = self.manifest(call_id, tenant=tenant)
        frames = int(m["frames"])
        lo = max(0, int(from_s * FRAMES_PER_SECOND))
        hi = frames if to_s is None else min(frames, int(np.ceil(to_s * FRAMES_PER_SECOND)))
        if hi <= lo:
            raise InputError(
                f"--from {from_s} / --to {to_s}: empty range of a "
                f"{frames_seconds(frames):.2f} s call"
            )
        legs = self.read_packets(call_id, tenant=tenant, from_frame=lo, to_frame=hi + 1)
        suffix = Path(out).suffix.lower()
        if suffix == ".wav":
            pcm = []
            for data, lengths in legs:
                dec = _opus.Decoder(sample_rate=SAMPLE_RATE).decode_frames(data, lengths)
                lag = OPUS_DELAY_SAMPLES  # decoded audio runs this far behind the timeline
                pcm.append(dec.reshape(-1)[lag : lag + (hi - lo) * FRAME_SAMPLES])
            return wav.write(Path(out), pcm)
        if suffix not in (".ogg", ".opus"):
            raise InputError(f"output {out}: name it .ogg or .wav")
        ogg.write_call(
            out,
            legs,
            pre_skip=OPUS_PRE_SKIP_48K,
            frames=hi - lo,
            comments=ogg.channel_comments(m["legs"]),
        )
        return Path(out).stat().st_size
