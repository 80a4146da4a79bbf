"""`callvault --server ADDR <verb>`: every remote verb as a real process against a real
server, printing what the local verb prints; a remote import equals a local one."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from callvault.media import sample, wav
from callvault.media.ogg import OggOpusReader
from tests.servers import CLI, Proc, run_cli, start_server

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Path]]:
    """A server with c1 (agent ann, tags vip,qa) and c2 imported remotely, and a local
    vault with the same capture imported as c1."""
    tmp = tmp_path_factory.mktemp("remote")
    run_cli("sample", "-o", str(tmp / "call.pcap"), "--seconds", "5")
    server = start_server(tmp / "server-data")
    s = ("--server", server.address)
    out = run_cli(
        *s,
        "import",
        "--call-id",
        "c1",
        "--meta",
        "agent=ann",
        "--meta",
        "tags=vip,qa",
        "--meta",
        "customer_number=+15557654321",
        str(tmp / "call.pcap"),
    ).stdout
    assert out.startswith("c1 sealed ") and len(out.split()[2]) == 64
    run_cli(
        *s,
        "import",
        "--call-id",
        "c2",
        "--meta",
        "agent=bob",
        "--meta",
        "start=2030-01-02T09:00:00",
        str(tmp / "call.pcap"),
    )
    run_cli(
        "--data",
        str(tmp / "local"),
        "import",
        "--call-id",
        "c1",
        "--meta",
        "agent=ann",
        str(tmp / "call.pcap"),
    )
    yield server, tmp
    server.stop()


def remote(server: Proc, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    return run_cli("--server", server.address, *args, ok=ok)


def test_ls_json_and_filters(setup: tuple[Proc, Path]) -> None:
    server, _ = setup
    rows = json.loads(remote(server, "ls", "--json").stdout)
    assert [r["call_id"] for r in rows] == ["c1", "c2"]
    assert rows[1]["start"] == "2030-01-02T09:00:00+00:00" and rows[0]["state"] == "sealed"
    assert 4.9 < rows[0]["seconds"] < 5.1 and rows[0]["tags"] == ["vip", "qa"]
    assert [
        r["call_id"] for r in json.loads(remote(server, "ls", "--agent", "bob", "--json").stdout)
    ] == ["c2"]
    since = json.loads(remote(server, "ls", "--since", "2030-01-01T00:00:00", "--json").stdout)
    assert [r["call_id"] for r in since] == ["c2"]
    text = remote(server, "ls").stdout.splitlines()
    assert text[0].startswith("c1 ") and "sealed" in text[0] and "vip,qa" in text[0]


def test_info_matches_local_info(setup: tuple[Proc, Path]) -> None:
    server, tmp = setup
    doc = json.loads(remote(server, "info", "c1", "--json").stdout)
    local = json.loads(run_cli("--data", str(tmp / "local"), "info", "c1", "--json").stdout)
    assert doc.keys() == local.keys() | {"customer_number"}
    assert doc["customer_number"] == "+15557654321"
    for k in ("start", "end", "legs", "records", "seconds"):
        assert doc[k] == local[k], k
    # the same RTP counters, gaps, DTMF and levels; only the source differs (a file
    # and flow locally, the Ingest stream on the server)
    for leg in doc["legs_detail"] + local["legs_detail"]:
        leg.pop("source")
    assert doc["legs_detail"] == local["legs_detail"]
    assert len(doc["chain_head"]) == 64 and len(doc["seal"]) == 64
    assert "legs_detail" not in remote(server, "info", "c1").stdout  # text form
    assert "  agent: " in remote(server, "info", "c1").stdout


def test_remote_import_equals_local_import(setup: tuple[Proc, Path], tmp_path: Path) -> None:
    server, tmp = setup
    out = remote(server, "export", "c1", "-o", str(tmp_path / "r.ogg")).stdout
    assert out == f"wrote {tmp_path / 'r.ogg'} ({(tmp_path / 'r.ogg').stat().st_size} bytes)\n"
    run_cli("--data", str(tmp / "local"), "export", "c1", "-o", str(tmp_path / "l.ogg"))
    r, lo = OggOpusReader(tmp_path / "r.ogg"), OggOpusReader(tmp_path / "l.ogg")
    rd, rl = r.packets_data()
    ld, ll = lo.packets_data()
    assert rd == ld and np.array_equal(rl, ll)  # the same Opus packets
    assert r.pre_skip == lo.pre_skip and r.duration_48k == lo.duration_48k
    remote(server, "export", "c1", "-o", str(tmp_path / "r.wav"))
    run_cli("--data", str(tmp / "local"), "export", "c1", "-o", str(tmp_path / "l.wav"))
    assert (tmp_path / "r.wav").read_bytes() == (tmp_path / "l.wav").read_bytes()


def test_export_range_and_bad_name(setup: tuple[Proc, Path], tmp_path: Path) -> None:
    server, _ = setup
    remote(server, "export", "c1", "-o", str(tmp_path / "p.wav"), "--from", "1", "--to", "3")
    assert (tmp_path / "p.wav").stat().st_size == 44 + 100 * 160 * 2 * 2
    p = remote(server, "export", "c1", "-o", str(tmp_path / "p.mp3"), ok=False)
    assert p.returncode == 1 and "name it .ogg or .wav" in p.stderr


def test_play_writes_what_export_writes(setup: tuple[Proc, Path], tmp_path: Path) -> None:
    """`play` (remote and local, to a WAV or raw on stdout) gives the export's samples."""
    server, tmp = setup
    remote(server, "export", "c1", "-o", str(tmp_path / "e.wav"))
    remote(server, "play", "c1", "-o", str(tmp_path / "p.wav"))
    exported = (tmp_path / "e.wav").read_bytes()
    assert (tmp_path / "p.wav").read_bytes() == exported
    raw = subprocess.run(
        [*CLI, "--server", server.address, "play", "c1"], capture_output=True, timeout=120
    ).stdout
    assert raw == exported[44:]  # interleaved s16le, the WAV's data chunk
    part = subprocess.run(
        [*CLI, "--server", server.address, "play", "c1", "--from", "1", "--to", "2"],
        capture_output=True,
        timeout=120,
    ).stdout
    # from the middle: the decoder warms up on the frames before (playback.WARMUP_FRAMES),
    # so the range is sample for sample what the whole call's decode has there
    assert part == exported[44 + 50 * 160 * 4 : 44 + 100 * 160 * 4]
    run_cli("--data", str(tmp / "local"), "export", "c1", "-o", str(tmp_path / "le.wav"))
    run_cli("--data", str(tmp / "local"), "play", "c1", "-o", str(tmp_path / "lp.wav"))
    assert (tmp_path / "lp.wav").read_bytes() == (tmp_path / "le.wav").read_bytes()
    p = run_cli("--data", str(tmp / "local"), "play", "c1", "--follow", ok=False)
    assert p.returncode == 1 and "needs --server" in p.stderr


def test_verify_and_bundle(setup: tuple[Proc, Path], tmp_path: Path) -> None:
    server, _ = setup
    assert remote(server, "verify", "c1", "c2").stdout == "OK: 2 call(s) verified\n"
    assert remote(server, "verify", "--all").stdout == "OK: every call and segment verified\n"
    p = remote(server, "verify", ok=False)
    assert p.returncode == 1 and "name the calls to verify, or --all" in p.stderr
    d = tmp_path / "bundle"
    out = remote(server, "bundle", "c1", "-o", str(d)).stdout
    assert out == f"wrote bundle {d}; check it anywhere with: callvault verify-bundle {d}\n"
    assert run_cli("verify-bundle", str(d)).stdout.endswith("bundle verifies\n")


def test_checkpoint_prints_a_signed_note(setup: tuple[Proc, Path]) -> None:
    from callvault.integrity import checkpoint

    server, _ = setup
    p = remote(server, "checkpoint", "--public-key")
    cp = checkpoint.verify(p.stdout, p.stderr.strip())
    assert cp.size >= 2


def test_unknown_call_is_a_clear_error(setup: tuple[Proc, Path]) -> None:
    server, _ = setup
    p = remote(server, "info", "nope", ok=False)
    assert p.returncode == 1 and p.stderr.startswith("callvault: error: ")
    assert "nope" in p.stderr


def test_import_wav_legs(setup: tuple[Proc, Path], tmp_path: Path) -> None:
    server, _ = setup
    agent, customer = sample.dialogue(3.0)
    wav.write(tmp_path / "a.wav", [agent])
    wav.write(tmp_path / "c.wav", [customer])
    out = remote(
        server,
        "import",
        "--call-id",
        "w1",
        "--meta",
        "start=2031-01-01T00:00:00",
        f"agent={tmp_path / 'a.wav'}",
        f"customer={tmp_path / 'c.wav'}",
    ).stdout
    assert out.startswith("w1 sealed ")
    doc = json.loads(remote(server, "info", "w1", "--json").stdout)
    assert doc["start"] == "2031-01-01T00:00:00+00:00" and doc["legs"] == ["agent", "customer"]
    assert abs(doc["seconds"] - 3.0) <= 0.04
    assert all(leg["lost"] == 0 for leg in doc["legs_detail"])


def test_admin_verbs(tmp_path: Path) -> None:
    """rotate-key, reindex and erase on their own server (erase changes the vault)."""
    run_cli("sample", "-o", str(tmp_path / "call.pcap"), "--seconds", "2")
    server = start_server(tmp_path / "data")
    try:
        remote(server, "import", "--call-id", "e1", str(tmp_path / "call.pcap"))
        assert remote(server, "rotate-key").stdout == (
            "key-encryption key 2 active; 1 wrapped key(s) re-wrapped (the tenants' keys,"
            " and call keys from before per-tenant keys), no audio rewritten\n"
        )
        assert remote(server, "reindex").stdout.startswith("index rebuilt from the segments: ")
        assert remote(server, "erase", "e1", "--reason", "test").stdout == (
            "e1 erased: its key is destroyed, a tombstone and a log leaf remain\n"
        )
        doc = json.loads(remote(server, "info", "e1", "--json").stdout)
        assert doc["state"] == "erased" and doc["erased"]["reason"] == "test"
        p = remote(server, "erase", "e1", "--reason", "again", ok=False)
        assert p.returncode == 1 and "already erased" in p.stderr
        assert remote(server, "verify", "--all").stdout.startswith("OK")
    finally:
        server.stop()


def test_data_and_server_together_refused(setup: tuple[Proc, Path], tmp_path: Path) -> None:
    server, _ = setup
    p = run_cli("--server", server.address, "--data", str(tmp_path), "ls", ok=False)
    assert p.returncode == 1 and "not both" in p.stderr


def test_wav_legs_become_real_time_pcmu_packets() -> None:
    """A remote import's WAV legs: one PCMU packet per 20 ms frame (a partial last frame
    zero-padded), packet n arriving at start + (n + 1) x 20 ms, the legs merged in
    arrival order; each leg's payloads are the G.711 of its samples."""
    from callvault import _g711, _rtp
    from callvault.cli.remote import leg_packets
    from callvault.media.pipeline import LegInput

    agent = np.random.default_rng(1).integers(-20000, 20000, 1000).astype(np.int16)
    customer = np.random.default_rng(2).integers(-20000, 20000, 640).astype(np.int16)
    start_us = 1_700_000_000_123_457
    packets, specs = leg_packets(
        [LegInput("agent", "a.wav", pcm=agent), LegInput("customer", "c.wav", pcm=customer)],
        start_us,
    )
    assert [s.name for s in specs] == ["agent", "customer"]
    assert [list(s.audio_payload_types) for s in specs] == [[0], [0]]
    assert [(at, leg) for at, leg, _ in packets] == sorted(
        [(start_us + 20_000 * (n + 1), 0) for n in range(7)]
        + [(start_us + 20_000 * (n + 1), 1) for n in range(4)]
    )
    for leg, pcm in ((0, agent), (1, customer)):
        raw = [p for _, g, p in packets if g == leg]
        data, lengths = b"".join(raw), np.array([len(p) for p in raw], np.int32)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        parsed = _rtp.parse(data, offsets, lengths)
        assert parsed.valid.all() and (parsed.pt == 0).all()
        assert parsed.marker.tolist() == [True] + [False] * (len(raw) - 1)
        assert len(set(parsed.ssrc.tolist())) == 1
        seqs, stamps = parsed.seq.tolist(), parsed.ts.tolist()
        assert {(b - a) % 2**16 for a, b in zip(seqs, seqs[1:], strict=False)} == {1}
        assert {(b - a) % 2**32 for a, b in zip(stamps, stamps[1:], strict=False)} == {160}
        padded = np.concatenate([pcm, np.zeros(-len(pcm) % 160, np.int16)])
        assert b"".join(p[12:] for p in raw) == _g711.encode(padded, 0)
