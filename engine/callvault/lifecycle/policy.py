"""How long calls are kept: the retention policy (docs/policy.md "Retention").

A policy is one TOML file::

    [retention]
    default = "180d"                 # or preset = "finance-mifid2"
    [[retention.rule]]               # first match wins
    name = "vip"
    match = { tag = "vip" }
    keep = "7y"
    mode = "compliance"

``Policy.load(text)`` checks it whole and raises ``PolicyError`` naming the line and
the reason; ``Policy.retention_for(entry, now_us=...)`` is the retention of a call:
``{"until_us", "rule", "mode", "set_us", "policy"}``, its end counted from the call's
end. The policy in force is stored in the data directory (``DATA/policy/``,
docs/format.md 10.4): ``store`` writes it (atomically, every version kept), ``stored``
reads it, ``attach`` makes the vault seal each call with its retention end
(``Vault.retention_at_seal``), and ``reapply`` recomputes the retention of every
sealed call under a new policy (compliance ends are never shortened: ``combine``).
"""

from __future__ import annotations

import calendar
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from callvault.durable import fsync_dir, write_atomic
from callvault.errors import InputError
from callvault.ids import MAX_ERASE_REASON_BYTES
from callvault.store.index import CallEntry
from callvault.vault import Vault, VaultError
from callvault.vault.lifecycle import utc

MODES = ("compliance", "governance", "default")
# "forever": the last second a retention end can name (a date every tool can print)
FOREVER_US = 253402300799_000000  # 9999-12-31T23:59:59Z
DAY_US = 86_400_000_000
MAX_COUNT = 10_000  # units in one duration: 10,000 days, weeks, months or years at most
DURATION = re.compile(r"^([0-9]{1,5})([dwmy])$")
DURATION_HELP = 'a duration: Nd (days), Nw (weeks), Nm (months), Ny (years), or "forever"'
# match keys that name a CallEntry field; any other key names an `extra` key
FIELD_KEYS = ("tenant", "tag", "skill_group", "agent", "direction")
RETENTION_KEYS = ("default", "mode", "preset", "rule")
RULE_KEYS = ("name", "match", "keep", "mode", "preset")
POLICY_DIR = "policy"  # under DATA
CURRENT_TOML = "current.toml"
CURRENT_JSON = "current.json"
HISTORY = "history.jsonl"
VERSIONS = "versions"


class PolicyError(InputError):
    """A policy refused: ``line`` (1-based; 0 when unknown) and ``reason``."""

    def __init__(self, line: int, reason: str, *, where: str = "policy") -> None:
        self.line = line
        self.reason = reason
        at = f"{where} line {line}" if line else where
        super().__init__(f"{at}: {reason}")


@dataclass(frozen=True)
class Preset:
    """A regime's retention: its period, mode and where the period comes from."""

    keep: str
    mode: str
    source: str


# Only periods read in the texts cited (docs/policy.md "Presets"); a preset is a
# minimum the law sets, so its mode is compliance: nobody shortens it.
PRESETS: dict[str, Preset] = {
    "finance-mifid2": Preset(
        "5y",
        "compliance",
        "MiFID II, Directive 2014/65/EU, Article 16(7): records of telephone conversations "
        "kept for five years",
    ),
    "finance-mifid2-7y": Preset(
        "7y",
        "compliance",
        "MiFID II, Directive 2014/65/EU, Article 16(7): up to seven years where the "
        "competent authority requests it",
    ),
    "hipaa-documentation": Preset(
        "6y",
        "compliance",
        "HIPAA, 45 CFR 164.316(b)(2)(i) and 164.530(j)(2): documentation kept six years "
        "from its creation or the date it was last in effect",
    ),
}


@dataclass(frozen=True)
class Duration:
    """``count`` days, weeks, months or years (``unit`` d/w/m/y); None: forever."""

    count: int | None
    unit: str = ""

    @classmethod
    def parse(cls, text: object) -> Duration:
        if text == "forever":
            return cls(None)
        m = DURATION.match(text) if isinstance(text, str) else None
        if m is None:
            raise ValueError(f"{text!r} is not {DURATION_HELP}")
        n = int(m.group(1))
        if n > MAX_COUNT:
            unit = {"d": "days", "w": "weeks", "m": "months", "y": "years"}[m.group(2)]
            raise ValueError(f'{text!r}: at most {MAX_COUNT} {unit} (or "forever")')
        return cls(n, m.group(2))

    def __str__(self) -> str:
        return "forever" if self.count is None else f"{self.count}{self.unit}"

    def after(self, start_us: int) -> int:
        """The end of this duration from ``start_us`` (unix µs, counted in UTC).
        Days and weeks are exact (86,400 s a day); months and years are calendar
        steps to the same day and time of day; a day the target month lacks (31 Jan +
        1m, 29 Feb + 1y) moves to the first day of the next month, so the end is never
        earlier than the calendar says. Capped at FOREVER_US."""
        if self.count is None:
            return FOREVER_US
        if self.unit in "dw":
            days = self.count * (7 if self.unit == "w" else 1)
            return min(FOREVER_US, start_us + days * DAY_US)
        months = self.count * (12 if self.unit == "y" else 1)
        t = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=start_us)
        index = t.year * 12 + (t.month - 1) + months
        year, month = divmod(index, 12)
        if year > 9999:
            return FOREVER_US
        month += 1
        if t.day > calendar.monthrange(year, month)[1]:  # no such day: the next month's 1st
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
            if year > 9999:
                return FOREVER_US
            day = 1
        else:
            day = t.day
        end = t.replace(year=year, month=month, day=day)
        return min(
            FOREVER_US, (end - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
        )


MAX_POLICY_BYTES = 64 * 1024  # a policy file (docs/policy.md "Retention")
MAX_RULES = 1000  # [[retention.rule]] tables


@dataclass(frozen=True)
class Rule:
    name: str
    keep: Duration
    mode: str
    # (key, allowed values): "tenant", "tag", ..., or "meta.KEY" for an extra key
    match: tuple[tuple[str, tuple[str, ...]], ...] = ()
    preset: str = ""

    def matches(self, e: CallEntry, tags: Iterable[str]) -> bool:
        for key, values in self.match:
            if key == "tag":
                if not any(t in values for t in tags):
                    return False
            elif key.startswith("meta."):
                value = e.extra.get(key[5:]) if isinstance(e.extra, dict) else None
                if value is None or _text(value) not in values:
                    return False
            elif getattr(e, key) not in values:
                return False
        return True

    def doc(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "keep": str(self.keep), "mode": self.mode}
        if self.match:
            out["match"] = {k: list(v) if len(v) > 1 else v[0] for k, v in self.match}
        if self.preset:
            out["preset"] = self.preset
            out["source"] = PRESETS[self.preset].source
        return out


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class _Lines:
    """Where each key and table of a TOML text is (tomllib keeps no positions): a
    line scanner for the shapes a policy uses (tables, arrays of tables, key =
    value, inline tables). ``line(path)``: the line of the longest prefix of
    ``path`` it saw (0: none)."""

    KEY = re.compile(r'\s*((?:[A-Za-z0-9_-]+|"[^"]*")(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"))*)\s*=')
    INLINE_KEY = re.compile(r'[{,]\s*((?:[A-Za-z0-9_-]+|"[^"]*")(?:\.(?:[A-Za-z0-9_-]+))*)\s*=')

    def __init__(self, text: str) -> None:
        self.at: dict[tuple[Any, ...], int] = {}
        table: tuple[Any, ...] = ()
        counts: dict[tuple[Any, ...], int] = {}
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0] if '"' not in raw else raw
            s = line.strip()
            if s.startswith("[["):
                path = self._dotted(s[2 : s.find("]]")])
                i = counts.get(path, 0)
                counts[path] = i + 1
                table = (*path, i)
                for k in range(1, len(table) + 1):  # [[a.b]] also defines a
                    self.at.setdefault(table[:k], n)
            elif s.startswith("["):
                table = self._dotted(s[1 : s.find("]")])
                for k in range(1, len(table) + 1):
                    self.at.setdefault(table[:k], n)
            else:
                m = self.KEY.match(line)
                if m is None:
                    continue
                key = (*table, *self._dotted(m.group(1)))
                self.at.setdefault(key, n)
                rest = line[m.end() :]
                if rest.lstrip().startswith("{"):
                    for inner in self.INLINE_KEY.finditer(rest):
                        self.at.setdefault((*key, *self._dotted(inner.group(1))), n)

    @staticmethod
    def _dotted(text: str) -> tuple[str, ...]:
        parts = re.findall(r'"([^"]*)"|([A-Za-z0-9_-]+)', text)
        return tuple(a or b for a, b in parts)

    def line(self, path: tuple[Any, ...]) -> int:
        for k in range(len(path), 0, -1):
            n = self.at.get(tuple(path[:k]))
            if n:
                return n
        return 0


class _Checker:
    def __init__(self, text: str | None, prefix: tuple[str, ...], where: str) -> None:
        self.lines = _Lines(text) if text is not None else None
        self.prefix = prefix
        self.where = where

    def fail(self, path: tuple[Any, ...], reason: str) -> PolicyError:
        line = self.lines.line((*self.prefix, *path)) if self.lines is not None else 0
        return PolicyError(line, f"{_name((*self.prefix, *path))}: {reason}", where=self.where)


def _name(path: tuple[Any, ...]) -> str:
    """retention.rule[2].keep: rules counted from 1 as people do."""
    out = ""
    for p in path:
        out += f"[{p + 1}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out or "(top)"


class Policy:
    """A checked retention policy; ``text`` the TOML it was read from (what is
    stored), ``sha256`` the hex digest of its UTF-8 bytes."""

    def __init__(self, text: str, default: Rule, rules: list[Rule]) -> None:
        self.text = text
        self.default = default
        self.rules = rules
        self.sha256 = hashlib.sha256(text.encode()).hexdigest()

    @classmethod
    def load(cls, text: str, *, within: str = "", where: str = "policy") -> Policy:
        """The policy of a TOML text (``within``: the policy is that table of the
        text, e.g. "policy" for `serve --config`'s ``[policy]``). PolicyError names
        the line and the reason. At most MAX_POLICY_BYTES of UTF-8 and MAX_RULES rules
        (every seal walks the rules)."""
        if len(text.encode()) > MAX_POLICY_BYTES:
            raise PolicyError(0, f"the policy is larger than {MAX_POLICY_BYTES} bytes", where=where)
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            m = re.search(r"line (\d+)", str(e))
            line = int(m.group(1)) if m else 0
            if not line and "end of document" in str(e):
                line = max(1, len(text.splitlines()))
            raise PolicyError(line, f"not TOML: {e}", where=where) from None
        prefix: tuple[str, ...] = ()
        if within:
            c = _Checker(text, (), where)
            if within not in doc:
                raise c.fail((), f"no [{within}] table")
            doc = doc[within]
            prefix = (within,)
            if not isinstance(doc, dict):
                raise c.fail((within,), "must be a table")
        return cls.from_doc(doc, text=text, prefix=prefix, where=where)

    @classmethod
    def from_doc(
        cls,
        doc: Mapping[str, Any],
        *,
        text: str | None = None,
        prefix: tuple[str, ...] = (),
        where: str = "policy",
    ) -> Policy:
        """The policy of a parsed document (the lines from ``text`` when given; else
        errors name the key only). The stored text is ``text``, or, without it or for
        a section of a larger file (``prefix``), the policy rendered (``to_toml``)."""
        c = _Checker(text, prefix, where)
        unknown = sorted(set(doc) - {"retention"})
        if "policy" in unknown and "retention" not in doc and not prefix:
            raise c.fail(
                ("policy",),
                "a policy file starts at [retention] ([policy.retention] is serve --config's)",
            )
        if unknown:
            raise c.fail((unknown[0],), "unknown key (a policy has [retention] only)")
        ret = doc.get("retention")
        if not isinstance(ret, dict):
            raise c.fail(("retention",), "[retention] is required, with default or preset")
        for k in ret:
            if k not in RETENTION_KEYS:
                raise c.fail(("retention", k), f"unknown key (one of {', '.join(RETENTION_KEYS)})")
        default = _rule(c, ("retention",), ret, "default", default_mode="default")
        raw_rules = ret.get("rule", [])
        if not isinstance(raw_rules, list):
            raise c.fail(("retention", "rule"), "must be an array of tables: [[retention.rule]]")
        if len(raw_rules) > MAX_RULES:
            raise c.fail(("retention", "rule"), f"more than {MAX_RULES} rules")
        rules: list[Rule] = []
        seen: dict[str, int] = {}
        for i, r in enumerate(raw_rules):
            path = ("retention", "rule", i)
            if not isinstance(r, dict):
                raise c.fail(path, "a rule is a table: [[retention.rule]]")
            for k in r:
                if k not in RULE_KEYS:
                    raise c.fail((*path, k), f"unknown key (one of {', '.join(RULE_KEYS)})")
            rule = _rule(c, path, r, f"rule {i + 1}", default_mode="default")
            if rule.name in seen or rule.name == "default":
                raise c.fail((*path, "name"), f"rule name {rule.name!r} is used twice")
            seen[rule.name] = i
            rules.append(rule)
        if text is not None and not prefix:
            return cls(text, default, rules)
        return cls(cls("", default, rules).to_toml(), default, rules)

    def rule_for(self, e: CallEntry, tags: Iterable[str] | None = None) -> Rule:
        """The first rule that matches the call (with ``tags`` instead of its own),
        else the default."""
        t = list(e.tags if tags is None else tags)
        for r in self.rules:
            if r.matches(e, t):
                return r
        return self.default

    def retention_for(
        self,
        entry: CallEntry,
        *,
        tags: list[str] | None = None,
        now_us: int,
        end_us: int | None = None,
    ) -> dict[str, Any] | None:
        """The call's retention: its end (``end_us``, default the call's end) plus
        the first matching rule's ``keep``; ``set_us`` = ``now_us``; ``policy`` =
        this policy's sha256. Never None for a loaded policy (it has a default)."""
        rule = self.rule_for(entry, tags)
        end = entry.end_us if end_us is None else end_us
        return {
            "until_us": rule.keep.after(end),
            "rule": rule.name,
            "mode": rule.mode,
            "set_us": now_us,
            "policy": self.sha256,
        }

    def doc(self) -> dict[str, Any]:
        return {"default": self.default.doc(), "rules": [r.doc() for r in self.rules]}

    def to_toml(self) -> str:
        """This policy as a policy file (canonical: what a ``within`` section stores)."""
        out = ["[retention]"]
        out += _toml_rule(self.default, default=True)
        for r in self.rules:
            out += ["", "[[retention.rule]]"]
            out += _toml_rule(r, default=False)
        return "\n".join(out) + "\n"


def _q(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _toml_rule(r: Rule, *, default: bool) -> list[str]:
    out = [] if default else [f"name = {_q(r.name)}"]
    if r.match:
        parts = []
        for k, v in r.match:
            key = _q(k) if not re.fullmatch(r"[A-Za-z0-9_-]+", k) else k
            val = _q(v[0]) if len(v) == 1 else "[" + ", ".join(_q(x) for x in v) + "]"
            parts.append(f"{key} = {val}")
        out.append("match = { " + ", ".join(parts) + " }")
    if r.preset:
        out.append(f"preset = {_q(r.preset)}")
    else:
        out.append(f"{'default' if default else 'keep'} = {_q(str(r.keep))}")
        out.append(f"mode = {_q(r.mode)}")
    return out


def _rule(
    c: _Checker, path: tuple[Any, ...], t: Mapping[str, Any], label: str, *, default_mode: str
) -> Rule:
    is_default = label == "default"
    keep_key = "default" if is_default else "keep"
    preset = t.get("preset")
    if preset is not None:
        if not isinstance(preset, str) or preset not in PRESETS:
            raise c.fail(
                (*path, "preset"), f"unknown preset {preset!r} (one of {', '.join(PRESETS)})"
            )
        for k in (keep_key, "mode"):
            if k in t:
                raise c.fail((*path, k), f"give {keep_key} and mode, or preset, not both")
        pr = PRESETS[preset]
        keep, mode = Duration.parse(pr.keep), pr.mode
    else:
        if keep_key not in t:
            raise c.fail(path, f"needs {keep_key} ({DURATION_HELP}) or preset")
        try:
            keep = Duration.parse(t[keep_key])
        except ValueError as e:
            raise c.fail((*path, keep_key), str(e)) from None
        mode = t.get("mode", default_mode)
        if mode not in MODES:
            raise c.fail((*path, "mode"), f"{mode!r} is not a mode: {', '.join(MODES)}")
    name = label
    if not is_default:
        name = t.get("name", label)
        if not isinstance(name, str) or not name.strip() or len(name) > 64:
            raise c.fail((*path, "name"), "a rule's name is 1 to 64 characters")
        if "match" not in t:
            raise c.fail(path, "a rule needs match = { ... } (the default needs none)")
    elif "match" in t:
        raise c.fail((*path, "match"), "the default matches every call: no match")
    match = _match(c, (*path, "match"), t["match"]) if "match" in t else ()
    return Rule(name, keep, mode, match, preset or "")


def _match(
    c: _Checker, path: tuple[Any, ...], m: object
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not isinstance(m, dict) or not m:
        raise c.fail(path, 'match is a table of at least one key, e.g. { tag = "vip" }')
    out: list[tuple[str, tuple[str, ...]]] = []
    for key, value in m.items():
        if key == "meta":
            if not isinstance(value, dict) or not value:
                raise c.fail((*path, key), 'meta is a table of extra keys, e.g. meta.tier = "gold"')
            for k, v in value.items():
                out.append((f"meta.{k}", _values(c, (*path, key, k), v)))
            continue
        if key == "customer_number":
            raise c.fail(
                (*path, key),
                "customer numbers are not kept in clear: a rule cannot match them (tag the calls)",
            )
        name = key if key in FIELD_KEYS or key.startswith("meta.") else f"meta.{key}"
        if name == "meta.":
            raise c.fail((*path, key), "meta. needs a key after it")
        out.append((name, _values(c, (*path, key), value)))
    return tuple(out)


def _values(c: _Checker, path: tuple[Any, ...], v: object) -> tuple[str, ...]:
    items = v if isinstance(v, list) else [v]
    if not items or not all(isinstance(x, (str, int, bool)) for x in items):
        raise c.fail(path, "a match value is a string (or number), or a list of them")
    return tuple(_text(x) for x in items)


def combine(
    old: dict[str, Any] | None,
    new: dict[str, Any],
    *,
    now_us: int,
    shorten_governance: bool = False,
) -> tuple[dict[str, Any], str]:
    """The retention a call gets when ``new`` is computed for it while it has
    ``old``, and what happened: "changed", "unchanged", "kept-compliance" (a
    compliance end in the future is never made earlier, nor its mode weaker: the
    later end, still compliance) or "kept-governance" (a governance end in the
    future is made earlier, or its mode lowered to default, only with
    ``shorten_governance``: an admin with a reason; without it a later end in a
    weaker mode applies in governance mode). The one place of this rule: a
    reapply, a tag change (``callvault.lifecycle.tags``) and a recompute use it."""
    if old is None:
        return new, "changed"
    same = all(old.get(k) == new.get(k) for k in ("until_us", "rule", "mode"))
    if same:
        return old, "unchanged"
    old_end, new_end = int(old.get("until_us", 0)), int(new["until_us"])
    live = old_end > now_us
    if live and old.get("mode") == "compliance":
        if new_end >= old_end and new.get("mode") == "compliance":
            return new, "changed"
        if new_end > old_end:  # a later end, but a weaker mode: the later end, compliance
            return {**new, "mode": "compliance"}, "changed"
        return old, "kept-compliance"
    weaker = new.get("mode", "default") not in ("compliance", "governance")
    lowers = new_end < old_end or weaker
    if live and old.get("mode") == "governance" and lowers and not shorten_governance:
        if new_end > old_end:  # later, but the mode would no longer protect it
            return {**new, "mode": "governance"}, "changed"
        return old, "kept-governance"
    return new, "changed"


def recompute(
    vault: Vault,
    e: CallEntry,
    *,
    tags: list[str] | None = None,
    policy: Policy | None = None,
    shorten_governance: bool = False,
) -> tuple[dict[str, Any] | None, str]:
    """The retention a sealed call should have now with ``tags`` (default its own)
    under ``policy`` (default the stored one), ``combine``d with the one it has:
    (the retention to keep or set, "changed" | "unchanged" | "kept-compliance" |
    "kept-governance"). (None, "no-policy") when no policy is applied. What a tag
    change writes (``vault.change(..., changes={"tags": ..., "retention": r})``
    when the outcome is "changed")."""
    p = stored(vault) if policy is None else policy
    if p is None:
        return e.retention, "no-policy"
    now = vault.clock()
    new = p.retention_for(e, tags=tags, now_us=now)
    assert new is not None
    return combine(e.retention, new, now_us=now, shorten_governance=shorten_governance)


# ---- the policy in force: DATA/policy (docs/format.md 10.4) ------------------------


@dataclass
class Applied:
    """The stored policy's record (current.json)."""

    sha256: str
    applied_us: int
    applied_by: str
    source: str  # "apply" (a file or ApplyPolicy) or "config" ([policy] of serve --config)
    config_sha256: str = ""  # the last [policy] section applied from the config
    text: str = ""
    policy: Policy | None = field(default=None, repr=False)

    def doc(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "applied_us": self.applied_us,
            "applied_by": self.applied_by,
            "source": self.source,
            "config_sha256": self.config_sha256,
        }


def _dir(vault: Vault | Path) -> Path:
    return (vault if isinstance(vault, Path) else Path(vault.path)) / POLICY_DIR


def current(vault: Vault | Path) -> Applied | None:
    """The stored policy and its record; None if none was ever applied. The text in
    force is versions/SHA.toml of the sha256 current.json names; VaultError if it is
    missing or does not match that sha256 (damaged or edited)."""
    d = _dir(vault)
    try:
        meta = json.loads((d / CURRENT_JSON).read_text())
        sha = str(meta["sha256"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise VaultError(f"{d / CURRENT_JSON}: unreadable ({e})") from None
    path = d / VERSIONS / f"{sha}.toml"
    try:
        text = path.read_text()
    except (OSError, ValueError) as e:
        raise VaultError(f"the policy in force, {path}, cannot be read ({e})") from None
    if not re.fullmatch(r"[0-9a-f]{64}", sha) or hashlib.sha256(text.encode()).hexdigest() != sha:
        raise VaultError(
            f"{path} does not match the sha256 in {CURRENT_JSON}: the stored policy was "
            "changed outside callvault; apply the policy again"
        )
    try:
        p = Policy.load(text, where=str(path))
    except PolicyError as e:
        raise VaultError(f"the stored policy is refused: {e}") from None
    return Applied(
        str(meta["sha256"]),
        int(meta.get("applied_us", 0)),
        str(meta.get("applied_by", "")),
        str(meta.get("source", "apply")),
        str(meta.get("config_sha256", "")),
        text,
        p,
    )


def _current_or_none(vault: Vault) -> Applied | None:
    """``current``, or None when the stored policy is damaged: a new one replaces it."""
    try:
        return current(vault)
    except (VaultError, OSError):
        return None


def stored(vault: Vault) -> Policy | None:
    """The policy in force in the vault's data directory (None: none applied)."""
    a = current(vault)
    return a.policy if a is not None else None


def store(
    vault: Vault, policy: Policy, *, by: str, source: str = "apply", config_sha256: str = ""
) -> Applied:
    """Make ``policy`` the one in force: its text kept under versions/SHA.toml, then
    current.json replaced (the commit point: it names the text in force), then
    current.toml (a copy for people to read), each atomically and fsynced, and a
    line appended to history.jsonl. A crash before current.json leaves the previous
    policy in force. ``config_sha256``: the config section's digest ("" keeps the
    previous one)."""
    d = _dir(vault)
    (d / VERSIONS).mkdir(parents=True, exist_ok=True)
    prev = _current_or_none(vault)
    data = policy.text.encode()
    write_atomic(d / VERSIONS / f"{policy.sha256}.toml", data, 0o644)
    a = Applied(
        policy.sha256,
        vault.clock(),
        by,
        source,
        config_sha256 or (prev.config_sha256 if prev else ""),
        policy.text,
        policy,
    )
    write_atomic(d / CURRENT_JSON, json.dumps(a.doc(), sort_keys=True).encode() + b"\n", 0o644)
    write_atomic(d / CURRENT_TOML, data, 0o644)
    with open(d / HISTORY, "ab") as f:
        f.write(json.dumps(a.doc(), sort_keys=True).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(d)
    return a


def attach(vault: Vault, policy: Policy | None = None) -> Policy | None:
    """Seal every call of ``vault`` with its retention end under ``policy`` (default:
    the stored one); None: calls are sealed without one."""
    p = stored(vault) if policy is None else policy
    if p is None:
        vault.retention_at_seal = None
        return None

    def at_seal(e: CallEntry, end_us: int, p: Policy = p) -> dict[str, Any] | None:
        return p.retention_for(e, now_us=vault.clock(), end_us=end_us)

    vault.retention_at_seal = at_seal
    return p


def apply_config(vault: Vault, policy: Policy, *, by: str = "serve --config") -> Applied | None:
    """``serve --config``'s [policy] at start and on SIGHUP: stored when it differs
    from the last section applied from the config (so a `policy apply` made since
    stays in force until the config's section changes); then attached. Returns the
    new record, or None when nothing changed."""
    a = _current_or_none(vault)
    if a is not None and a.config_sha256 == policy.sha256:
        attach(vault)
        return None
    out = store(vault, policy, by=by, source="config", config_sha256=policy.sha256)
    attach(vault, policy)
    return out


@dataclass
class Reapplied:
    calls: int = 0  # sealed calls looked at
    changed: int = 0
    unchanged: int = 0
    kept_compliance: int = 0
    kept_governance: int = 0

    def doc(self) -> dict[str, int]:
        return dict(vars(self))


def reapply(
    vault: Vault,
    policy: Policy,
    *,
    by: dict[str, Any] | None,
    reason: str = "",
    shorten_governance: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Reapplied:
    """Recompute every sealed (not erased) call's retention under ``policy``: one
    LIFECYCLE record (op "retention") per call whose retention changes (``combine``:
    compliance ends never shortened; governance ends shortened only with
    ``shorten_governance``, which needs ``reason``)."""
    if shorten_governance and not reason.strip():
        raise InputError("shortening governance retention needs a reason")
    out = Reapplied()
    for tenant in vault.index.tenants():
        for call_id in vault.index.call_ids(tenant):
            for attempt in range(3):
                e = vault.index.get_call(tenant, call_id)
                if e is None or e.state != "sealed":
                    break
                now = vault.clock()
                new = policy.retention_for(e, now_us=now)
                assert new is not None
                result, what = combine(
                    e.retention, new, now_us=now, shorten_governance=shorten_governance
                )
                if what == "changed":
                    try:
                        vault.change(
                            call_id,
                            tenant=tenant,
                            op="retention",
                            changes={"retention": result},
                            by=by,
                            reason=reason or "policy reapplied",
                            detail={"policy": policy.sha256},
                            expect_seq=e.lifecycle_count,
                        )
                    except VaultError as err:
                        if "changed meanwhile" in str(err) and attempt < 2:
                            continue
                        raise
                out.calls += 1
                setattr(out, what.replace("-", "_"), getattr(out, what.replace("-", "_")) + 1)
                break
            if progress is not None:
                progress(out.calls)
    return out


def override_reason(vault: Vault, e: CallEntry, reason: str) -> str:
    """The tombstone's reason for an erasure with the governance override: when the
    override is what lets it through, the reason says so (the rule and the end it
    overrode), so the ERASE record itself tells an override from an ordinary erasure."""
    if vault.retained(e) is None or vault.retained(e, override_governance=True) is not None:
        return reason  # nothing to override (or something the override cannot lift)
    r = e.retention or {}
    note = (
        f" [governance retention until {utc(int(r.get('until_us', 0)))} "
        f"(rule {r.get('rule', '?')}) overridden by an admin]"
    )
    limit = MAX_ERASE_REASON_BYTES - len(note.encode())
    text = reason.encode()[:limit].decode(errors="ignore")
    return text + note
