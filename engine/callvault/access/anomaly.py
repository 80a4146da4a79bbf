"""Anomaly rules over the audit trail (docs/access.md "Audit trail"): the policy's
``[[audit.anomaly]]`` tables, checked against every entry as it is appended.

Two kinds of rule, each on the RPCs of one or more methods (``method``: a method's
short name such as "play" or "export", case-insensitive, or its full path):

- ``max_calls = N`` and ``per = "1h"``: one identity touched more than N distinct
  calls in any window of that length (RPCs the caller was allowed: outcome OK or
  CANCELLED);
- ``outside = "08:00-19:00"`` (and ``timezone``, default UTC): an RPC of the method
  outside those local hours.

A rule that fires makes an alert entry (the trail appends it after the entry that set
it off). ``max_calls`` fires once when the count passes N, then again only once a
whole window has passed. Times are the entries' ``time_us`` (the trail's clock).
"""

from __future__ import annotations

import re
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from callvault.errors import InputError

_SPAN = re.compile(r"([0-9]+)\s*(s|m|h|d)")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_HOURS = re.compile(r"([0-2][0-9]):([0-5][0-9])-([0-2][0-9]):([0-5][0-9])")
RULE_KEYS = {"name", "method", "max_calls", "per", "outside", "timezone"}
ADMITTED = ("OK", "CANCELLED")  # outcomes of RPCs the caller was let through


@dataclass
class Rule:
    name: str
    methods: frozenset[str]  # full paths
    max_calls: int = 0
    per_us: int = 0
    start: time | None = None  # working hours [start, end) in ``zone``
    end: time | None = None
    zone: Any = UTC
    # max_calls: per identity, (time_us, tenant, call_id) in the window, last alert time
    seen: dict[str, deque[tuple[int, str, str]]] = field(default_factory=dict)
    fired: dict[str, int] = field(default_factory=dict)

    def check(self, doc: dict[str, Any]) -> str | None:
        """Why this entry sets the rule off, or None."""
        if doc.get("method") not in self.methods or doc.get("outcome") not in ADMITTED:
            return None
        t = int(doc["time_us"])
        who = doc["identity"]["name"]
        if self.start is not None and self.end is not None:
            local = datetime.fromtimestamp(t / 1e6, tz=self.zone)
            now = local.time()
            inside = (
                self.start <= now < self.end
                if self.start <= self.end
                else (now >= self.start or now < self.end)
            )
            if inside:
                return None
            return (
                f"{who} called {doc['method'].rsplit('/', 1)[-1]} at "
                f"{local.strftime('%H:%M')} {self.zone}, outside "
                f"{self.start.strftime('%H:%M')}-{self.end.strftime('%H:%M')}"
            )
        window = self.seen.setdefault(who, deque())
        for tenant, call_id in doc.get("calls", []):
            window.append((t, tenant, call_id))
        while window and window[0][0] <= t - self.per_us:
            window.popleft()
        distinct = {(tenant, c) for _, tenant, c in window}
        if len(distinct) <= self.max_calls:
            return None
        last = self.fired.get(who)
        if last is not None and t - last < self.per_us:
            return None
        self.fired[who] = t
        return (
            f"{who} touched {len(distinct)} distinct calls with "
            f"{'/'.join(sorted(m.rsplit('/', 1)[-1] for m in self.methods))} in "
            f"{self.per_us // 1_000_000} s (more than {self.max_calls})"
        )


class Rules:
    """The policy's anomaly rules; ``observe`` is the trail's Observer."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self._lock = threading.Lock()  # RPCs end on many threads at once

    def observe(self, doc: dict[str, Any]) -> list[dict[str, Any]]:
        alerts = []
        for rule in self.rules:
            with self._lock:
                why = rule.check(doc)
            if why is not None:
                alerts.append(
                    {
                        "kind": "alert",
                        "rule": rule.name,
                        "identity": doc["identity"],
                        "method": doc["method"],
                        "calls": doc.get("calls", []),
                        "outcome": doc["outcome"],
                        "peer": doc.get("peer", ""),
                        "detail": why,
                        "cause": doc["seq"],
                    }
                )
        return alerts


def _span_us(text: Any, what: str) -> int:
    m = _SPAN.fullmatch(str(text).strip())
    if m is None or int(m[1]) == 0:
        raise InputError(f"{what}: {text!r} is not a span (N followed by s, m, h or d: 1h)")
    return int(m[1]) * _UNIT_S[m[2]] * 1_000_000


def _methods(value: Any, what: str, known: list[str]) -> frozenset[str]:
    names = value if isinstance(value, list) else [value]
    out = set()
    by_short = {m.rsplit("/", 1)[-1].lower(): m for m in known}
    for name in names:
        if not isinstance(name, str) or not name:
            raise InputError(f"{what}: method must be a method name or a list of them")
        full = name if name in known else by_short.get(name.lower())
        if full is None:
            raise InputError(
                f"{what}: method {name!r} is not a callvault method "
                f"(one of {', '.join(sorted(by_short))})"
            )
        out.add(full)
    return frozenset(out)


def parse_rules(tables: Any, known_methods: list[str]) -> Rules:
    """The ``[[audit.anomaly]]`` tables as Rules; InputError naming the rule and why."""
    if tables is None:
        return Rules([])
    if not isinstance(tables, list):
        raise InputError("[audit] anomaly must be a list of tables ([[audit.anomaly]])")
    rules: list[Rule] = []
    for i, t in enumerate(tables):
        if not isinstance(t, dict):
            raise InputError(f"[[audit.anomaly]] number {i + 1} is not a table")
        name = t.get("name")
        what = f"[[audit.anomaly]] rule {name!r}" if name else f"[[audit.anomaly]] {i + 1}"
        if not isinstance(name, str) or not name:
            raise InputError(f"{what}: needs a name")
        if any(r.name == name for r in rules):
            raise InputError(f"{what}: two rules have this name")
        unknown = sorted(set(t) - RULE_KEYS)
        if unknown:
            raise InputError(f"{what}: unknown key(s) {', '.join(unknown)}")
        if "method" not in t:
            raise InputError(f'{what}: needs a method (e.g. method = "play")')
        rule = Rule(name, _methods(t["method"], what, known_methods))
        windowed = "max_calls" in t or "per" in t
        if windowed == ("outside" in t):
            raise InputError(f"{what}: give either max_calls and per, or outside")
        if windowed:
            n = t.get("max_calls")
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise InputError(f"{what}: max_calls must be a whole number of at least 1")
            if "per" not in t:
                raise InputError(f"{what}: max_calls needs per (a window: 1h)")
            if "timezone" in t:
                raise InputError(f"{what}: timezone goes with outside")
            rule.max_calls, rule.per_us = n, _span_us(t["per"], f"{what}: per")
        else:
            m = _HOURS.fullmatch(str(t["outside"]).strip())
            if m is None or int(m[1]) > 23 or int(m[3]) > 23:
                raise InputError(
                    f"{what}: outside {t['outside']!r} is not working hours (HH:MM-HH:MM)"
                )
            rule.start, rule.end = time(int(m[1]), int(m[2])), time(int(m[3]), int(m[4]))
            if rule.start == rule.end:
                raise InputError(f"{what}: outside {t['outside']!r} is an empty window")
            tz = t.get("timezone", "UTC")
            try:
                rule.zone = ZoneInfo(str(tz))
            except (ZoneInfoNotFoundError, ValueError):
                raise InputError(
                    f"{what}: timezone {tz!r} is not known (e.g. Europe/Berlin)"
                ) from None
        rules.append(rule)
    return Rules(rules)
