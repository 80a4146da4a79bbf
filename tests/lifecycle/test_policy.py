"""The retention policy (callvault.lifecycle.policy, docs/policy.md): parsing with the
line of each error, presets, durations (calendar months and years, leap days),
matching order, the stored policy, retention at seal, reapply never shortening a
compliance end, and the governance override of erasure. A real vault throughout."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from callvault.lifecycle import policy as pol
from callvault.media import sample
from callvault.store.index import CallEntry
from callvault.vault import Retained, Vault, VaultError

POLICY = """\
# the issue's example
[retention]
default = "180d"

[[retention.rule]]            # first match wins
name = "vip"
match = { tag = "vip" }
keep = "7y"
mode = "compliance"

[[retention.rule]]
match = { tag = "complaint" }
keep = "2y"
mode = "governance"

[[retention.rule]]
name = "gold billing"
match = { skill_group = "billing", meta.tier = ["gold", "platinum"] }
keep = "1y"
"""


def us(year: int, month: int, day: int) -> int:
    return int(datetime(year, month, day, tzinfo=UTC).timestamp()) * 1_000_000


def entry(**kw: object) -> CallEntry:
    e = CallEntry(tenant=str(kw.pop("tenant", "default")), call_id="c", start_us=0)
    e.end_us = us(2026, 1, 31)
    for k, v in kw.items():
        setattr(e, k, v)
    return e


# ---- parsing ---------------------------------------------------------------------


def test_the_issue_example_loads_with_names_modes_and_order() -> None:
    p = pol.Policy.load(POLICY)
    assert [r.name for r in p.rules] == ["vip", "rule 2", "gold billing"]
    assert [r.mode for r in p.rules] == ["compliance", "governance", "default"]
    assert (p.default.name, str(p.default.keep), p.default.mode) == ("default", "180d", "default")
    assert p.text == POLICY  # stored as given, comments kept
    assert len(p.sha256) == 64


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        # semantic errors: the line of the offending key or table
        (POLICY.replace('keep = "7y"', 'keep = "7 years"'), 8, "not a duration"),
        (POLICY.replace('mode = "governance"', 'mode = "strict"'), 14, "not a mode"),
        (POLICY.replace('default = "180d"', 'default = "-1d"'), 3, "not a duration"),
        (POLICY.replace('default = "180d"', "default = 180"), 3, "not a duration"),
        (POLICY.replace('default = "180d"', 'default = "999999y"'), 3, "not a duration"),
        (POLICY.replace('default = "180d"', 'default = "10001y"'), 3, "at most 10000"),
        (POLICY.replace('keep = "2y"\n', ""), 11, "needs keep"),
        (POLICY.replace('match = { tag = "complaint" }\n', ""), 11, "needs match"),
        (POLICY.replace('match = { tag = "vip" }', "match = {}"), 7, "at least one key"),
        (POLICY.replace('match = { tag = "vip" }', "match = { tag = 1.5 }"), 7, "match value"),
        (POLICY.replace('name = "vip"', 'name = "gold billing"'), 17, "used twice"),
        (POLICY.replace('name = "vip"', 'name = ""'), 6, "1 to 64"),
        (POLICY.replace('keep = "7y"', 'keep = "7y"\nkeeps = "1d"'), 9, "unknown key"),
        (POLICY + "\n[holds]\nx = 1\n", 21, "unknown key"),
        (
            POLICY.replace('default = "180d"', 'default = "180d"\nmatch = { tag = "x" }'),
            4,
            "unknown key",
        ),
        (
            POLICY.replace('default = "180d"', 'default = "180d"\npreset = "finance-mifid2"'),
            3,
            "not both",
        ),
        (POLICY.replace('keep = "1y"', 'preset = "sox"'), 19, "unknown preset"),
        (
            POLICY.replace('match = { tag = "vip" }', 'match = { customer_number = "+1555" }'),
            7,
            "not kept in clear",
        ),
        ("# nothing\n", 0, "[retention] is required"),
        ('x = 1\n[policy.retention]\ndefault = "1d"\n', 2, "serve --config's"),
        ('[retention]\nmode = "compliance"\n', 1, "needs default"),
        ('[retention]\ndefault = "1d"\nrule = 3\n', 3, "array of tables"),
        # syntax errors: tomllib's line
        (POLICY.replace('keep = "2y"', "keep = 2y"), 13, "not TOML"),
        ('[retention]\ndefault = "1d"\n[[retention.rule]\n', 3, "not TOML"),
        ('[retention]\ndefault = "1d', 2, "not TOML"),
    ],
)
def test_a_bad_file_is_refused_with_its_line_and_reason(text: str, line: int, words: str) -> None:
    with pytest.raises(pol.PolicyError) as err:
        pol.Policy.load(text, where="p.toml")
    assert err.value.line == line, str(err.value)
    assert words in err.value.reason
    assert str(err.value).startswith(f"p.toml line {line}: " if line else "p.toml: ")


def test_a_config_section_names_the_config_lines_and_stores_the_section_alone() -> None:
    config = 'max_open_calls = 10\n\n[policy.retention]\ndefault = "30d"\n\n' + (
        '[[policy.retention.rule]]\nmatch = { agent = "ann" }\nkeep = "3x"\n'
    )
    with pytest.raises(pol.PolicyError) as err:
        pol.Policy.load(config, within="policy", where="--config")
    assert err.value.line == 8 and "policy.retention.rule[1].keep" in str(err.value)
    p = pol.Policy.load(config.replace('"3x"', '"3w"'), within="policy")
    assert p.text.startswith("[retention]\n") and "max_open_calls" not in p.text
    again = pol.Policy.load(p.text)  # the stored text is a policy file of the same rules
    assert again.doc() == p.doc() and again.sha256 == p.sha256
    # the same section given as a parsed table (JSON configs) is the same policy
    same = pol.Policy.from_doc(
        {"retention": {"default": "30d", "rule": [{"match": {"agent": "ann"}, "keep": "3w"}]}},
        prefix=("policy",),
    )
    assert same.sha256 == p.sha256


# ---- durations -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keep", "start", "end"),
    [
        ("180d", us(2026, 1, 31), us(2026, 7, 30)),
        ("2w", us(2026, 12, 25), us(2027, 1, 8)),
        ("1m", us(2026, 1, 15), us(2026, 2, 15)),
        ("1m", us(2026, 1, 31), us(2026, 3, 1)),  # no 31 February: 1 March
        ("1m", us(2024, 1, 31), us(2024, 3, 1)),  # nor 30/31 in a leap February
        ("12m", us(2026, 3, 1), us(2027, 3, 1)),
        ("1y", us(2024, 2, 29), us(2025, 3, 1)),  # a leap day: never earlier
        ("4y", us(2024, 2, 29), us(2028, 2, 29)),  # the next leap year has it
        ("5y", us(2023, 3, 1), us(2028, 3, 1)),  # across a leap day: calendar, not 5*365
        ("1y", us(2026, 12, 31), us(2027, 12, 31)),
        ("0d", us(2026, 5, 5), us(2026, 5, 5)),
        ("forever", us(2026, 5, 5), pol.FOREVER_US),
        ("10000y", us(2026, 5, 5), pol.FOREVER_US),  # capped at 9999-12-31T23:59:59Z
    ],
)
def test_durations_count_days_exactly_and_months_years_on_the_calendar(
    keep: str, start: int, end: int
) -> None:
    assert pol.Duration.parse(keep).after(start) == end


def test_the_time_of_day_is_kept() -> None:
    start = us(2024, 2, 29) + 13 * 3600 * 1_000_000 + 5
    assert pol.Duration.parse("1y").after(start) == us(2025, 3, 1) + 13 * 3600 * 1_000_000 + 5


# ---- matching ----------------------------------------------------------------------


def test_first_match_wins_and_every_key_of_a_match_must_hold() -> None:
    p = pol.Policy.load(POLICY)
    assert p.rule_for(entry(tags=["complaint", "vip"])).name == "vip"  # first, not best
    assert p.rule_for(entry(tags=["complaint"])).name == "rule 2"
    assert p.rule_for(entry(skill_group="billing", extra={"tier": "gold"})).name == "gold billing"
    assert p.rule_for(entry(skill_group="billing", extra={"tier": "platinum"})).name == (
        "gold billing"
    )
    assert p.rule_for(entry(skill_group="billing", extra={"tier": "silver"})).name == "default"
    assert p.rule_for(entry(skill_group="billing")).name == "default"
    assert p.rule_for(entry(extra={"tier": "gold"})).name == "default"
    # the tags a caller gives replace the call's own (the tags lane's recompute)
    assert p.rule_for(entry(tags=["vip"]), tags=["complaint"]).name == "rule 2"


def test_fields_tenant_direction_and_plain_extra_keys_match() -> None:
    p = pol.Policy.load(
        '[retention]\ndefault = "1d"\n'
        '[[retention.rule]]\nmatch = { tenant = "bank", direction = "outbound" }\nkeep = "5y"\n'
        '[[retention.rule]]\nmatch = { campaign = "x1" }\nkeep = "2d"\n'  # plain: an extra key
        '[[retention.rule]]\nmatch = { "meta.vip" = true }\nkeep = "3d"\n'
    )
    assert p.rule_for(entry(tenant="bank", direction="outbound")).name == "rule 1"
    assert p.rule_for(entry(tenant="bank", direction="inbound")).name == "default"
    assert p.rule_for(entry(extra={"campaign": "x1"})).name == "rule 2"
    assert p.rule_for(entry(extra={"vip": "true"})).name == "rule 3"
    assert p.rule_for(entry(extra={"vip": True})).name == "rule 3"


def test_retention_for_counts_from_the_calls_end_and_names_rule_mode_and_policy() -> None:
    p = pol.Policy.load(POLICY)
    e = entry(tags=["vip"])
    r = p.retention_for(e, now_us=123)
    assert r == {
        "until_us": us(2033, 1, 31),
        "rule": "vip",
        "mode": "compliance",
        "set_us": 123,
        "policy": p.sha256,
    }
    assert p.retention_for(e, now_us=1, end_us=us(2030, 1, 1))["until_us"] == us(2037, 1, 1)  # type: ignore[index]


def test_presets_give_their_period_mode_and_source() -> None:
    p = pol.Policy.load(
        '[retention]\npreset = "finance-mifid2"\n'
        '[[retention.rule]]\nmatch = { tag = "fca-request" }\npreset = "finance-mifid2-7y"\n'
        '[[retention.rule]]\nmatch = { skill_group = "clinic" }\npreset = "hipaa-documentation"\n'
    )
    assert (str(p.default.keep), p.default.mode) == ("5y", "compliance")
    assert [str(r.keep) for r in p.rules] == ["7y", "6y"]
    assert all(r.mode == "compliance" for r in p.rules)
    assert "Article 16(7)" in p.default.doc()["source"]
    assert "164.316" in p.rules[1].doc()["source"]
    for name, preset in pol.PRESETS.items():  # every preset names where it comes from
        assert preset.source and preset.mode in pol.MODES, name
        pol.Duration.parse(preset.keep)
    assert pol.Policy.load(p.to_toml()).doc() == p.doc()


# ---- combine: what a recompute may change -------------------------------------------


def test_combine_never_shortens_compliance_and_shortens_governance_only_when_asked() -> None:
    now = us(2026, 6, 1)
    comp = {"until_us": us(2030, 1, 1), "rule": "vip", "mode": "compliance"}
    gov = {"until_us": us(2028, 1, 1), "rule": "complaint", "mode": "governance"}
    short = {"until_us": us(2027, 1, 1), "rule": "default", "mode": "default"}
    longer = {"until_us": us(2031, 1, 1), "rule": "x", "mode": "governance"}
    assert pol.combine(comp, short, now_us=now) == (comp, "kept-compliance")
    assert pol.combine(comp, short, now_us=now, shorten_governance=True) == (
        comp,
        "kept-compliance",
    )
    r, what = pol.combine(comp, longer, now_us=now)  # later, but weaker: later, compliance
    assert what == "changed" and r["until_us"] == us(2031, 1, 1) and r["mode"] == "compliance"
    assert pol.combine(gov, short, now_us=now) == (gov, "kept-governance")
    assert pol.combine(gov, short, now_us=now, shorten_governance=True) == (short, "changed")
    assert pol.combine(gov, longer, now_us=now) == (longer, "changed")
    assert pol.combine(None, short, now_us=now) == (short, "changed")
    assert pol.combine(short, dict(short, set_us=5), now_us=now)[1] == "unchanged"
    # an end already past protects nothing: it may be replaced by anything
    assert pol.combine(comp, short, now_us=us(2030, 1, 2)) == (short, "changed")


# ---- a real vault ------------------------------------------------------------------


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("cap") / "call.pcap"
    tone = (3000 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)).astype(np.int16)
    sample.write_capture(
        p,
        [
            (tone, sample.LegPlan(ssrc=1, src=("10.0.0.1", 4000), dst=("10.0.0.2", 5000))),
            (
                tone,
                sample.LegPlan(law=8, ssrc=2, src=("10.0.0.2", 5002), dst=("10.0.0.1", 4002)),
            ),
        ],
        t0=us(2026, 1, 31) / 1e6,
    )
    return p


NOW = us(2026, 3, 1)


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Vault]:
    v = Vault.open(tmp_path / "data")
    v.clock = lambda: NOW
    yield v
    v.close()


def test_the_stored_policy_seals_calls_with_their_retention_end(
    vault: Vault, capture: Path
) -> None:
    assert pol.stored(vault) is None and pol.attach(vault) is None
    vault.import_call("before", [str(capture)])
    assert vault.get_call("before").retention is None  # no policy: none
    p = pol.Policy.load(POLICY)
    a = pol.store(vault, p, by="ops")
    assert (a.sha256, a.applied_us, a.applied_by, a.source) == (p.sha256, NOW, "ops", "apply")
    assert pol.attach(vault) is not None
    vault.import_call("v", [str(capture)], tags=["vip"])
    vault.import_call("o", [str(capture)])
    v, o = vault.get_call("v"), vault.get_call("o")
    assert v.retention is not None and o.retention is not None
    assert (v.retention["rule"], v.retention["mode"]) == ("vip", "compliance")
    assert v.retention["until_us"] == pol.Duration.parse("7y").after(v.end_us)
    assert o.retention["until_us"] == v.end_us + 180 * pol.DAY_US
    assert v.retention["policy"] == p.sha256 and v.retention["set_us"] == NOW
    # the retention is in the sealed manifest: a rebuilt index has it again
    vault.reindex()
    assert vault.get_call("v").retention == v.retention
    assert vault.verify_call("v") == []
    # the files: the text as given, its record, every version, the history
    d = Path(vault.path) / "policy"
    assert (d / "current.toml").read_text() == POLICY
    assert json.loads((d / "current.json").read_text())["sha256"] == p.sha256
    assert (d / "versions" / f"{p.sha256}.toml").read_text() == POLICY
    assert len((d / "history.jsonl").read_text().splitlines()) == 1


def test_a_stored_policy_edited_outside_callvault_is_refused(vault: Vault) -> None:
    pol.store(vault, pol.Policy.load(POLICY), by="ops")
    p0 = pol.Policy.load(POLICY)
    # current.toml is a copy to read: editing it changes nothing
    (Path(vault.path) / "policy" / "current.toml").write_text(POLICY.replace('"7y"', '"1d"'))
    assert pol.stored(vault).sha256 == p0.sha256  # type: ignore[union-attr]
    # the text in force, edited: refused, never used
    path = Path(vault.path) / "policy" / "versions" / f"{p0.sha256}.toml"
    path.write_text(POLICY.replace('"7y"', '"1d"'))
    with pytest.raises(VaultError, match="does not match the sha256"):
        pol.stored(vault)
    with pytest.raises(VaultError, match="does not match the sha256"):
        pol.attach(vault)  # nothing is sealed under a policy nobody applied
    # applying a policy again repairs it
    p = pol.Policy.load(POLICY.replace('"180d"', '"90d"'))
    pol.store(vault, p, by="ops")
    assert pol.stored(vault) is not None and pol.stored(vault).sha256 == p.sha256  # type: ignore[union-attr]


def test_reapply_changes_only_what_differs_and_never_shortens_compliance(
    vault: Vault, capture: Path
) -> None:
    pol.store(vault, pol.Policy.load(POLICY), by="ops")
    pol.attach(vault)
    vault.import_call("vip", [str(capture)], tags=["vip"])
    vault.import_call("complaint", [str(capture)], tags=["complaint"])
    vault.import_call("plain", [str(capture)])
    vault.import_call("gone", [str(capture)])
    vault.erase("gone", reason="test")
    before = {c: vault.get_call(c).retention for c in ("vip", "complaint", "plain")}
    # a new policy: everything 30 days, except plain calls a year
    new = pol.Policy.load(
        '[retention]\ndefault = "1y"\n'
        '[[retention.rule]]\nname = "short"\nmatch = { tag = ["vip", "complaint"] }\n'
        'keep = "30d"\nmode = "governance"\n'
    )
    by = {"name": "ops", "role": "admin", "tenant": None, "via": "local"}
    done = pol.reapply(vault, new, by=by)
    assert done.doc() == {
        "calls": 3,
        "changed": 1,
        "unchanged": 0,
        "kept_compliance": 1,
        "kept_governance": 1,
    }
    assert vault.get_call("vip").retention == before["vip"]  # compliance: kept whole
    assert vault.get_call("complaint").retention == before["complaint"]  # no override asked
    plain = vault.get_call("plain")
    assert plain.retention is not None and plain.retention["rule"] == "default"
    assert plain.retention["until_us"] == pol.Duration.parse("1y").after(plain.end_us)
    assert plain.lifecycle_count == 1 and vault.get_call("vip").lifecycle_count == 0
    assert vault.get_call("gone").state == "erased" and vault.get_call("gone").lifecycle_count == 0
    # again: nothing changes; then an admin shortens governance with a reason
    assert pol.reapply(vault, new, by=by).changed == 0
    with pytest.raises(pol.InputError, match="needs a reason"):
        pol.reapply(vault, new, by=by, shorten_governance=True)
    done = pol.reapply(vault, new, by=by, reason="case closed", shorten_governance=True)
    assert (done.changed, done.kept_compliance) == (1, 1)
    c = vault.get_call("complaint")
    assert c.retention is not None and c.retention["rule"] == "short"
    assert c.retention["until_us"] == c.end_us + 30 * pol.DAY_US
    assert vault.get_call("vip").retention == before["vip"]


def test_erase_refuses_retained_calls_and_an_override_lifts_governance_only(
    vault: Vault, capture: Path
) -> None:
    pol.store(vault, pol.Policy.load(POLICY), by="ops")
    pol.attach(vault)
    vault.import_call("vip", [str(capture)], tags=["vip"])
    vault.import_call("complaint", [str(capture)], tags=["complaint"])
    vault.import_call("plain", [str(capture)])
    with pytest.raises(Retained, match="compliance retention until 2033-01-31"):
        vault.erase("vip", reason="asked", override_governance=True)
    with pytest.raises(Retained, match="governance retention"):
        vault.erase("complaint", reason="asked")
    e = vault.get_call("complaint")
    reason = pol.override_reason(vault, e, "customer asked")
    assert reason.startswith("customer asked [governance retention until 2028-01-31")
    assert "rule rule 2" in reason and "overridden" in reason
    vault.erase("complaint", reason=reason, override_governance=True)
    gone = vault.get_call("complaint")
    assert gone.state == "erased" and "overridden" in gone.erase_reason
    # a call with nothing to override keeps its reason as given
    plain = vault.get_call("plain")
    assert pol.override_reason(vault, plain, "asked") == "asked"
    # the note fits the reason's bound
    long = pol.override_reason(vault, vault.get_call("vip"), "x" * 1024)
    assert long == "x" * 1024  # compliance: no override applies, nothing added


def test_the_example_of_docs_policy_md_is_a_valid_policy() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "policy.md").read_text()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    p = pol.Policy.load(example)
    assert [r.name for r in p.rules] == ["vip", "rule 2", "gold billing"]
    for name in pol.PRESETS:  # every preset is documented with its source
        assert f"`{name}`" in doc


def test_recompute_for_new_tags_extends_and_never_shortens_compliance(
    vault: Vault, capture: Path
) -> None:
    vault.import_call("x", [str(capture)])
    assert pol.recompute(vault, vault.get_call("x"), tags=["vip"]) == (None, "no-policy")
    pol.store(vault, pol.Policy.load(POLICY), by="ops")
    pol.attach(vault)
    vault.import_call("c", [str(capture)], tags=["complaint"])
    e = vault.get_call("c")
    r, what = pol.recompute(vault, e, tags=["complaint", "vip"])  # vip comes first
    assert what == "changed" and r is not None and (r["rule"], r["mode"]) == ("vip", "compliance")
    e = vault.change("c", op="tag", changes={"tags": ["complaint", "vip"], "retention": r})
    assert e.retention == r
    # the vip tag removed again: the compliance end stays
    assert pol.recompute(vault, e, tags=["complaint"]) == (r, "kept-compliance")
    assert pol.recompute(vault, e) == (r, "unchanged")
