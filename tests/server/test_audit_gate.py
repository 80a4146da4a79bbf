"""Every access to audio is audited (docs/access.md "Audit trail"): while the trail
cannot be written, a real server refuses Play, Export and GetBundle (UNAVAILABLE,
saying why) and goes on serving metadata; once an entry is written again, audio is
served again. The failure is a real one: the trail's descriptor swapped for a
read-only descriptor of the same file, so every append fails with EBADF. (The SDK
retries UNAVAILABLE, so each refused call is several refusals on the server.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from callvault_client import Client
from callvault_client.errors import Unavailable

from callvault.media import sample
from callvault.server.app import Server
from callvault.vault import Vault


def test_audio_waits_for_the_audit_trail(tmp_path: Path) -> None:
    capture = tmp_path / "call.pcap"
    sample.demo_capture(capture, seconds=2.0)
    with Vault.open(tmp_path / "data") as v:
        v.import_call("c1", [str(capture)])
    server = Server(Vault.open(tmp_path / "data"), "127.0.0.1:0")  # open mode
    server.start()
    trail = server.audit
    good = trail._fd
    broken = os.open(trail.directory / "trail", os.O_RDONLY)
    try:
        with Client(f"127.0.0.1:{server.port}") as c:
            assert len(list(c.play("c1"))) > 0
            before = trail.count
            trail._fd = broken  # the disk under the trail fails
            assert c.get_call("c1").call_id == "c1"  # metadata still served...
            assert trail.failing and trail.count == before  # ...but its entry is lost
            with pytest.raises(Unavailable, match="audit trail cannot be written"):
                list(c.play("c1"))
            with pytest.raises(Unavailable, match="audit trail cannot be written"):
                c.export("c1", tmp_path / "x.ogg")
            assert not (tmp_path / "x.ogg").exists()
            # the disk is back: the next refusal's entry is written, and the SDK's
            # retry of UNAVAILABLE gets the audio
            trail._fd = good
            assert len(list(c.play("c1"))) > 0
            assert not trail.failing
            assert c.export("c1", tmp_path / "y.ogg") > 1000
        done = [(e.doc["method"].rsplit("/", 1)[-1], e.doc["outcome"]) for e in trail.entries()]
        assert done[-3:] == [("Play", "UNAVAILABLE"), ("Play", "OK"), ("Export", "OK")]
    finally:
        trail._fd = good
        os.close(broken)
        server.stop()
