"""Recording rules and consent through a real `callvault serve` (real RocksDB, real
libopus, the generated stubs and the SDK): calls not recorded store a DECISION entry
and no audio; recorded ones carry their decision; a bad policy is refused at start."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from callvault_client import Client
from callvault_client._pb import callvault_pb2 as pb
from callvault_client._pb import callvault_pb2_grpc as pbg

from callvault.media import sample
from callvault.store import records as rec
from callvault.store.segment import SegmentReader, _scan_segment, segment_path
from callvault.vault import Vault
from tests.rtpfeed import Feed, capture_feed
from tests.servers import CLI, Proc, start_server

POLICY = """
[recording]
record = "rules"
default = "record"
default_region = "uk"

[[recording.rule]]
name = "no-training"
skill_group = "training"
action = "skip"

[[recording.rule]]
name = "vip"
vip = true
action = "skip"

[regions.uk]
consent = "one-party"

[regions.ca]
consent = "all-party"
"""


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Feed:
    path = tmp_path_factory.mktemp("cap") / "call.pcap"
    sample.demo_capture(path, seconds=3.0)
    return capture_feed(path)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Proc]:
    (tmp_path / "policy.toml").write_text(POLICY)
    data = tmp_path / "data"
    subprocess.run([*CLI, "--data", str(data), "init"], check=True, capture_output=True)
    subprocess.run(
        [*CLI, "--data", str(data), "vip", "add", "+44 20 7946 0000"],
        check=True,
        capture_output=True,
    )
    srv = start_server(data, args=("--config", str(tmp_path / "policy.toml")))
    yield srv
    srv.stop()


def record(
    address: str, feed: Feed, call_id: str, *, region: str = "", consent: int = 0, **meta: str
) -> list[pb.IngestReply]:
    start = feed.start(call_id, **meta)
    start.start.region = region
    start.start.consent = consent  # type: ignore[assignment]
    reqs = [start, *(pb.IngestRequest(batch=b) for b in feed.batches)]
    reqs.append(pb.IngestRequest(end=pb.CallEnd(batches=len(feed.batches))))
    with grpc.insecure_channel(address) as ch:
        return list(pbg.IngestStub(ch).Record(iter(reqs)))


def audio_records(data: Path, call_id: str) -> int:
    """AUDIO records of the call in every segment file (read raw, not through the index)."""
    n = 0
    reader = SegmentReader(data / "segments")
    for sid in reader.segments():
        scan = _scan_segment(Path(segment_path(data / "segments", sid)).read_bytes(), sid)
        for ref, rtype in scan.records:
            if rtype == rec.AUDIO and rec.parse(rtype, reader.read(ref)[1]).call_id == call_id:
                n += 1
    return n


def test_declined_all_party_is_not_recorded_and_decision_is_listed(
    server: Proc, feed: Feed
) -> None:
    replies = record(server.address, feed, "ca-declined", region="ca", consent=pb.CONSENT_DECLINED)
    kinds = [r.WhichOneof("msg") for r in replies]
    assert kinds == ["started", "sealed"]  # nothing acknowledged: no audio taken
    d = replies[0].started.decision
    assert not d.recorded and d.rule == "consent" and d.region == "ca"
    assert d.consent == pb.CONSENT_DECLINED
    assert replies[1].sealed.frames == 0 and replies[1].sealed.seal == b""
    with Client(server.address) as c:
        info = c.get_call("ca-declined")
        assert info.state == "not_recorded" and info.call_state == pb.CALL_STATE_NOT_RECORDED
        assert not info.decision.recorded and info.decision.log_index >= 0
        listed = list(c.search(decisions=True))
        assert [i.call_id for i in listed] == ["ca-declined"]
        assert [i.call_id for i in c.search()] == []  # not a call
        # the decision is a leaf of the Merkle log: provable
        proof = c.get_inclusion_proof(leaf_index=info.decision.log_index)
        assert proof.leaf_index == info.decision.log_index
        # a retry decides the same and stores nothing more
        again = record(server.address, feed, "ca-declined", region="ca", consent=pb.CONSENT_GRANTED)
        assert not again[0].started.decision.recorded
        assert len(list(c.search(decisions=True))) == 1
        # unknown consent in an all-party region: not recorded either
        r = record(server.address, feed, "ca-unknown", region="ca")
        assert not r[0].started.decision.recorded
        assert c.stats().not_recorded_calls == 2  # a retry stores no second decision
    server.stop()
    assert server.data is not None
    assert audio_records(server.data, "ca-declined") == 0
    assert audio_records(server.data, "ca-unknown") == 0


def test_granted_call_is_recorded_with_its_decision(server: Proc, feed: Feed) -> None:
    replies = record(server.address, feed, "ca-granted", region="ca", consent=pb.CONSENT_GRANTED)
    d = replies[0].started.decision
    assert d.recorded and d.rule == "default" and d.region == "ca"
    assert replies[-1].sealed.frames > 0
    # one-party region: recorded whatever the customer said
    replies = record(server.address, feed, "uk-declined", region="uk", consent=pb.CONSENT_DECLINED)
    assert replies[0].started.decision.recorded
    with Client(server.address) as c:
        info = c.get_call("ca-granted")
        assert info.state == "sealed"
        assert info.decision.recorded and info.decision.region == "ca"
        assert info.decision.consent == pb.CONSENT_GRANTED
        assert {i.call_id for i in c.search()} == {"ca-granted", "uk-declined"}
        assert list(c.search(decisions=True)) == []
    server.stop()
    assert server.data is not None
    with Vault.open(server.data, read_only=True) as v:
        assert v.verify_call("ca-granted") == []
        assert (v.get_call("ca-granted").decision or {}).get("rule") == "default"


def test_rules_skill_group_and_vip_by_customer_number(server: Proc, feed: Feed) -> None:
    r = record(server.address, feed, "train-1", skill_group="training")
    assert not r[0].started.decision.recorded
    assert r[0].started.decision.rule == "no-training"
    # the VIP list holds the number's keyed hash; the call gives it formatted otherwise
    r = record(server.address, feed, "vip-1", customer_number="0044 20 7946-0000")
    assert not r[0].started.decision.recorded and r[0].started.decision.rule == "vip"
    r = record(server.address, feed, "plain-1", customer_number="+44 20 7946 0001")
    assert r[0].started.decision.recorded
    with Client(server.address) as c:
        decided = {i.call_id: i.decision.rule for i in c.search(decisions=True)}
        assert decided == {"train-1": "no-training", "vip-1": "vip"}
        start = pb.CallStart(call_id="vip-2", legs=[pb.LegSpec(name="a")])
        start.meta.customer_number = "+442079460000"
        d = c.decide(start)
        assert not d.recorded and d.rule == "vip" and d.log_index >= 0
        assert c.get_call("vip-2").state == "not_recorded"
        # an unknown region is refused, naming the known ones
        bad = pb.CallStart(call_id="x-1", legs=[pb.LegSpec(name="a")], region="fr")
        with pytest.raises(Exception, match="ca, uk"):
            c.decide(bad)
    server.stop()
    assert server.data is not None
    # no customer number in clear anywhere in the data directory
    for f in server.data.rglob("*"):
        if f.is_file():
            blob = f.read_bytes()
            for clear in (b"2079460000", b"20 7946 0000", b"7946-0000", b"2079460001"):
                assert clear not in blob, (f, clear)


def test_bad_policy_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text(
        '[recording]\nrecord = "rules"\n[[recording.rule]]\nname = "s"\naction = "record"\n'
        "percent = 120\n"
    )
    p = subprocess.run(
        [
            *CLI,
            "serve",
            "--data",
            str(tmp_path / "d"),
            "--listen",
            "127.0.0.1:0",
            "--config",
            str(tmp_path / "bad.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode != 0
    assert "[[recording.rule]] #1 (s): percent 120 is outside 0 to 100" in p.stderr
    (tmp_path / "bad2.toml").write_text('[regions.ca]\nconsent = "two-party"\n')
    p = subprocess.run(
        [
            *CLI,
            "serve",
            "--data",
            str(tmp_path / "d"),
            "--listen",
            "127.0.0.1:0",
            "--config",
            str(tmp_path / "bad2.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode != 0 and "[regions.ca] consent" in p.stderr, p.stderr
    assert sys.executable  # the CLI ran under this interpreter's venv


SAMPLING = """
[recording]
record = "rules"
default = "skip"
key_file = "{key}"

[[recording.rule]]
name = "qa-20"
percent = 20
action = "record"
"""


def test_sampling_20_percent_over_500_calls_same_on_a_second_server(tmp_path: Path) -> None:
    """Decide (what a CallStart would be answered) for 500 call ids: 20 % +/- 3 %
    recorded; a second server sharing the recording key decides every id the same,
    and a retry on the first one too (the decisions are stored)."""
    key = tmp_path / "recording.key"
    key.write_bytes(bytes(range(32)))  # a fixed key: the share is a property of the ids
    key.chmod(0o600)
    (tmp_path / "sample.toml").write_text(SAMPLING.format(key=key))
    ids = [f"s-{i:04d}" for i in range(500)]
    decided: list[list[bool]] = []
    for name in ("a", "b"):
        srv = start_server(tmp_path / name, args=("--config", str(tmp_path / "sample.toml")))
        try:
            with Client(srv.address) as c:
                got = [
                    c.decide(pb.CallStart(call_id=i, legs=[pb.LegSpec(name="a")])).recorded
                    for i in ids
                ]
                assert (
                    got
                    == [
                        c.decide(pb.CallStart(call_id=i, legs=[pb.LegSpec(name="a")])).recorded
                        for i in ids[:50]
                    ]
                    + got[50:]
                )
                assert len(list(c.search(decisions=True))) == got.count(False)
            decided.append(got)
        finally:
            srv.stop()
    share = sum(decided[0]) / len(ids)
    assert 0.17 <= share <= 0.23, share
    assert decided[0] == decided[1]
