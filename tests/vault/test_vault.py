"""callvault.Vault end to end on a real data directory (real RocksDB, real files)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from callvault.errors import InputError
from callvault.integrity import checkpoint
from callvault.integrity.bundle import verify_bundle
from callvault.media import sample
from callvault.media.ogg import OggOpusReader
from callvault.store.index import call_key
from callvault.vault import CallNotFound, Vault, VaultError
from callvault.vault.bundle import write_bundle


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 s, both legs, two RFC 4733 digits typed by the agent at 2 s."""
    p = tmp_path_factory.mktemp("cap") / "call.pcap"
    agent, customer = sample.dialogue(6.0)
    sample.write_capture(
        p,
        [
            (
                agent,
                sample.LegPlan(
                    ssrc=1,
                    dtmf=((2.0, "7"), (2.5, "3")),
                    src=("10.0.0.1", 4000),
                    dst=("10.0.0.2", 5000),
                ),
            ),
            (
                customer,
                sample.LegPlan(law=8, ssrc=2, src=("10.0.0.2", 5002), dst=("10.0.0.1", 4002)),
            ),
        ],
    )
    return p


@pytest.fixture
def vault(tmp_path: Path, capture: Path) -> Vault:
    v = Vault.open(tmp_path / "data")
    v.import_call(
        "c1",
        [str(capture)],
        agent="ann",
        skill_group="billing",
        tags=["vip"],
        customer_number="+15551234567",
        direction="inbound",
    )
    return v


def test_import_seals_and_indexes(vault: Vault) -> None:
    e = vault.get_call("c1")
    assert e.state == "sealed" and e.seal and e.log_index == 0
    m = vault.manifest("c1")
    # 6 s of audio, placed on the call timeline to the frame
    assert m["frames"] in (300, 301) and m["legs"] == ["agent", "customer"]
    # each leg: its frames plus the encoder's flush packet, in records of 50 frames
    assert e.records == 2 * -(-(m["frames"] + 1) // 50)
    assert [leg["leg"] for leg in vault.summary("c1")["legs"]] == ["agent", "customer"]
    assert "summary" not in m  # sealed: DTMF digits may be card numbers
    assert vault.customer_number("c1") == "+15551234567"
    vault.close()


@pytest.mark.parametrize(
    ("lo", "hi", "chunk"),
    [(0, None, 50), (0, None, 7), (13, 77, 1), (49, 51, 50), (40, 260, 123), (290, None, 500)],
)
def test_iter_frames_chunks_equal_read_packets(
    vault: Vault, lo: int, hi: int | None, chunk: int
) -> None:
    """Play's reader (chunks across record boundaries, without per-packet objects)
    gives exactly what read_packets gives for the same range, in chunk-sized pieces."""
    end = vault.manifest("c1")["frames"] + 1 if hi is None else hi
    chunks = list(vault.iter_frames("c1", from_frame=lo, to_frame=end, chunk=chunk))
    assert [c[0] for c in chunks] == list(range(lo, end, chunk))
    assert all(len(c[1][0][1]) == min(chunk, end - c[0]) for c in chunks)
    want = vault.read_packets("c1", from_frame=lo, to_frame=end)
    for g in (0, 1):
        assert b"".join(c[1][g][0] for c in chunks) == want[g][0]
        assert np.concatenate([c[1][g][1] for c in chunks]).tolist() == want[g][1].tolist()
    vault.close()


def test_capture_time_is_the_call_start(vault: Vault, capture: Path) -> None:
    from callvault.media.capture import read_capture

    first = min(f.first_sample_us() for f in read_capture(capture).flows)
    assert vault.get_call("c1").start_us == first
    vault.close()


def test_search(vault: Vault, capture: Path) -> None:
    vault.import_call("c2", [str(capture)], agent="bob", tags=["vip", "late"], start_us=10)
    assert [e.call_id for e in vault.list_calls(agent="ann")] == ["c1"]
    assert [e.call_id for e in vault.list_calls(tag="vip")] == ["c2", "c1"]
    assert [e.call_id for e in vault.list_calls(since_us=0, until_us=100)] == ["c2"]
    assert vault.list_calls(tenant="other") == []
    vault.close()


def test_export_ogg_is_the_transcode(vault: Vault, tmp_path: Path, capture: Path) -> None:
    from callvault.cli import transcode
    from callvault.media.pipeline import Settings

    vault.export("c1", tmp_path / "v.ogg")
    transcode([str(capture)], str(tmp_path / "t.ogg"), Settings())
    a, b = OggOpusReader(tmp_path / "v.ogg"), OggOpusReader(tmp_path / "t.ogg")
    assert a.packets_data()[0] == b.packets_data()[0]  # stored packets, no re-encoding
    info = subprocess.run(["opusinfo", str(tmp_path / "v.ogg")], capture_output=True, text=True)
    assert info.returncode == 0 and "WARNING" not in info.stdout
    vault.close()


def test_export_time_range(vault: Vault, tmp_path: Path) -> None:
    vault.export("c1", tmp_path / "r.ogg", from_s=1.0, to_s=2.5)
    r = OggOpusReader(tmp_path / "r.ogg")
    assert abs(r.duration - 1.5) < 1e-9
    vault.export("c1", tmp_path / "r.wav", from_s=1.0, to_s=2.5)
    from callvault.media.wav import read_mono

    assert len(read_mono(tmp_path / "r.wav")) == 12_000
    with pytest.raises(InputError, match="empty range"):
        vault.export("c1", tmp_path / "e.ogg", from_s=9, to_s=10)
    vault.close()


def test_verify_clean_and_after_reopen(vault: Vault, tmp_path: Path) -> None:
    assert vault.verify_call("c1") == [] and vault.verify_all() == []
    vault.close()
    with Vault.open(tmp_path / "data") as v:
        assert v.report.truncated is None and v.report.damage == []
        assert v.verify_all() == []


def test_unknown_call(vault: Vault) -> None:
    with pytest.raises(CallNotFound):
        vault.get_call("nope")
    assert "no call nope" in str(vault.verify_call("nope")[0])
    vault.close()


def test_duplicate_call_id_refused(vault: Vault, capture: Path) -> None:
    with pytest.raises(InputError, match="already exists"):
        vault.import_call("c1", [str(capture)])
    vault.close()


def test_one_process_per_data_directory(vault: Vault, tmp_path: Path) -> None:
    with pytest.raises(VaultError, match="open in another process"):
        Vault.open(tmp_path / "data")
    vault.close()


def test_erase_shreds_and_keeps_everything_else_verifiable(
    vault: Vault, capture: Path, tmp_path: Path
) -> None:
    vault.import_call("c2", [str(capture)])
    vault.erase("c1", reason="retention")
    e = vault.get_call("c1")
    assert e.state == "erased"
    with pytest.raises(VaultError, match="destroyed"):
        vault.read_packets("c1")
    assert vault.verify_all() == []  # c1's chain (ciphertext) and c2 still verify
    with pytest.raises(VaultError, match="already erased"):
        vault.erase("c1", reason="again")
    size = vault.log.size
    assert size == 3  # seal c1, seal c2, erasure c1
    vault.close()
    with Vault.open(tmp_path / "data") as v:
        assert v.get_call("c1").state == "erased" and v.log.size == size


def test_checkpoints_are_signed_and_consistent(vault: Vault, capture: Path) -> None:
    key = vault.signer.verifier_key()
    first = checkpoint.verify(vault.checkpoint(), key)
    vault.import_call("c2", [str(capture)])
    second = checkpoint.verify(vault.checkpoint(), key)
    assert (first.size, second.size) == (1, 2)
    from callvault.integrity import merkle

    merkle.verify_consistency(1, 2, first.root, second.root, vault.log.consistency_proof(1, 2))
    vault.close()


def test_reindex_rebuilds_the_same_index(vault: Vault, capture: Path) -> None:
    vault.import_call("c2", [str(capture)], agent="bob")
    before = [
        (e.call_id, e.records, e.chain_head, e.seal, e.log_index, e.agent)
        for e in vault.list_calls()
    ]
    n = vault.reindex()
    after = [
        (e.call_id, e.records, e.chain_head, e.seal, e.log_index, e.agent)
        for e in vault.list_calls()
    ]
    assert n >= 2 * (1 + 14 + 1) and before == after and vault.log.size == 2
    assert vault.verify_all() == []
    vault.close()


def test_rotate_key_rewraps_without_rewriting_audio(vault: Vault, tmp_path: Path) -> None:
    seg = {p.name: p.read_bytes() for p in (tmp_path / "data" / "segments").iterdir()}
    before = vault.read_packets("c1")
    new, n = vault.rotate_key()
    assert n == 1 and new == 2
    assert [v.state.name for v in vault.keys.versions()] == ["RETIRED", "ACTIVE"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "data" / "segments").iterdir()} == seg
    after = vault.read_packets("c1")
    assert all(a[0] == b[0] for a, b in zip(before, after, strict=True))
    vault.close()


def test_no_plaintext_customer_number_or_audio_under_data(vault: Vault, tmp_path: Path) -> None:
    digits = [e["digit"] for leg in vault.summary("c1")["legs"] for e in leg["telephone_events"]]
    assert digits == ["7", "3"]  # the agent typed two RFC 4733 digits ...
    data, lengths = vault.read_packets("c1")[0]
    offs = np.concatenate([[0], np.cumsum(lengths)])
    runs = {data[offs[i] : offs[i] + 8] for i in range(0, len(lengths), 7) if lengths[i] >= 8}
    vault.close()
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert b"5551234567" not in blob, path
            assert b'"digit"' not in blob, path  # ... which are nowhere in plaintext
            assert not any(r in blob for r in runs), path


def test_bundle_verifies_offline(vault: Vault, tmp_path: Path) -> None:
    d = write_bundle(vault, "c1", tmp_path / "bundle")
    key = vault.signer.verifier_key()
    vault.close()
    shutil.rmtree(tmp_path / "data")  # nothing but the bundle
    r = verify_bundle(d, public_key=key)
    assert r.ok, r.failures
    assert any("call.ogg holds exactly the sealed packets" in c for c in r.checked)


BUNDLE_TAMPERS = {
    "flipped-record-byte": lambda d: _flip(d / "records" / "000003", 40),
    "deleted-record": lambda d: (d / "records" / "000005").unlink(),
    "reordered-records": lambda d: _swap(d / "records" / "000002", d / "records" / "000004"),
    "modified-manifest": lambda d: _replace(d / "manifest.json", b'"ann"', b'"eve"'),
    "wrong-seal-in-chain": lambda d: _replace(d / "chain.json", b'"seal": "', b'"seal": "00'),
    "modified-checkpoint-root": lambda d: _edit_checkpoint_root(d),
    "truncated-inclusion-proof": lambda d: _drop_proof(d),
    "other-call-audio-in-ogg": lambda d: _flip(d / "call.ogg", 400),
    "foreign-public-key": None,  # checked with a key the vault never had
}


def _flip(p: Path, at: int) -> None:
    b = bytearray(p.read_bytes())
    b[at] ^= 0x01
    p.write_bytes(bytes(b))


def _swap(a: Path, b: Path) -> None:
    x, y = a.read_bytes(), b.read_bytes()
    a.write_bytes(y)
    b.write_bytes(x)


def _replace(p: Path, old: bytes, new: bytes) -> None:
    raw = p.read_bytes()
    assert old in raw
    p.write_bytes(raw.replace(old, new, 1))


def _edit_checkpoint_root(d: Path) -> None:
    lines = (d / "checkpoint.txt").read_text().split("\n")
    lines[2] = ("A" if lines[2][0] != "A" else "B") + lines[2][1:]
    (d / "checkpoint.txt").write_text("\n".join(lines))


def _drop_proof(d: Path) -> None:
    doc = json.loads((d / "proof.json").read_text())
    doc["inclusion"] = doc["inclusion"][:-1] if doc["inclusion"] else ["00" * 32]
    (d / "proof.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("tamper", sorted(BUNDLE_TAMPERS))
def test_bundle_tamper_is_detected(
    tamper: str, vault: Vault, capture: Path, tmp_path: Path
) -> None:
    vault.import_call("c2", [str(capture)], agent="zed")  # so the proof is not empty
    d = write_bundle(vault, "c1", tmp_path / "bundle")
    key = vault.signer.verifier_key()
    vault.close()
    fn = BUNDLE_TAMPERS[tamper]
    if fn is None:
        other = checkpoint.Signer.open(tmp_path / "otherkey", "callvault").verifier_key()
        r = verify_bundle(d, public_key=other)
    else:
        fn(d)
        r = verify_bundle(d, public_key=key)
    assert not r.ok, f"{tamper} went unnoticed"


def test_erasure_fields_are_the_vaults_not_the_users_extra(vault: Vault, capture: Path) -> None:
    vault.import_call("c2", [str(capture)], extra={"crm": "42"})
    vault.erase("c2", reason="retention")
    e = vault.get_call("c2")
    assert e.extra == {"crm": "42"}
    assert e.erase_reason == "retention" and e.erased_us > e.end_us > 0
    assert e.erase_log_index == 2 == vault.log.size - 1  # seal c1, seal c2, erasure c2
    assert e.manifest_ref is not None and vault.manifest("c2")["call_id"] == "c2"
    vault.close()


def test_reindex_rebuilds_the_same_entries(vault: Vault, capture: Path) -> None:
    vault.import_call("c2", [str(capture)], agent="bob", extra={"crm": "42"})
    vault.erase("c1", reason="retention")
    w = vault.open_call("c3", tags=["live"])  # still being recorded
    data, lengths = vault.read_packets("c2")[0]
    for f in w.append_leg(0, lengths, data):
        f.result()
    before = vault.list_calls()
    assert vault.reindex() > 0
    assert vault.list_calls() == before and len(before) == 3
    assert vault.verify_all() == []
    vault.close()


def test_an_index_written_by_the_previous_version_still_works(
    vault: Vault, capture: Path, tmp_path: Path
) -> None:
    """Entries packed the old way (the vault's values in extra) open, read, verify."""
    vault.import_call("c2", [str(capture)], extra={"crm": "42"})
    vault.erase("c2", reason="retention")
    now = {c: vault.get_call(c) for c in ("c1", "c2")}
    for e in now.values():
        doc = json.loads(e.pack())
        old_extra = dict(doc["extra"], manifest_ref=list(doc.pop("manifest_ref")))
        erase = {k: doc.pop(k) for k in ("erased_us", "erase_reason", "erase_log_index")}
        if e.state == "erased":
            old_extra.update(erase)
        doc["extra"] = old_extra
        vault.index._views["calls"].put(
            call_key(e.tenant, e.call_id), json.dumps(doc, sort_keys=True).encode()
        )
    vault.close()
    with Vault.open(tmp_path / "data") as v:
        assert {c: v.get_call(c) for c in ("c1", "c2")} == now
        assert v.manifest("c1")["frames"] > 0 and v.verify_all() == []


def test_read_packets_per_leg_across_a_gap_and_an_empty_leg(vault: Vault) -> None:
    data, lengths = vault.read_packets("c1")[0]
    offs = np.concatenate([[0], np.cumsum(lengths)])
    w = vault.open_call("c4")
    futures = [
        w.append(0, lo, lengths[lo:hi], data[offs[lo] : offs[hi]])
        for lo, hi in ((0, 50), (50, 100), (150, 200))  # frames 100..149 never stored
    ]
    for f in futures:
        f.result()
    (got, got_lengths), (other, other_lengths) = vault.read_packets("c4", to_frame=1000)
    keep = np.r_[0:100, 150:200]
    assert got_lengths.tolist() == lengths[keep].tolist()
    assert got == b"".join(data[offs[i] : offs[i + 1]] for i in keep)
    assert (other, other_lengths.tolist()) == (b"", [])
    (part, part_lengths), _ = vault.read_packets("c4", from_frame=40, to_frame=160)
    assert part_lengths.tolist() == lengths[np.r_[40:100, 150:160]].tolist()
    # playback goes only as far as every leg has frames
    assert list(vault.iter_frames("c4", to_frame=1000)) == []
    vault.close()


def test_append_leg_cuts_records_of_frames_per_record(vault: Vault) -> None:
    """A whole leg appended at once becomes records of FRAMES_PER_RECORD frames (the
    last one shorter) that read back as the packets given."""
    from callvault import timeline
    from callvault import vault as vault_pkg

    assert vault_pkg.FRAMES_PER_RECORD == timeline.FRAMES_PER_RECORD == 50
    assert vault_pkg.PRE_SKIP == timeline.OPUS_PRE_SKIP_48K == 312
    data, lengths = vault.read_packets("c1", to_frame=120)[0]
    w = vault.open_call("c5", legs=["agent"])
    for f in w.append_leg(0, lengths, data, first_frame=10):
        f.result()
    spans = [(r.first_frame, r.frames) for _, r in vault.index.records("default", "c5")]
    assert spans == [(10, 50), (60, 50), (110, 20)]
    got, got_lengths = vault.read_packets("c5", from_frame=10, to_frame=130)[0]
    assert (got, got_lengths.tolist()) == (data, lengths.tolist())
    vault.close()
