"""The retention rule lives in one place (``policy.combine``): a reapply and a tag
change decide alike, including a governance end whose mode a proposal would lower."""

from __future__ import annotations

from typing import Any

from callvault.lifecycle import policy as pol
from callvault.lifecycle.tags import bound_retention

NOW = 100
GOV = {"until_us": 1000, "rule": "g", "mode": "governance", "set_us": 1}
COMP = {"until_us": 1000, "rule": "a", "mode": "compliance", "set_us": 1}
SAME_END_DEFAULT = {"until_us": 1000, "rule": "d", "mode": "default", "set_us": 2}
LATER_DEFAULT = {"until_us": 3000, "rule": "d", "mode": "default", "set_us": 2}
SHORT = {"until_us": 500, "rule": "b", "mode": "default", "set_us": 2}


def test_a_governance_mode_is_lowered_only_when_asked() -> None:
    assert pol.combine(GOV, SAME_END_DEFAULT, now_us=NOW) == (GOV, "kept-governance")
    assert pol.combine(GOV, SAME_END_DEFAULT, now_us=NOW, shorten_governance=True) == (
        SAME_END_DEFAULT,
        "changed",
    )
    out, what = pol.combine(GOV, LATER_DEFAULT, now_us=NOW)
    assert what == "changed" and out == dict(LATER_DEFAULT, mode="governance")
    # an end already past protects nothing
    assert pol.combine(GOV, SHORT, now_us=2000) == (SHORT, "changed")


def test_tags_and_reapply_decide_alike() -> None:
    props: list[dict[str, Any]] = [GOV, COMP, SAME_END_DEFAULT, LATER_DEFAULT, SHORT]
    olds: list[dict[str, Any] | None] = [*props, None]
    for old in olds:
        for new in props:
            for admin in (False, True):
                for now in (NOW, 2000):
                    want, _ = pol.combine(old, new, now_us=now, shorten_governance=admin)
                    got, said = bound_retention(old, new, now_us=now, may_shorten_governance=admin)
                    assert got == want, (old, new, admin, now)
                    if got is not old:  # every change is said
                        assert said, (old, new, admin, now)
