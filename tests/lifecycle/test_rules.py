"""The recording policy (lifecycle/rules.py): parsing and its refusals, rule matching
(first match wins), consent by region, sampling by keyed hash, the VIP list of keyed
hashes. The policy is pure: no server needed (the server tests are test_rules_server)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from callvault.errors import InputError
from callvault.lifecycle.rules import (
    CallFacts,
    PolicyError,
    RecordingPolicy,
    VipList,
    load_key,
    normalize_number,
    number_hash,
)

KEY = bytes(range(32))


def policy(text: str, key: bytes = KEY, **kw: object) -> RecordingPolicy:
    return RecordingPolicy.parse(tomllib.loads(text), key=key, **kw)  # type: ignore[arg-type]


def call(call_id: str = "c1", **kw: str) -> CallFacts:
    return CallFacts(tenant=kw.pop("tenant", "t1"), call_id=call_id, **kw)


RULES = """
[recording]
record = "rules"
default = "skip"

[[recording.rule]]
name = "sales-outbound"
skill_group = ["sales", "upsell"]
direction = "outbound"
action = "record"

[[recording.rule]]
name = "alex"
agent = "alex"
action = "skip"

[[recording.rule]]
name = "support"
skill_group = "support"
action = "record"
"""


def test_no_policy_records_everything() -> None:
    p = RecordingPolicy.parse({})
    d = p.decide(call(consent="declined"))
    assert d.recorded and d.rule == "all"


def test_first_matching_rule_wins_then_default() -> None:
    p = policy(RULES)
    d = p.decide(call(skill_group="sales", direction="outbound", agent="alex"))
    assert d.recorded and d.rule == "sales-outbound"  # before "alex"
    d = p.decide(call(skill_group="support", agent="alex"))
    assert not d.recorded and d.rule == "alex"
    assert p.decide(call(skill_group="support", agent="bo")).rule == "support"
    d = p.decide(call(skill_group="sales", direction="inbound"))  # direction differs
    assert not d.recorded and d.rule == "default"
    assert policy(RULES.replace('default = "skip"', 'default = "record"')).decide(call()).recorded


def test_consent_by_region() -> None:
    p = policy(
        '[regions.ca]\nconsent = "all-party"\n[regions.uk]\nconsent = "one-party"\n'
        '[regions.x]\nconsent = "none"\n'
    )
    for consent in ("declined", "unknown"):
        d = p.decide(call(region="ca", consent=consent))
        assert not d.recorded and d.rule == "consent" and d.consent == consent
        assert "every party's consent" in d.reason
    assert p.decide(call(region="ca", consent="granted")).recorded
    # one-party: the agent's side consents; none: consent is not asked
    assert p.decide(call(region="uk", consent="declined")).recorded
    assert p.decide(call(region="x", consent="declined")).recorded
    # an unknown region, or none without a default_region: refused naming the regions
    with pytest.raises(
        InputError, match="region 'fr' is unknown: the server's regions are ca, uk, x"
    ):
        p.decide(call(region="fr"))
    with pytest.raises(InputError, match="names no region"):
        p.decide(call())
    p = policy('[recording]\ndefault_region = "ca"\n[regions.ca]\nconsent = "all-party"\n')
    assert p.decide(call()).region == "ca" and not p.decide(call()).recorded


def test_consent_is_checked_before_the_rules() -> None:
    p = policy(RULES + '[regions.ca]\nconsent = "all-party"\n')
    d = p.decide(call(skill_group="support", region="ca", consent="declined"))
    assert not d.recorded and d.rule == "consent"


SAMPLE = """
[recording]
record = "rules"
default = "skip"
[[recording.rule]]
name = "qa-sample"
percent = 20
action = "record"
"""


def test_sampling_20_percent_of_500_calls_deterministic() -> None:
    ids = [f"call-{i:04d}" for i in range(500)]
    p = policy(SAMPLE)
    first = [p.decide(call(i)).recorded for i in ids]
    share = sum(first) / len(ids)
    assert 0.17 <= share <= 0.23, share
    # a retry, and another server with the same key, decide the same
    assert [policy(SAMPLE).decide(call(i)).recorded for i in ids] == first
    assert [p.decide(call(i)).rule for i in ids if p.decide(call(i)).recorded] == [
        "qa-sample"
    ] * sum(first)
    # a different key samples other calls (nobody can pick ids that dodge it without it)
    other = [policy(SAMPLE, key=bytes(32)).decide(call(i)).recorded for i in ids]
    assert other != first
    # another tenant's call of the same id is sampled on its own
    assert [p.decide(call(i, tenant="t2")).recorded for i in ids] != first


def test_sampled_out_calls_fall_through_to_the_next_rule() -> None:
    p = policy(SAMPLE + '[[recording.rule]]\nname = "rest"\naction = "skip"\n')
    rules = {p.decide(call(f"c{i}")).rule for i in range(200)}
    assert rules == {"qa-sample", "rest"}
    assert policy(SAMPLE.replace("percent = 20", "percent = 0")).decide(call()).rule == "default"


def test_sampling_key_lives_with_the_vault(tmp_path: Path) -> None:
    a = RecordingPolicy.parse(tomllib.loads(SAMPLE), data_dir=tmp_path / "v")
    key = tmp_path / "v" / "keys" / "recording.key"
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    b = RecordingPolicy.parse(tomllib.loads(SAMPLE), data_dir=tmp_path / "v")  # a restart
    ids = [f"x{i}" for i in range(300)]
    assert [a.decide(call(i)).recorded for i in ids] == [b.decide(call(i)).recorded for i in ids]
    # a second server shares the key through key_file
    shared = SAMPLE.replace('record = "rules"', f'record = "rules"\nkey_file = "{key}"')
    c = RecordingPolicy.parse(tomllib.loads(shared), data_dir=tmp_path / "other")
    assert [a.decide(call(i)).recorded for i in ids] == [c.decide(call(i)).recorded for i in ids]


def test_vip_rule_matches_keyed_hashes_only(tmp_path: Path) -> None:
    key = load_key(tmp_path / "keys" / "recording.key", create=True)
    vips = VipList(tmp_path / "keys" / "vip-hashes", key)
    assert vips.add(["+1 (555) 010-2000", "+15550102000"]) == 1  # the same number
    text = (tmp_path / "keys" / "vip-hashes").read_text()
    assert "555" not in text and text.strip() == number_hash(key, "+15550102000")
    p = RecordingPolicy.parse(
        tomllib.loads(
            '[recording]\nrecord = "rules"\n[[recording.rule]]\nname = "vip"\nvip = true\n'
            'action = "skip"\n'
        ),
        data_dir=tmp_path,
    )
    assert not p.decide(call(customer_number="001 555 010 2000")).recorded
    assert p.decide(call(customer_number="+15550102001")).recorded
    assert p.decide(call()).recorded  # no number: not a VIP
    # the server rereads the list when it changes
    vips.remove(["+15550102000"])
    assert p.decide(call(customer_number="+15550102000")).recorded
    assert normalize_number("00 44 20.7946") == "+44207946"
    with pytest.raises(InputError, match="digits"):
        normalize_number("call me")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[recording]\nrecord = "some"\n', '[recording] record: "all" or "rules"'),
        ('[recording]\nrecrd = "all"\n', "[recording]: unknown key(s) recrd"),
        (
            '[recording]\n[[recording.rule]]\naction = "record"\n',
            'record = "all" records every call; rules need record = "rules"',
        ),
        (
            '[recording]\nrecord = "rules"\n[[recording.rule]]\nname = "a"\naction = "keep"\n',
            "[[recording.rule]] #1 (a): action must be one of record, skip",
        ),
        (
            '[recording]\nrecord = "rules"\n[[recording.rule]]\naction = "skip"\npercent = -1\n',
            "[[recording.rule]] #1 (rule 1): percent -1 is outside 0 to 100",
        ),
        (
            '[recording]\nrecord = "rules"\n[[recording.rule]]\naction = "skip"\nskil = "a"\n',
            "#1: unknown key(s) skil",
        ),
        (
            '[recording]\nrecord = "rules"\n[[recording.rule]]\naction = "skip"\n'
            'direction = "sideways"\n',
            "direction 'sideways': inbound, outbound or internal",
        ),
        (
            '[recording]\nrecord = "rules"\n[[recording.rule]]\naction = "skip"\nvip = "yes"\n',
            "vip must be true or false",
        ),
        ('[regions.ca]\nconsent = "two-party"\n', "[regions.ca] consent: one of none, one-party"),
        ('[recording]\ndefault_region = "mars"\n', "default_region 'mars' is not a [regions.X]"),
        (
            '[recording]\nrecord = "rules"\n[[recording.rule]]\nname = "a"\naction = "skip"\n'
            '[[recording.rule]]\nname = "a"\naction = "skip"\n',
            "rule names must differ: a",
        ),
    ],
)
def test_bad_policy_is_refused_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as e:
        policy(text)
    assert message in str(e.value)
