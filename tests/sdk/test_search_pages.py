"""Search pages, order, datetime bounds, the CallState enum and the typed leg summary,
through callvault_client against a real `callvault serve` on loopback."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import pytest
from callvault_client import Client, errors, pb
from callvault_client.client import to_us

from callvault.cli import remote
from callvault.media import sample
from callvault.media.rtppack import PT_PCMU
from callvault.server.callinfo import leg_summary
from callvault.vault import Vault
from tests.servers import Proc, start_server

pytestmark = pytest.mark.timeout(300)

T0 = 1_790_000_000_000_000  # µs: 2026-09-21 18:13:20 UTC
MIN = 60_000_000
# (call id, start_us): two calls share a start (call id orders them), "p-x" is
# another agent's call in the middle.
CALLS = [
    ("p-a", T0 + 1 * MIN),
    ("p-b", T0 + 2 * MIN),
    ("p-c1", T0 + 3 * MIN),
    ("p-c2", T0 + 3 * MIN),
    ("p-d", T0 + 4 * MIN),
    ("p-e", T0 + 5 * MIN),
    ("p-f", T0 + 6 * MIN),
]
IDS = [c for c, _ in CALLS]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """A server on a vault of the CALLS (agent "pam") and p-x (agent "other"), and
    the CALLS again in tenant "t2" (where a test records more calls)."""
    tmp = tmp_path_factory.mktemp("pages")
    sample.demo_capture(tmp / "call.pcap", seconds=1.0)
    data = tmp / "data"
    with Vault.open(data) as v:
        for call_id, start in CALLS:
            for tenant in ("default", "t2"):
                v.import_call(
                    call_id, [str(tmp / "call.pcap")], tenant=tenant, agent="pam", start_us=start
                )
        v.import_call("p-x", [str(tmp / "call.pcap")], agent="other", start_us=T0 + 150_000_000)
    server = start_server(data)
    yield server
    server.stop()


@pytest.fixture
def client(served: Proc) -> Iterator[Client]:
    with Client(served.address) as c:
        yield c


def pages(client: Client, **kw: object) -> list[list[str]]:
    """Every page of a search as lists of call ids, by following the tokens."""
    out: list[list[str]] = []
    token = ""
    while True:
        page = client.search_page(page_token=token, **kw)  # type: ignore[arg-type]
        out.append([c.call_id for c in page.calls])
        token = page.next_page_token
        if not token:
            return out
        assert len(out) < 50, "the tokens do not end"


def record_call(client: Client, call_id: str, start_us: int, tenant: str) -> None:
    """A short one-leg call recorded through the server, starting at ``start_us``."""
    pcm = sample.dialogue(0.4, seed=5)[0]
    packets = [
        (round(at * 1e6), 0, p)
        for at, p in sample.rtp_packets(
            pcm, sample.LegPlan(law=PT_PCMU, ssrc=7), t0=start_us / 1e6, seed=1
        )
    ]
    rec = client.record(
        call_id, ("agent",), tenant=tenant, start_us=start_us, meta={"agent": "pam"}
    )
    remote.send_call(rec, packets, 1)
    rec.end(timeout=60)


def test_pages_oldest_first_cover_every_call_once(client: Client) -> None:
    got = pages(client, agent="pam", page_size=3)
    assert got == [IDS[0:3], IDS[3:6], IDS[6:7]]
    # a page exactly as long as the result: no token (the server looks one call ahead)
    assert pages(client, agent="pam", page_size=7) == [IDS]
    assert [c.call_id for c in client.search_all(agent="pam", page_size=2)] == IDS


def test_pages_newest_first(client: Client) -> None:
    got = pages(client, agent="pam", page_size=3, order="newest")
    assert got == [IDS[::-1][0:3], IDS[::-1][3:6], IDS[::-1][6:7]]
    assert [c.call_id for c in client.search(agent="pam", order="newest")] == IDS[::-1]
    # the time posting list (no agent filter) walks backwards too, p-x in its place
    every = [c.call_id for c in client.search_all(order="newest", page_size=2)]
    assert every[:7] == ["p-f", "p-e", "p-d", "p-c2", "p-c1", "p-x", "p-b"]


def test_pages_honour_time_bounds_given_as_datetimes(client: Client) -> None:
    since = dt.datetime.fromtimestamp((T0 + 2 * MIN) / 1e6, tz=dt.UTC)
    until = dt.datetime.fromtimestamp((T0 + 5 * MIN) / 1e6, tz=dt.timezone(dt.timedelta(hours=2)))
    want = ["p-b", "p-c1", "p-c2", "p-d"]
    assert pages(client, agent="pam", since=since, until=until, page_size=3) == [
        want[:3],
        want[3:],
    ]
    assert [c.call_id for c in client.search(agent="pam", since=since, until=until)] == want
    assert [
        c.call_id for c in client.search(agent="pam", since=T0 + 2 * MIN, until=T0 + 5 * MIN)
    ] == want
    newest = client.search_all(agent="pam", since=since, until=until, order="newest")
    assert [c.call_id for c in newest] == want[::-1]


def test_naive_datetime_is_refused_before_anything_is_sent(client: Client) -> None:
    naive = dt.datetime(2026, 9, 21, 18, 0)
    for call in (client.search, client.search_page, client.search_all):
        with pytest.raises(ValueError, match="naive datetime"):
            call(since=naive)
    with pytest.raises(ValueError, match="naive datetime"):
        client.search_all(until=naive)
    with pytest.raises(ValueError, match="since or since_us"):
        client.search(since=dt.datetime.now(dt.UTC), since_us=5)
    with pytest.raises(TypeError, match="aware datetime or an int"):
        client.search(since="2026-09-21")  # type: ignore[arg-type]
    assert to_us(dt.datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=dt.UTC)) == 1_000_005


def test_pages_are_stable_under_concurrent_inserts(client: Client) -> None:
    """Calls recorded between two page requests neither repeat nor hide a call: the
    token holds the last call's (start, id), not an offset."""
    kw: dict[str, object] = {"tenant": "t2", "agent": "pam", "page_size": 3}
    first = client.search_page(**kw)  # type: ignore[arg-type]
    assert [c.call_id for c in first.calls] == IDS[0:3]
    # one before the cursor (already paged past), one after everything
    record_call(client, "p-early", T0 + 30_000_000, "t2")
    record_call(client, "p-late", T0 + 9 * MIN, "t2")
    rest: list[str] = []
    token = first.next_page_token
    while token:
        page = client.search_page(page_token=token, **kw)  # type: ignore[arg-type]
        rest += [c.call_id for c in page.calls]
        token = page.next_page_token
    assert rest == [*IDS[3:], "p-late"]

    kw = {"tenant": "t2", "agent": "pam", "page_size": 2, "order": "newest"}
    newest = client.search_page(**kw)  # type: ignore[arg-type]
    assert [c.call_id for c in newest.calls] == ["p-late", "p-f"]
    record_call(client, "p-later", T0 + 10 * MIN, "t2")  # before the cursor: not seen
    seen: list[str] = []
    token = newest.next_page_token
    while token:
        page = client.search_page(page_token=token, **kw)  # type: ignore[arg-type]
        seen += [c.call_id for c in page.calls]
        token = page.next_page_token
    assert seen == [*IDS[::-1][1:], "p-early"]
    # a token of tenant t2 is no token for the default tenant
    with pytest.raises(errors.InvalidArgument, match="other filters"):
        client.search_page(
            agent="pam", page_size=2, order="newest", page_token=newest.next_page_token
        )


def test_page_token_with_other_filters_is_invalid_argument(client: Client) -> None:
    token = client.search_page(agent="pam", page_size=2).next_page_token
    assert token
    with pytest.raises(errors.InvalidArgument, match="other filters or another order"):
        client.search_page(agent="other", page_size=2, page_token=token)
    with pytest.raises(errors.InvalidArgument, match="other filters or another order"):
        client.search_page(agent="pam", page_size=2, page_token=token, order="newest")
    # page_size may change between pages
    assert [c.call_id for c in client.search_page(agent="pam", page_token=token).calls][:1] == [
        IDS[2]
    ]


@pytest.mark.parametrize(
    "token, why",
    [
        ("not a token!", "does not decode"),
        ("AAAA", "does not decode"),
        ("x" * 3000, "characters long"),
    ],
)
def test_malformed_page_token_is_invalid_argument(client: Client, token: str, why: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=why):
        client.search_page(agent="pam", page_token=token)


def test_page_size_default_and_maximum(client: Client) -> None:
    assert len(client.search_page().calls) == len(IDS) + 1  # all under the default 100
    # above the maximum is taken as the maximum, not refused (AIP-158)
    assert len(client.search_page(page_size=5000).calls) == len(IDS) + 1


def test_paging_fields_on_the_stream_and_limit_on_pages_are_refused(client: Client) -> None:
    rpc = client._rpc
    with pytest.raises(errors.InvalidArgument, match="use SearchCalls"):
        list(
            rpc.stream(
                "/callvault.v1.Archive/Search",
                pb.SearchRequest(page_size=2),
                pb.CallInfo,
                idempotent=True,
            )
        )
    with pytest.raises(errors.InvalidArgument, match="limit is for Search only"):
        rpc.unary(
            "/callvault.v1.Archive/SearchCalls",
            pb.SearchRequest(limit=2),
            pb.SearchCallsReply,
            idempotent=True,
        )
    with pytest.raises(errors.InvalidArgument, match="not a SearchOrder"):
        client.search_page(order=7)


def test_search_wire_of_before_paging_still_answers_oldest_first(client: Client) -> None:
    """A request as an older client builds it (no order, no page fields)."""
    old = pb.SearchRequest(agent="pam", limit=4)
    got = client._rpc.stream("/callvault.v1.Archive/Search", old, pb.CallInfo, idempotent=True)
    assert [c.call_id for c in got] == IDS[:4]


def test_call_state_enum_matches_the_state_string(client: Client) -> None:
    for info in client.search_all():
        assert info.state == "sealed" and info.call_state == pb.CALL_STATE_SEALED
    info = client.get_call("p-a")
    assert pb.CallState.Name(info.call_state) == "CALL_STATE_SEALED"


def test_typed_leg_summary_mirrors_summary_json(client: Client) -> None:
    info = client.get_call("p-a", include_summary=True)
    doc = json.loads(info.summary_json)["legs"]
    names = [leg["leg"] for leg in doc]
    assert [s.leg for s in info.leg_summaries] == names == ["agent", "customer"]
    for typed, leg in zip(info.leg_summaries, doc, strict=True):
        assert typed.frames == leg["frames"] and typed.lost == leg["lost"]
        assert typed.late == leg["late"] and typed.malformed == leg["malformed"]
        assert [(g.start_frame, g.frames) for g in typed.gaps] == [
            (g["start_frame"], g["frames"]) for g in leg["gaps"]
        ]
        assert all(g.reason == pb.GAP_REASON_LOST for g in typed.gaps)
        assert dict(typed.rtp) == {k: v for k, v in leg["rtp"].items() if isinstance(v, int)}
        assert typed.level.peak == leg["level"]["peak"]
        assert typed.level.HasField("rms_dbfs") == (leg["level"]["rms_dbfs"] is not None)
        assert typed.bytes == leg["bytes"] and typed.voice_frames == leg["voice_frames"]
    # not trivially empty: counters and levels came through
    assert all(s.rtp and s.frames and s.level.peak > 0 for s in info.leg_summaries)
    assert not client.get_call("p-a").leg_summaries  # only when asked


def test_leg_summary_reads_gap_reasons_and_unsupported_codec() -> None:
    """The keys the sealed summary gains for legs in an unsupported codec
    (docs/format.md: gaps' reason and payload_type, unsupported_codec)."""
    typed = leg_summary(
        {
            "leg": "customer",
            "frames": 100,
            "lost": 2,
            "gaps": [
                {"start_frame": 3, "frames": 2, "reason": "lost"},
                {"start_frame": 10, "frames": 50, "reason": "unsupported_codec", "payload_type": 9},
            ],
            "unsupported_codec": {"frames": 50, "packets": 50, "payload_types": [9]},
            "level": {"rms_dbfs": None, "peak": 0, "clipped": 0},
            "rtp": {"packets": 98, "timestamp_jump": 1, "event_span": 0},
            "dtmf": [{"digit": "5", "start_ms": 40, "duration_ms": 80, "source": "inband"}],
        }
    )
    assert [(g.reason, g.payload_type) for g in typed.gaps] == [
        (pb.GAP_REASON_LOST, 0),
        (pb.GAP_REASON_UNSUPPORTED_CODEC, 9),
    ]
    assert typed.unsupported_codec.frames == 50 and list(typed.unsupported_codec.payload_types) == [
        9
    ]
    assert typed.rtp["timestamp_jump"] == 1 and typed.lost == 2
    assert not typed.level.HasField("rms_dbfs")
    assert typed.dtmf[0].digit == "5" and typed.dtmf[0].duration_ms == 80
    # a summary sealed before gaps had a reason: they were losses
    old = leg_summary({"gaps": [{"start_frame": 1, "frames": 1}]})
    assert old.gaps[0].reason == pb.GAP_REASON_LOST


def test_call_state_enum_for_open_and_erased_calls(client: Client) -> None:
    """The enum follows the state string through a call's life (tenant t2, last:
    it changes the tenant's calls)."""
    start = T0 + 20 * MIN
    pcm = sample.dialogue(0.4, seed=5)[0]
    plan = sample.LegPlan(law=PT_PCMU, ssrc=9)
    packets = [
        (round(at * 1e6), 0, p) for at, p in sample.rtp_packets(pcm, plan, t0=start / 1e6, seed=2)
    ]
    rec = client.record("p-open", ("agent",), tenant="t2", start_us=start)
    remote.send_call(rec, packets, 1)
    assert rec.acks.wait(0, timeout=60)  # the first batch is durable: the call exists
    info = client.get_call("p-open", tenant="t2")
    assert (info.state, info.call_state) == ("open", pb.CALL_STATE_OPEN)
    rec.end(timeout=60)
    assert client.get_call("p-open", tenant="t2").call_state == pb.CALL_STATE_SEALED
    client.erase("p-a", "test", tenant="t2")
    info = client.get_call("p-a", tenant="t2")
    assert (info.state, info.call_state) == ("erased", pb.CALL_STATE_ERASED)
    states = {c.call_id: c.call_state for c in client.search_all(tenant="t2")}
    assert states["p-a"] == pb.CALL_STATE_ERASED and states["p-b"] == pb.CALL_STATE_SEALED
