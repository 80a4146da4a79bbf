"""The peak-mode settings of `callvault serve --config` (docs/server.md "Settings")."""

from __future__ import annotations

import pytest

from callvault.errors import InputError
from callvault.server.servicers import Config


def test_peak_settings_defaults_and_checks() -> None:
    c = Config()
    assert (c.ingest_codec, c.compact_workers, c.compact_paused) == ("opus", 1, False)
    assert c.auto_opus_calls > 0
    c = Config(ingest_codec="auto", auto_opus_calls=3, compact_workers=2, compact_paused=True)
    assert (c.ingest_codec, c.auto_opus_calls, c.compact_workers, c.compact_paused) == (
        "auto",
        3,
        2,
        True,
    )
    with pytest.raises(InputError, match="ingest_codec 'mp3'"):
        Config(ingest_codec="mp3")
    with pytest.raises(InputError, match="compact_workers"):
        Config(compact_workers=0)
