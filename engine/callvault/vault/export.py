"""Export: a call (or a time range of it) as dual-track Ogg Opus, the stored
packets without re-encoding, or as WAV (decoded). The bundle is vault/bundle.py."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from callvault import _opus
from callvault.errors import InputError
from callvault.media import ogg, wav
from callvault.vault.common import PRE_SKIP
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
        lo = max(0, int(from_s * 50))
        hi = frames if to_s is None else min(frames, int(np.ceil(to_s * 50)))
        if hi <= lo:
            raise InputError(
                f"--from {from_s} / --to {to_s}: empty range of a {frames / 50:.2f} s call"
            )
        legs = self.read_packets(call_id, tenant=tenant, from_frame=lo, to_frame=hi + 1)
        suffix = Path(out).suffix.lower()
        if suffix == ".wav":
            pcm = []
            for data, lengths in legs:
                dec = _opus.Decoder(sample_rate=8000).decode_frames(data, lengths)
                pcm.append(dec.reshape(-1)[PRE_SKIP // 6 : PRE_SKIP // 6 + (hi - lo) * 160])
            return wav.write(Path(out), pcm)
        if suffix not in (".ogg", ".opus"):
            raise InputError(f"output {out}: name it .ogg or .wav")
        if len(legs) == 2:
            data, lengths = _opus.pack_multistream(legs[0][0], legs[0][1], legs[1][0], legs[1][1])
        else:
            data, lengths = legs[0]
        w = ogg.OggOpusWriter(
            out,
            channels=len(legs),
            pre_skip=PRE_SKIP,
            comments={f"CALLVAULT_CHANNEL_{i}": name for i, name in enumerate(m["legs"])},
        )
        w.write_packets(data, lengths)
        w.close(duration_48k=(hi - lo) * 960)
        return Path(out).stat().st_size
