"""callvault_client against real `callvault serve` processes on loopback ports."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from callvault_client import Client, errors, pb
from callvault_client._channel import Rpc
from callvault_client.recording import AckEvent, Recording

from callvault.cli import remote
from callvault.integrity import checkpoint, merkle
from callvault.integrity.bundle import verify_bundle
from callvault.media import sample
from callvault.media.ogg import OggOpusReader
from callvault.media.rtppack import PT_PCMA, PT_PCMU
from callvault.vault import Vault
from tests.servers import CLI, Proc, spawn, start_server

pytestmark = pytest.mark.timeout(300)

SECONDS = 4.0


def call_packets(
    seconds: float = SECONDS, *, seed: int = 3, t0: float = 1_790_000_000.0
) -> list[remote.Packet]:
    """A two-leg G.711 call as (arrival_us, leg, packet) in arrival order."""
    agent, customer = sample.dialogue(seconds, seed=seed)
    out: list[remote.Packet] = []
    for leg, (pcm, plan) in enumerate(
        [
            (agent, sample.LegPlan(law=PT_PCMU, ssrc=0x11, jitter_ms=4)),
            (customer, sample.LegPlan(law=PT_PCMA, ssrc=0x22, jitter_ms=6, start_offset_ms=3)),
        ]
    ):
        out.extend(
            (round(at * 1e6), leg, p)
            for at, p in sample.rtp_packets(pcm, plan, t0=t0, seed=seed + leg)
        )
    out.sort(key=lambda x: (x[0], x[1]))
    return out


def record(client: Client, call_id: str, packets: list[remote.Packet], **kw: object) -> pb.Sealed:
    rec = client.record(call_id, ("agent", "customer"), **kw)  # type: ignore[arg-type]
    remote.send_call(rec, packets, 2)
    return rec.end(timeout=120)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Path]]:
    """A server on a vault holding c1 (agent ann) and c2 (agent bob), imported locally."""
    tmp = tmp_path_factory.mktemp("sdk")
    sample.demo_capture(tmp / "call.pcap", seconds=5.0)
    data = tmp / "data"
    with Vault.open(data) as v:
        v.import_call(
            "c1",
            [str(tmp / "call.pcap")],
            agent="ann",
            tags=["vip"],
            customer_number="+15550001111",
        )
        v.import_call("c2", [str(tmp / "call.pcap")], agent="bob")
    server = start_server(data)
    yield server, tmp
    server.stop()


@pytest.fixture
def client(served: tuple[Proc, Path]) -> Iterator[Client]:
    with Client(served[0].address) as c:
        yield c


# -- Archive ---------------------------------------------------------------------------


def test_search_filters_by_agent_and_tag(client: Client) -> None:
    assert {c.call_id for c in client.search()} >= {"c1", "c2"}
    assert [c.call_id for c in client.search(agent="ann")] == ["c1"]
    assert [c.call_id for c in client.search(tag="vip")] == ["c1"]
    assert list(client.search(agent="nobody")) == []


def test_get_call_with_summary_and_customer_number(client: Client) -> None:
    info = client.get_call("c1", include_summary=True, include_customer_number=True)
    assert (
        info.state == "sealed" and info.agent == "ann" and list(info.legs) == ["agent", "customer"]
    )
    assert info.customer_number == "+15550001111"
    assert len(info.seal) == 32 and info.log_index >= 0 and 245 <= info.frames <= 255
    legs = json.loads(info.summary_json)["legs"]
    assert [leg["leg"] for leg in legs] == ["agent", "customer"]
    assert client.get_call("c1").customer_number == ""  # only when asked


def test_get_call_unknown_raises_not_found(client: Client) -> None:
    with pytest.raises(errors.NotFound) as ei:
        client.get_call("no-such-call")
    assert "no-such-call" in ei.value.message
    assert isinstance(ei.value, errors.CallvaultClientError)


def test_play_bad_chunk_size_raises_invalid_argument_with_message(client: Client) -> None:
    with pytest.raises(errors.InvalidArgument) as ei:
        list(client.play("c1", frames_per_chunk=100_000))
    assert "frames_per_chunk" in ei.value.message


def test_play_opus_streams_every_frame_in_order(client: Client) -> None:
    info = client.get_call("c1")
    chunks = list(client.play("c1", frames_per_chunk=50))
    assert chunks[0].first_frame == 0 and chunks[0].pre_skip > 0
    pos = 0
    for ch in chunks:
        assert ch.first_frame == pos and len(ch.legs) == 2
        for leg in ch.legs:
            assert len(leg.lengths) == ch.frames and sum(leg.lengths) == len(leg.data)
        pos += ch.frames
    # a sealed call's Opus stream ends with the encoder's flush packet (after the last
    # frame), which a decoder needs to decode the last frame whole past the pre-skip
    assert pos == info.frames + 1


def test_play_pcm_range(client: Client) -> None:
    chunks = list(client.play("c1", from_ms=1000, to_ms=2000, format="pcm"))
    assert chunks[0].first_frame == 50
    assert sum(c.frames for c in chunks) == 50
    assert sum(len(c.legs[0].data) for c in chunks) == 50 * 160 * 2


def test_export_ogg_writes_the_whole_call(client: Client, tmp_path: Path) -> None:
    seen: list[pb.FileChunk] = []
    n = client.export("c1", tmp_path / "c1.ogg", progress=seen.append)
    assert n == (tmp_path / "c1.ogg").stat().st_size and n == seen[-1].size
    r = OggOpusReader(tmp_path / "c1.ogg")
    assert r.channels == 2
    assert abs(r.duration - client.get_call("c1").frames / 50) < 0.001
    assert [p.name for p in tmp_path.iterdir()] == ["c1.ogg"]  # no temporary file left


def test_export_wav_range(client: Client, tmp_path: Path) -> None:
    n = client.export("c1", tmp_path / "part.wav", from_ms=1000, to_ms=3000)
    assert n == 44 + 100 * 160 * 2 * 2  # 2 s, 2 channels, 16-bit


def test_export_failure_leaves_no_file(client: Client, tmp_path: Path) -> None:
    with pytest.raises(errors.NotFound):
        client.export("no-such-call", tmp_path / "x.ogg")
    assert list(tmp_path.iterdir()) == []


# -- Integrity -------------------------------------------------------------------------


def test_checkpoint_and_inclusion_proof_verify(client: Client) -> None:
    cp = client.get_checkpoint()
    assert checkpoint.verify(cp.note, cp.verifier_key).size == cp.tree_size >= 2
    info = client.get_call("c2")
    proof = client.get_inclusion_proof("c2", tree_size=cp.tree_size)
    assert proof.leaf_index == info.log_index and proof.root_hash == cp.root_hash
    merkle.verify_inclusion(
        proof.leaf_index, proof.tree_size, proof.leaf_hash, list(proof.path), proof.root_hash
    )
    by_index = client.get_inclusion_proof(leaf_index=info.log_index, tree_size=cp.tree_size)
    assert by_index.leaf_hash == proof.leaf_hash


def test_consistency_proof_verifies(client: Client) -> None:
    cp = client.get_checkpoint()
    p = client.get_consistency_proof(1, cp.tree_size)
    assert p.new_root == cp.root_hash
    merkle.verify_consistency(p.old_size, p.new_size, p.old_root, p.new_root, list(p.path))


def test_get_bundle_writes_a_bundle_that_verifies(client: Client, tmp_path: Path) -> None:
    files = client.get_bundle("c1", tmp_path / "b")
    assert {"manifest.json", "call.ogg", "checkpoint.txt"} <= set(files)
    assert verify_bundle(tmp_path / "b").ok
    with pytest.raises(FileExistsError):
        client.get_bundle("c1", tmp_path / "b")


def test_verify_streams_one_result_per_call(client: Client) -> None:
    results = list(client.verify(["c1", "c2"]))
    assert [(r.what, r.ok, list(r.problems)) for r in results] == [
        ("call c1", True, []),
        ("call c2", True, []),
    ]
    assert all(r.ok for r in client.verify(all=True))


def test_stats_counts_calls(client: Client) -> None:
    s = client.stats()
    assert s.calls >= 2 and s.log_size >= 2 and s.free_disk_bytes > 0 and s.uptime_s > 0


# -- Ingest ----------------------------------------------------------------------------


def test_record_acks_every_batch_then_seals(client: Client) -> None:
    packets = call_packets()
    acks: list[AckEvent] = []
    rec = client.record(
        "rec-1", ("agent", "customer"), meta={"agent": "zoe", "tags": "a,b"}, on_ack=acks.append
    )
    n = remote.send_call(rec, packets, 2)
    sealed = rec.end(timeout=120)
    assert len(sealed.seal) == 32 and abs(sealed.frames - SECONDS * 50) <= 3
    assert [a.seq for a in acks] == list(range(n))  # each batch reported once, in order
    assert all(a.latency >= 0 for a in acks)
    assert rec.acks.seq == n - 1
    info = client.get_call("rec-1")
    assert info.state == "sealed" and info.agent == "zoe" and list(info.tags) == ["a", "b"]
    assert [r.ok for r in client.verify(["rec-1"])] == [True]


def test_record_of_a_sealed_call_returns_its_seal(client: Client) -> None:
    """The same recording (its recording_id) again: Started + Sealed at once; another
    recording reusing the call id: ALREADY_EXISTS (issue 9: never half-recorded)."""
    packets = call_packets(1.0)
    first = record(client, "rec-twice", packets, recording_id="r1")
    again = record(client, "rec-twice", packets, recording_id="r1")
    assert again.seal == first.seal
    with pytest.raises(errors.AlreadyExists, match="rec-twice already exists"):
        record(client, "rec-twice", packets)  # a new Recording: a random recording_id


def test_record_bad_call_id_raises_invalid_argument(client: Client) -> None:
    rec = client.record("bad id with spaces", ("agent",))
    with pytest.raises(errors.InvalidArgument) as ei:
        rec.end(timeout=30)
    assert "call_id" in ei.value.message


def test_play_follow_on_open_call_hits_deadline(client: Client) -> None:
    packets = call_packets(3.0)
    rec = client.record("live-1", ("agent", "customer"))
    half = [p for p in packets if p[0] < packets[0][0] + 1_500_000]
    n = remote.send_call(rec, half, 2)
    assert rec.acks.wait(n - 1, timeout=60)
    got: list[pb.PlayChunk] = []
    with pytest.raises(errors.DeadlineExceeded):
        for chunk in client.play("live-1", follow=True, timeout=2.0):
            got.append(chunk)
    assert got and all(c.live for c in got)
    remote.send_call(rec, packets[len(half) :], 2)
    assert rec.end(timeout=120).frames > 0


class ListSource:
    """A BatchSource over a list (the test's stand-in for a caller's store, e.g. a spool)."""

    def __init__(self, batches: list[pb.RtpBatch]) -> None:
        self.batches = batches
        self.ended: pb.CallEnd | None = None

    def count(self) -> int:
        return len(self.batches)

    def batch(self, seq: int) -> pb.RtpBatch:
        return self.batches[seq]

    def end(self) -> pb.CallEnd | None:
        return self.ended


def call_batches(packets: list[remote.Packet], per_batch: int = 5) -> list[pb.RtpBatch]:
    """The packets as small batches (``per_batch`` packets of one leg each), in arrival order."""
    out: list[pb.RtpBatch] = []
    pending: dict[int, list[remote.Packet]] = {0: [], 1: []}

    def flush(leg: int) -> None:
        pkts = pending[leg]
        out.append(
            pb.RtpBatch(
                seq=len(out),
                leg=leg,
                packets=b"".join(p for _, _, p in pkts),
                lengths=[len(p) for _, _, p in pkts],
                arrival_us=[at for at, _, _ in pkts],
            )
        )
        pending[leg] = []

    for pkt in packets:
        pending[pkt[1]].append(pkt)
        if len(pending[pkt[1]]) == per_batch:
            flush(pkt[1])
    for leg in (0, 1):
        if pending[leg]:
            flush(leg)
    return out


def two_legs(call_id: str) -> pb.CallStart:
    return pb.CallStart(
        call_id=call_id, legs=[pb.LegSpec(name="agent"), pb.LegSpec(name="customer")]
    )


def test_recording_from_a_source_resumes_where_the_server_is(
    client: Client, served: tuple[Proc, Path]
) -> None:
    """A recording fed from a store resumes the call in a second Recording (as a restarted
    process would) from the server's resume_from_seq, even when the store is behind the
    server (it waits for the store to grow), and the result is the call sent in one go."""
    batches = call_batches(call_packets(3.0, seed=11))
    half = len(batches) // 2
    rpc = Rpc(served[0].address)
    try:
        whole = ListSource(list(batches))
        whole.ended = pb.CallEnd(batches=len(batches))
        clean = Recording(rpc, two_legs("src-clean"), source=whole).end(timeout=120)
        first = Recording(rpc, two_legs("src-1"), source=ListSource(batches[:half]))
        assert half > 20 and first.acks.wait(half - 1, timeout=60)
        with pytest.raises(RuntimeError, match="source"):
            first.send(0, b"", [], [])
        first.cancel()  # the process "dies": the server keeps the call open
        store = ListSource(batches[: half - 5])  # lost its last 5 batches
        replies: list[pb.IngestReply] = []
        second = Recording(rpc, two_legs("src-1"), source=store, on_reply=replies.append)
        deadline = time.monotonic() + 60
        while second.started is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert second.started is not None and second.started.resume_from_seq == half
        assert second.started.resumed and second.connected
        time.sleep(0.3)  # nothing to send yet: the store is behind the server
        assert second.acks.seq == -1
        store.batches.extend(batches[half - 5 :])
        store.ended = pb.CallEnd(batches=len(batches))
        second.wake()
        sealed = second.end(timeout=120)
        assert sealed.frames == clean.frames
        assert second.acks.seq == len(batches) - 1
        kinds = [r.WhichOneof("msg") for r in replies]
        assert kinds[0] == "started" and kinds[-1] == "sealed" and "ack" in kinds
    finally:
        rpc.close()
    assert [r.ok for r in client.verify(["src-1", "src-clean"])] == [True, True]
    assert pcm_of(client, "src-1") == pcm_of(client, "src-clean")


def pcm_of(client: Client, call_id: str) -> bytes:
    return b"".join(leg.data for c in client.play(call_id, format="pcm") for leg in c.legs)


def test_recording_retry_decides_which_failures_reconnect(served: tuple[Proc, Path]) -> None:
    """``retry`` reopens the stream after a failure the default would end on (here the
    server's INVALID_ARGUMENT), telling ``on_lost`` each time with the pause before it."""
    lost: list[tuple[errors.CallvaultClientError, float]] = []
    rpc = Rpc(served[0].address, backoff=(0.01, 0.05))
    try:
        rec = Recording(
            rpc,
            pb.CallStart(call_id="bad id", legs=[pb.LegSpec(name="agent")]),
            retry=lambda e: len(lost) < 3,
            on_lost=lambda e, delay: lost.append((e, delay)),
        )
        with pytest.raises(errors.InvalidArgument):
            rec.end(timeout=60)
    finally:
        rpc.close()
    assert len(lost) == 3 and rec.reconnects == 3 and not rec.connected
    assert all(isinstance(e, errors.InvalidArgument) for e, _ in lost)
    assert all(0.005 <= d <= 0.05 for _, d in lost)


# -- retries ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def late_server(tmp_path: Path) -> Iterator[tuple[str, list[Proc]]]:
    """An address whose server starts in a background thread (about a second later)."""
    data = tmp_path / "data"
    sample.demo_capture(tmp_path / "call.pcap", seconds=1.0)
    with Vault.open(data) as v:
        v.import_call("x1", [str(tmp_path / "call.pcap")])
    port = free_port()
    procs: list[Proc] = []
    t = threading.Thread(target=lambda: procs.append(start_server(data, port=port)))
    t.start()
    yield f"127.0.0.1:{port}", procs
    t.join()
    for p in procs:
        p.stop()


def test_idempotent_call_retried_until_server_is_up(late_server: tuple[str, list[Proc]]) -> None:
    address, _ = late_server
    with Client(address, retries=200, backoff=(0.05, 0.5), timeout=120) as c:
        assert c.stats().calls == 1


def test_erase_is_not_retried(late_server: tuple[str, list[Proc]]) -> None:
    address, procs = late_server
    with Client(address, retries=200, backoff=(0.05, 0.5), timeout=120) as c:
        with pytest.raises(errors.Unavailable):
            c.erase("x1", "not retried")  # had it been retried, it would erase x1
        assert c.get_call("x1").state == "sealed"  # retried until the server is up
    assert procs


# -- TLS -------------------------------------------------------------------------------


def self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def start_tls_server(tmp: Path, cert: Path, key: Path) -> tuple[subprocess.Popen[bytes], str]:
    """tests.servers.start_server checks health over plaintext, so a TLS server is
    started here and awaited through a TLS client."""
    argv = ["serve", "--data", str(tmp / "tls-data"), "--listen", "127.0.0.1:0"]
    p = spawn("tls-server", [*argv, "--tls-cert", str(cert), "--tls-key", str(key)], tmp)
    return p.proc, p.address


def test_tls_client_with_ca_connects_and_plaintext_fails(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    proc, address = start_tls_server(tmp_path, cert, key)
    try:
        with Client(address, tls_ca=cert, retries=50, backoff=(0.05, 0.5)) as c:
            assert c.stats().calls == 0
        with Client(address, tls_ca=cert.read_bytes()) as c:  # PEM bytes work too
            assert list(c.search()) == []
        with (
            Client(address, retries=0, timeout=5) as plain,
            pytest.raises((errors.Unavailable, errors.DeadlineExceeded)),
        ):
            plain.stats()
    finally:
        proc.terminate()
        proc.wait(60)


def test_tls_for_the_cli_and_the_sidecar(tmp_path: Path) -> None:
    """`callvault --server --tls-ca` and `callvault sidecar --tls-ca` reach a TLS server;
    without the CA the CLI says it cannot connect."""
    import time

    from tests.e2e.sidecar_procs import (
        call_start,
        call_stop,
        rtp_range,
        start_sidecar,
        wait_sealed,
    )

    cert, key = self_signed(tmp_path)
    proc, address = start_tls_server(tmp_path, cert, key)
    sidecar = None
    try:
        sidecar = start_sidecar(
            address, tmp_path / "spool", rtp_range(), tmp_path, args=("--tls-ca", str(cert))
        )
        ports = call_start(sidecar, "tls-1")
        pcm = sample.synthetic_speech(1.0, seed=3)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for port in ports.values():
                for _, pkt in sample.rtp_packets(pcm, sample.LegPlan(jitter_ms=0), t0=0.0, seed=1):
                    tx.sendto(pkt, ("127.0.0.1", port))
        time.sleep(0.3)
        call_stop(sidecar, "tls-1")
        wait_sealed(sidecar, "tls-1")
        ls = subprocess.run(
            [*CLI, "--server", address, "--tls-ca", str(cert), "ls", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ls.returncode == 0, ls.stderr
        rows = json.loads(ls.stdout)
        assert [(r["call_id"], r["state"]) for r in rows] == [("tls-1", "sealed")]
        plain = subprocess.run(
            [*CLI, "--server", address, "ls"], capture_output=True, text=True, timeout=120
        )
        assert plain.returncode == 1 and address in plain.stderr
    finally:
        if sidecar is not None:
            sidecar.stop()
        proc.terminate()
        proc.wait(60)


# -- reconnect -------------------------------------------------------------------------


def test_recording_survives_server_sigkill(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data)
    packets = call_packets(6.0, seed=5)
    try:
        with Client(server.address) as c:
            clean = record(c, "clean", packets)
            rec = c.record("killed", ("agent", "customer"), reconnect_timeout=120)
            first = [p for p in packets if p[0] < packets[0][0] + 3_000_000]
            n = remote.send_call(rec, first, 2)
            assert rec.acks.wait(n - 1, timeout=60)
            server.kill()
            server = start_server(data, port=server.port)
            remote.send_call(rec, packets[len(first) :], 2)
            sealed = rec.end(timeout=120)
            assert rec.reconnects >= 1
            assert sealed.frames == clean.frames
            assert [r.ok for r in c.verify(["killed", "clean"])] == [True, True]
            c.export("killed", tmp_path / "killed.wav")
            c.export("clean", tmp_path / "clean.wav")
    finally:
        server.stop()
    # the same batches make the same recording, restart or not
    assert (tmp_path / "killed.wav").read_bytes() == (tmp_path / "clean.wav").read_bytes()
    assert np.frombuffer((tmp_path / "clean.wav").read_bytes()[44:], np.int16).any()


def test_client_wait_ready_times_out_on_dead_address() -> None:
    with Client(f"127.0.0.1:{free_port()}") as c, pytest.raises(errors.Unavailable) as ei:
        c.wait_ready(timeout=0.5)
    assert "not reachable" in ei.value.message
