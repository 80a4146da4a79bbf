"""Peak mode in the vault: G.711 records, compaction to Opus (lineage, index, bundles)
on a real vault with real libopus (docs/format.md 8.5, 8.7, 8.10)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from callvault import _g711
from callvault.integrity.bundle import verify_bundle
from callvault.media import ogg
from callvault.media.packets import PacketRun
from callvault.media.pipeline import Settings
from callvault.store import records as rec
from callvault.vault import Vault, VaultError
from callvault.vault.bundle import write_bundle
from callvault.vault.compact import compact_call, encode_g711_legs
from tests.rtpfeed import write_two_law_capture

G711 = Settings(store_codec="g711")


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_two_law_capture(tmp_path_factory.mktemp("cap") / "call.pcap", 3.0)


def _packets(path: Path) -> tuple[bytes, list[int]]:
    data, lengths = ogg.OggOpusReader(io.BytesIO(path.read_bytes())).packets_data()
    return bytes(data), list(lengths)


def test_raw_call_is_g711_in_the_wire_law_of_each_leg(tmp_path: Path, capture: Path) -> None:
    v = Vault.open(tmp_path / "data")
    e, _ = v.import_call("r", [str(capture)], settings=G711)
    assert e.storage == "raw" and e.state == "sealed"
    assert v.manifest("r")["codec"] == {"name": "g711", "sample_rate": 8000, "frame_ms": 20}
    assert v.leg_laws(e) == [_g711.PCMU, _g711.PCMA]  # agent PCMU, customer PCMA on the wire
    frames = v.manifest("r")["frames"]
    key = v.call_keys.get("default", "r")
    for _, _entry, body in v.stored_records("r"):
        b = rec.parse(rec.AUDIO, body)
        assert b.codec == (rec.CODEC_PCMU if b.leg == 0 else rec.CODEC_PCMA)
        lengths, _ = b.decrypt_audio(key)
        assert set(lengths.tolist()) == {rec.G711_FRAME_BYTES}  # no Opus flush packet
    pcm = v.read_pcm("r", to_frame=frames)
    assert [len(p) for p in pcm] == [frames * 160] * 2
    assert v.verify_call("r") == []
    # the WAV export is the stored G.711 decoded
    v.export("r", tmp_path / "r.wav")
    import wave

    with wave.open(str(tmp_path / "r.wav")) as w:
        got = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    assert np.array_equal(got[:, 0], pcm[0]) and np.array_equal(got[:, 1], pcm[1])
    v.close()


def test_compaction_lineage_index_and_reindex(tmp_path: Path, capture: Path) -> None:
    v = Vault.open(tmp_path / "data")
    v.import_call("r", [str(capture)], settings=G711)
    v.import_call("o", [str(capture)])  # an Opus call beside it stays as it is
    before = v.get_call("r")
    v.export("r", tmp_path / "raw.ogg")  # encoded on the fly, as the compactor will
    log_size = v.log_size()
    res = compact_call(v, "r")
    e = v.get_call("r")
    assert e.storage == "compacted" and e.state == "sealed"
    # the seal, the raw chain it covers, and the manifest are untouched
    assert (e.seal, e.chain_head, e.records, e.log_index) == (
        before.seal,
        before.chain_head,
        before.records,
        before.log_index,
    )
    assert res.first_index == before.records and res.opus_records > 0
    assert e.transcode_log_index == log_size == res.log_index  # one new leaf
    # the index references only the Opus records (the raw ones are dead)
    idx = [i for i, _ in v.index.records("default", "r")]
    assert idx == list(range(res.first_index, res.first_index + res.opus_records))
    key = v.call_keys.get("default", "r")
    for _, _entry, body in v.stored_records("r"):
        assert rec.parse(rec.AUDIO, body).codec == rec.CODEC_OPUS
        rec.parse(rec.AUDIO, body).decrypt_audio(key)
    # the transcoding document commits to both chains and the encoder settings
    tb, doc = v.transcoding(e)
    assert doc["raw"] == {"count": before.records, "head": before.chain_head, "seal": before.seal}
    assert doc["encoder"]["complexity"] == Settings().complexity
    assert doc["encoder"]["bitrate"] == Settings().bitrate
    assert v.verify_call("r") == [] and v.verify_call("o") == []
    # the export after compaction is the stored Opus: the same packets as encoded
    # on the fly from the raw call before
    v.export("r", tmp_path / "compacted.ogg")
    assert _packets(tmp_path / "compacted.ogg") == _packets(tmp_path / "raw.ogg")
    with pytest.raises(VaultError, match="nothing to compact"):
        compact_call(v, "r")
    entry = v.get_call("r")
    v.close()
    # the index rebuilt from the segments and the log is the same (TRANSCODE record)
    v = Vault.open(tmp_path / "data", rebuild_index=True)
    assert v.get_call("r") == entry
    assert [i for i, _ in v.index.records("default", "r")] == idx
    assert v.log_size() == log_size + 1  # the leaf was found, not appended again
    assert v.verify_call("r") == []
    v.close()


def test_a_cut_short_attempt_never_reuses_a_chain_index(tmp_path: Path, capture: Path) -> None:
    """Records of an attempt that did not finish keep their chain indexes (the data
    key's nonces): the next attempt starts past them, and its TRANSCODE drops them."""
    v = Vault.open(tmp_path / "data")
    v.import_call("r", [str(capture)], settings=G711)
    raw = v.get_call("r").records

    class Stop(Exception):
        pass

    def stop_at(step: str) -> None:
        if step == "opus-written":
            raise Stop

    with pytest.raises(Stop):
        compact_call(v, "r", step=stop_at)
    e = v.get_call("r")
    assert e.storage == "raw" and e.compact_next > raw
    # still the raw call: reading, verify and export see only its raw records
    assert [i for i, _, _ in v.stored_records("r")] == list(range(raw))
    assert v.verify_call("r") == []
    res = compact_call(v, "r")
    assert res.first_index == e.compact_next
    assert [i for i, _ in v.index.records("default", "r")][0] == e.compact_next
    assert v.verify_call("r") == []
    v.close()


def test_bundles_before_and_after_compaction(tmp_path: Path, capture: Path) -> None:
    v = Vault.open(tmp_path / "data")
    v.import_call("r", [str(capture)], settings=G711)
    key = v.signer.verifier_key()
    raw_b = write_bundle(v, "r", tmp_path / "raw")
    compact_call(v, "r")
    comp_b = write_bundle(v, "r", tmp_path / "comp")
    v.close()
    assert (raw_b / "call.wav").exists() and not (raw_b / "call.ogg").exists()
    r = verify_bundle(raw_b, public_key=key)
    assert r.ok, r.failures
    r = verify_bundle(comp_b, public_key=key)
    assert r.ok, r.failures
    assert any("transcoding is leaf" in c for c in r.checked)
    assert any("Opus chain" in c for c in r.checked)
    # tampering with the lineage is caught: the settings, the raw head, a record
    doc = json.loads((comp_b / "transcode.json").read_text())
    doc["encoder"]["complexity"] = 0
    t = comp_b / "transcode.json"
    orig = t.read_bytes()
    t.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")))
    r = verify_bundle(comp_b, public_key=key)
    assert not r.ok and any("transcoding leaf" in f for f in r.failures)
    t.write_bytes(orig)
    first = sorted((comp_b / "records").iterdir())[0]
    body = bytearray(first.read_bytes())
    body[-1] ^= 1
    first.write_bytes(bytes(body))
    r = verify_bundle(comp_b, public_key=key)
    assert not r.ok and any("chain" in f for f in r.failures)
    # a raw bundle's WAV is checked sample for sample
    w = raw_b / "call.wav"
    b = bytearray(w.read_bytes())
    b[-1] ^= 0x40
    w.write_bytes(bytes(b))
    r = verify_bundle(raw_b, public_key=key)
    assert not r.ok and any("call.wav" in f for f in r.failures)


def test_erased_raw_call_is_not_compacted(tmp_path: Path, capture: Path) -> None:
    v = Vault.open(tmp_path / "data")
    v.import_call("r", [str(capture)], settings=G711)
    v.erase("r", reason="customer asked")
    with pytest.raises(VaultError, match="nothing to compact"):
        compact_call(v, "r")
    v.close()


def test_worker_encoding_equals_in_process(capture: Path, tmp_path: Path) -> None:
    """What a worker process runs is a pure function of the G.711 and the settings."""
    v = Vault.open(tmp_path / "data")
    e, _ = v.import_call("r", [str(capture)], settings=G711)
    legs = v.read_g711(e)
    a = encode_g711_legs([x for x, _ in legs], [d for _, d in legs], Settings())
    b = encode_g711_legs([x for x, _ in legs], [d for _, d in legs], Settings())
    assert all(x[0] == y[0] and np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    v.close()


def test_compacted_call_is_the_opus_call_of_the_same_packets(tmp_path: Path, capture: Path) -> None:
    """Frames that were wire audio are stored exactly (G.711 decoded, then encoded in the
    same law again, is exact), so compaction codes them as live Opus ingest does: the
    product's quality, packet for packet. Frames the call filled (the silence before a
    leg's first packet and after its last, concealment) are requantized to the leg's
    law: A-law has no zero (silence becomes +-8, -72 dBFS), so those packets differ on
    the PCMA leg; on the PCMU leg (silence is exact) every packet is the same."""
    v = Vault.open(tmp_path / "data")
    v.import_call("raw", [str(capture)], settings=G711)
    v.import_call("opus", [str(capture)])
    compact_call(v, "raw")
    got, want = v.read_packets("raw"), v.read_packets("opus")
    assert got[0][0] == want[0][0] and np.array_equal(got[0][1], want[0][1])  # PCMU leg
    a, b = PacketRun(*got[1]), PacketRun(*want[1])
    differ = [i for i in range(len(b)) if a[i] != b[i]]
    assert len(a) == len(b) and len(differ) <= 10  # the filled edges of the PCMA leg only
    summary = v.summary("opus")["legs"][1]
    assert summary["lost"] == 0
    v.close()


def test_compactor_survives_a_killed_worker(tmp_path: Path, capture: Path) -> None:
    """The server's Compactor: worker processes encode, this process appends. A worker
    killed (SIGKILL) breaks the pool: a new one is made and the call compacted."""
    import os
    import signal
    import time

    from callvault.vault.compact import Compactor

    v = Vault.open(tmp_path / "data")
    v.import_call("a", [str(capture)], settings=G711)
    c = Compactor(v, workers=1)
    try:
        c.start()
        assert c.wait_idle(120) and v.get_call("a").storage == "compacted"
        for pid in list(c._procs._processes):  # noqa: SLF001 (the pool's worker pids)
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        v.import_call("b", [str(capture)], settings=G711)  # the seal queues it
        assert c.wait_idle(120)
        assert v.get_call("b").storage == "compacted" and v.verify_call("b") == []
        assert c.failed == 0 and c.compacted == 2
        assert ("default", "b") in c._retried  # noqa: SLF001 (it met the broken pool)
    finally:
        c.stop()
        v.close()


def test_erasure_during_compaction_drops_the_compaction(tmp_path: Path, capture: Path) -> None:
    """A call erased between its Opus records and its TRANSCODE record: the compaction's
    records are dead (ignored when indexed), the erasure stands, the vault goes on."""
    v = Vault.open(tmp_path / "data")
    v.import_call("r", [str(capture)], settings=G711)

    def erase_now(step: str) -> None:
        if step == "opus-written":
            v.erase("r", reason="customer asked")

    with pytest.raises(VaultError, match="dropped"):
        compact_call(v, "r", step=erase_now)
    e = v.get_call("r")
    assert e.state == "erased" and e.storage == "raw" and e.transcode_log_index == -1
    assert v.verify_call("r") == []
    v.import_call("after", [str(capture)], settings=G711)  # the writer goes on
    compact_call(v, "after")
    assert v.verify_call("after") == []
    entry = v.get_call("r")
    v.close()
    v = Vault.open(tmp_path / "data", rebuild_index=True)
    assert v.get_call("r") == entry
    v.close()
