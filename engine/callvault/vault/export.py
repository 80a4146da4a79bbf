"""Export: a call (or a time range of it) as dual-track Ogg Opus, the stored
packets without re-encoding, or as WAV (decoded). The bundle is vault/bundle.py."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import numpy as np

from callvault import _opus
from callvault.errors import InputError
from callvault.media import ogg, wav
from callvault.store.index import CallEntry
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
        format: Literal["ogg", "wav"] | None = None,
        metadata: bool = False,
        customer_number: bool = False,
    ) -> int:
        """Write the call (or a time range) as dual-track Ogg Opus (no re-encoding) or WAV.

        ``format`` defaults from the name of ``out`` (.wav, .ogg or .opus). An Ogg
        export carries the channels' leg names and the call's identity
        (``ogg.identity_comments``) in its OpusTags; WAV has no such place. The
        call's metadata (``metadata``) and customer number (``customer_number``) are
        personal data: written as comments only when asked."""
        suffix = Path(out).suffix.lower()
        if format is None:
            if suffix == ".wav":
                format = "wav"
            elif suffix in (".ogg", ".opus"):
                format = "ogg"
            else:
                raise InputError(f"output {out}: name it .ogg or .wav")
        entry = self.get_call(call_id, tenant=tenant)
        m = self.manifest(call_id, tenant=tenant)
        frames = int(m["frames"])
        lo = max(0, int(from_s * FRAMES_PER_SECOND))
        hi = frames if to_s is None else min(frames, int(np.ceil(to_s * FRAMES_PER_SECOND)))
        if hi <= lo:
            raise InputError(
                f"--from {from_s} / --to {to_s}: empty range of a "
                f"{frames_seconds(frames):.2f} s call"
            )
        if self.is_raw(entry):
            # peak mode, not compacted yet: WAV is the G.711 decoded (exact); Ogg Opus is
            # encoded here, as the compactor will (the same settings, docs/format.md 8.10)
            from callvault.media.pipeline import Settings
            from callvault.vault.compact import encode_pcm_legs

            pcm = self.read_pcm(call_id, tenant=tenant, from_frame=lo, to_frame=hi)
            if format == "wav":
                return wav.write(Path(out), pcm)
            legs = encode_pcm_legs(pcm, Settings())
        else:
            legs = self.read_packets(call_id, tenant=tenant, from_frame=lo, to_frame=hi + 1)
        if format == "wav":
            pcm = []
            for data, lengths in legs:
                dec = _opus.Decoder(sample_rate=SAMPLE_RATE).decode_frames(data, lengths)
                lag = OPUS_DELAY_SAMPLES  # decoded audio runs this far behind the timeline
                pcm.append(dec.reshape(-1)[lag : lag + (hi - lo) * FRAME_SAMPLES])
            return wav.write(Path(out), pcm)
        ogg.write_call(
            out,
            legs,
            pre_skip=OPUS_PRE_SKIP_48K,
            frames=hi - lo,
            comments={
                **ogg.call_comments(m["legs"], call_id, tenant, entry.start_us),
                **(metadata_comments(entry) if metadata else {}),
                **(
                    {"CALLVAULT_CUSTOMER_NUMBER": self.customer_number(call_id, tenant=tenant)}
                    if customer_number
                    else {}
                ),
            },
        )
        return Path(out).stat().st_size


def metadata_comments(entry: CallEntry) -> dict[str, str]:
    """The call's metadata as OpusTags, asked for (docs/format.md section 6): the
    fields that have a value, tags as a comma list, each extra key as
    CALLVAULT_EXTRA_<KEY>."""
    fields = {
        "CALLVAULT_DIRECTION": entry.direction,
        "CALLVAULT_AGENT": entry.agent,
        "CALLVAULT_SKILL_GROUP": entry.skill_group,
        "CALLVAULT_TAGS": ",".join(entry.tags),
        **{
            "CALLVAULT_EXTRA_" + re.sub(r"[^A-Z0-9_]", "_", str(k).upper()): str(v)
            for k, v in sorted(entry.extra.items())
        },
    }
    return {k: v for k, v in fields.items() if v}
