"""callvault.ids: the one call-id rule and the one --meta parser that the command line,
the server's Ingest stream and the sidecar share."""

from __future__ import annotations

import pytest
from callvault_client.client import make_meta

from callvault import ids
from callvault.errors import InputError


@pytest.mark.parametrize("value", ["c1", "a.b_c:d-E9", "x" * 128, "2026-11-29T10:00:00"])
def test_call_ids_accepted(value: str) -> None:
    assert ids.is_call_id(value) and ids.check_call_id(value) == value


@pytest.mark.parametrize(
    "value",
    ["", "x" * 129, "x y", "bad id/1", "c1\n", "\nc1", "é", "a+b"],
)
def test_call_ids_refused(value: str) -> None:
    """Also a trailing newline, which the server's old ``^...$`` match let through."""
    assert not ids.is_call_id(value)
    with pytest.raises(InputError, match=r"^call_id .*: use 1 to 128 characters"):
        ids.check_call_id(value)


def test_tenant_follows_the_same_rule_and_is_named() -> None:
    with pytest.raises(InputError, match=r"^tenant 'a b': use "):
        ids.check_call_id("a b", "tenant")


def test_leg_names() -> None:
    assert ids.check_leg_name("agent") == "agent"
    for bad in ("", "a:b", "x" * 33, "a\n"):
        with pytest.raises(InputError, match="leg name"):
            ids.check_leg_name(bad)


def test_times() -> None:
    assert ids.parse_time("1.5") == 1_500_000
    assert ids.parse_time("1970-01-01T00:00:02") == 2_000_000  # no zone: UTC
    assert ids.parse_time("1970-01-01T01:00:02+01:00") == 2_000_000
    for bad in ("yesterday", "inf", "nan"):
        with pytest.raises(InputError, match="is not a time"):
            ids.parse_time(bad)


def test_meta_for_import() -> None:
    meta = ids.parse_meta(
        [
            "agent=ann",
            "skill-group=billing",
            "tags=vip,,qa",
            "customer_number=+1555",
            "start=1970-01-01T00:00:02",
        ],
        start=True,
    )
    assert meta == {
        "agent": "ann",
        "skill_group": "billing",
        "tags": ["vip", "qa"],
        "customer_number": "+1555",
        "start_us": 2_000_000,
    }
    assert ids.parse_meta(None) == {}


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["colour=red"], "expected KEY=VALUE with KEY one of agent"),
        (["agent"], "expected KEY=VALUE"),
        (["=x"], "expected KEY=VALUE"),
        (["agent =x"], "expected KEY=VALUE"),
        (["agent=a", "agent=b"], "agent is given twice"),
    ],
)
def test_meta_for_import_refuses(items: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        ids.parse_meta(items, start=True)


def test_meta_with_extra_keys_for_call_start() -> None:
    meta = ids.parse_meta(["agent=alice", "queue=7", "tags=a,b", "sip-id=x=y"], extra=True)
    assert meta == {"agent": "alice", "tags": ["a", "b"], "extra": {"queue": "7", "sip_id": "x=y"}}
    # what the SDK sends for it (SidecarClient.start_call, Client.record)
    m = make_meta(meta)
    assert m.agent == "alice" and list(m.tags) == ["a", "b"]
    assert dict(m.extra) == {"queue": "7", "sip_id": "x=y"}
    for bad in (["start=1"], ["extra=1"], ["a b=1"], ["queue=1", "queue=2"]):
        with pytest.raises(InputError, match="--meta"):
            ids.parse_meta(bad, extra=True)
    # without extra, an unknown key is refused, and start only where it is asked for
    with pytest.raises(InputError, match="KEY=VALUE"):
        ids.parse_meta(["queue=7"])
    with pytest.raises(InputError, match="KEY=VALUE"):
        ids.parse_meta(["start=1"])


def test_ids_refuse_nul_and_dot_names() -> None:
    """Issue 9: a NUL in an id or tenant failed deep in the index; "." and ".." were
    accepted as call ids."""
    for bad in (".", "..", "a\x00b", "\x00"):
        assert not ids.is_call_id(bad)
        with pytest.raises(InputError, match="not . or .."):
            ids.check_call_id(bad, "tenant")
        with pytest.raises(InputError, match="leg name"):
            ids.check_leg_name(bad)
    assert ids.is_call_id("a.b") and ids.is_call_id("...")
    with pytest.raises(InputError, match=r"\(cut; 300 characters\)"):
        ids.check_call_id("x" * 300)


def test_meta_is_bounded() -> None:
    """Issue 9: 100,000 tags and megabytes of metadata were accepted."""
    tags = ",".join(f"t{i}" for i in range(100_000))
    with pytest.raises(InputError, match=f"100000 tags: at most {ids.MAX_TAGS}"):
        ids.parse_meta([f"tags={tags}"])
    with pytest.raises(InputError, match="agent is 300 bytes: at most 256"):
        ids.parse_meta(["agent=" + "a" * 300])
    with pytest.raises(InputError, match="extra\\['note'\\] is 2000 bytes"):
        ids.parse_meta(["note=" + "n" * 2000], extra=True)
    with pytest.raises(InputError, match="metadata is 20"):
        ids.check_meta({"extra": {f"k{i}": "v" * 1000 for i in range(20)}})
    assert ids.check_meta({"agent": "ann", "tags": ["a", "b"]}) == 5
