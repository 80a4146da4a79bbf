"""RTP batches for Ingest tests: a capture's packets cut into batches, legs
interleaved in arrival order (as a sidecar would forward them)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from callvault_client._pb import callvault_pb2 as pb

from callvault.media import capture


@dataclass
class Feed:
    start_us: int
    legs: list[str]
    batches: list[pb.RtpBatch]

    def start(self, call_id: str, **meta: str) -> pb.IngestRequest:
        return pb.IngestRequest(
            start=pb.CallStart(
                call_id=call_id,
                legs=[pb.LegSpec(name=n) for n in self.legs],
                start_us=self.start_us,
                meta=pb.CallMeta(**meta),  # type: ignore[arg-type]
            )
        )

    def requests(
        self,
        call_id: str,
        *,
        first: int = 0,
        last: int | None = None,
        end: bool = True,
        **meta: str,
    ) -> Iterator[pb.IngestRequest]:
        """CallStart, batches [first, last), then CallEnd when ``end``."""
        yield self.start(call_id, **meta)
        for b in self.batches[first:last]:
            yield pb.IngestRequest(batch=b)
        if end:
            yield pb.IngestRequest(end=pb.CallEnd(batches=len(self.batches)))


def capture_feed(path: Path, per_batch: int = 10) -> Feed:
    """Each leg's packets in batches of ``per_batch``, batches ordered by their last
    packet's arrival, seq numbered in that order."""
    flows = capture.read_capture(path).flows
    start = min(f.first_sample_us() for f in flows)
    cut: list[tuple[int, int, list[bytes], list[int]]] = []
    for leg, f in enumerate(flows):
        for lo in range(0, len(f.packets), per_batch):
            pk = list(f.packets[lo : lo + per_batch])
            arr = [int(a) for a in f.arrival_us[lo : lo + per_batch]]
            cut.append((arr[-1], leg, pk, arr))
    cut.sort(key=lambda c: (c[0], c[1]))
    batches = [
        pb.RtpBatch(
            seq=i, leg=leg, packets=b"".join(pk), lengths=[len(p) for p in pk], arrival_us=arr
        )
        for i, (_, leg, pk, arr) in enumerate(cut)
    ]
    return Feed(start, ["agent", "customer"][: len(flows)], batches)


def write_two_law_capture(path: Path, seconds: float) -> Path:
    """A two-leg call of ``seconds`` (callvault.media.sample's dialogue) as a capture:
    the agent in PCMU, the customer in PCMA, so a test sees both G.711 laws."""
    from callvault.media import sample

    agent, customer = sample.dialogue(seconds)
    sample.write_capture(
        path,
        [
            (agent, sample.LegPlan(ssrc=1, src=("10.0.0.1", 4000), dst=("10.0.0.2", 5000))),
            (
                customer,
                sample.LegPlan(law=8, ssrc=2, src=("10.0.0.2", 5002), dst=("10.0.0.1", 4002)),
            ),
        ],
    )
    return path


# per leg: its stored packets (data, lengths), as Vault.read_packets gives them
Packets = list[tuple[bytes, list[int]]]


def imported_packets(capture_path: Path, vault_dir: Path) -> Packets:
    """What a local import of the capture stores: per leg, its Opus packets (the
    reference a recording through Ingest must equal byte for byte)."""
    from callvault.vault import Vault

    with Vault.open(vault_dir) as v:
        v.import_call("ref", [str(capture_path)])
        return [(d, ln.tolist()) for d, ln in v.read_packets("ref")]
