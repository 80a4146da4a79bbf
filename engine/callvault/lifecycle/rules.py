"""Whether a call is recorded: recording rules, consent and regions (docs/access.md
"Recording rules").

The policy comes from ``serve --config``'s ``[recording]`` and ``[regions.X]``
sections (``RecordingPolicy.parse``); the library takes a ``RecordingPolicy`` too
(``Ingestor(policy=...)``). ``decide(call)`` is a pure function of the policy, the
call's CallStart (tenant, call id, metadata, region, consent), the vault's recording
key and the VIP list:

1. Consent (``[regions.X] consent``): "none" and "one-party" regions record whatever
   the customer said (one-party: the agent's side is the consenting party);
   "all-party" records only a call whose consent is "granted": declined and unknown
   are not recorded (nothing is recorded without all-party consent).
2. ``record = "all"``: every call consent allows is recorded. ``record = "rules"``:
   the first ``[[recording.rule]]`` that matches decides (record or skip), else
   ``default``. A rule with ``percent`` matches only its sample of the calls it would
   match: a keyed hash of (tenant, call id), so a retry decides the same and nobody
   can pick call ids that dodge it.

The recording key (32 random bytes, ``DATA/keys/recording.key``, or the policy's
``key_file`` to share it between servers) keys both the sampling hash and the VIP
list's hashes: customer numbers are never stored in clear (``VipList``,
``callvault --data DIR vip add|rm|ls``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callvault.durable import write_atomic
from callvault.errors import InputError

CONSENTS = ("granted", "declined", "unknown")
REGION_CONSENT = ("none", "one-party", "all-party")
ACTIONS = ("record", "skip")
MATCH_KEYS = ("skill_group", "agent", "direction", "vip")
RULE_KEYS = (*MATCH_KEYS, "name", "action", "percent")
RECORDING_KEYS = ("record", "rule", "default", "default_region", "key_file", "vip_file")
KEY_FILE = "recording.key"  # under DATA/keys
VIP_FILE = "vip-hashes"  # under DATA/keys: one hex HMAC per line
KEY_BYTES = 32


class PolicyError(InputError):
    """The recording policy is refused (names the key and the reason)."""


@dataclass(frozen=True)
class Decision:
    """What the policy decided for one call (kept with it: the OPEN record's
    ``decision``, or a DECISION record for a call not recorded)."""

    recorded: bool
    rule: str  # the rule that decided ("rule 2", its name, "default", "all", "consent")
    reason: str  # a sentence for people
    region: str = ""
    consent: str = "unknown"

    def doc(self) -> dict[str, Any]:
        return {
            "recorded": self.recorded,
            "rule": self.rule,
            "reason": self.reason,
            "region": self.region,
            "consent": self.consent,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Decision:
        return cls(
            bool(doc.get("recorded", True)),
            str(doc.get("rule", "")),
            str(doc.get("reason", "")),
            str(doc.get("region", "")),
            str(doc.get("consent", "unknown")),
        )


@dataclass(frozen=True)
class CallFacts:
    """What the policy looks at (from the CallStart)."""

    tenant: str
    call_id: str
    direction: str = ""
    agent: str = ""
    skill_group: str = ""
    customer_number: str = ""
    region: str = ""
    consent: str = "unknown"


@dataclass(frozen=True)
class Rule:
    name: str
    action: str
    percent: float = 100.0
    skill_group: tuple[str, ...] | None = None
    agent: tuple[str, ...] | None = None
    direction: tuple[str, ...] | None = None
    vip: bool | None = None


def normalize_number(number: str) -> str:
    """A customer number as hashed: spaces, dashes, dots and brackets dropped, a
    leading "+" or "00" kept as "+"."""
    n = re.sub(r"[\s\-.()/]", "", number)
    if n.startswith("00"):
        n = "+" + n[2:]
    if not re.fullmatch(r"\+?[0-9*#]{1,32}", n):
        raise InputError(f"customer number {number!r}: digits (and a leading +) expected")
    return n


def load_key(path: Path, *, create: bool) -> bytes:
    """The recording key: 32 random bytes, made on first use (mode 0600)."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        if not create:
            raise InputError(f"no recording key at {path}") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            write_atomic(path, secrets.token_bytes(KEY_BYTES), exclusive=True)
        key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise InputError(f"recording key {path}: {len(key)} bytes, expected {KEY_BYTES}")
    return key


def _purpose_key(key: bytes, purpose: bytes) -> bytes:
    return hmac.new(key, b"callvault-recording-v1/" + purpose, hashlib.sha256).digest()


def number_hash(key: bytes, number: str) -> str:
    """The VIP list's entry of a customer number: hex HMAC-SHA256 under the recording
    key's VIP subkey (docs/access.md)."""
    sub = _purpose_key(key, b"vip")
    return hmac.new(sub, normalize_number(number).encode(), hashlib.sha256).hexdigest()


def sample_point(key: bytes, tenant: str, call_id: str, rule: str) -> float:
    """Where (tenant, call id) falls in [0, 1) for a sampling rule: a keyed hash (the
    sampling subkey), so the same call always falls at the same point."""
    sub = _purpose_key(key, b"sample")
    msg = b"\x00".join(s.encode() for s in (tenant or "default", call_id, rule))
    return int.from_bytes(hmac.new(sub, msg, hashlib.sha256).digest()[:8], "big") / 2**64


class VipList:
    """The VIP customer numbers as keyed hashes, one hex line each, in ``path``
    (DATA/keys/vip-hashes by default); reread when the file changes."""

    def __init__(self, path: Path, key: bytes) -> None:
        self.path = path
        self.key = key
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._hashes: frozenset[str] = frozenset()

    def hashes(self) -> frozenset[str]:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            return frozenset()
        with self._lock:
            if stamp != self._stamp:
                self._hashes = frozenset(self._read())
                self._stamp = stamp
            return self._hashes

    def _read(self) -> list[str]:
        out = []
        for i, line in enumerate(self.path.read_text().splitlines(), 1):
            h = line.strip()
            if not h or h.startswith("#"):
                continue
            if not re.fullmatch(r"[0-9a-f]{64}", h):
                raise InputError(f"{self.path} line {i}: not a hex HMAC-SHA256 ({h[:16]!r})")
            out.append(h)
        return out

    def contains(self, number: str) -> bool:
        if not number:
            return False
        try:
            return number_hash(self.key, number) in self.hashes()
        except InputError:
            return False

    def _write(self, hashes: Sequence[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = "".join(f"{h}\n" for h in sorted(set(hashes)))
        write_atomic(self.path, body.encode())

    def add(self, numbers: Sequence[str]) -> int:
        """Add numbers (hashed); returns how many were new."""
        have = set(self._read()) if self.path.exists() else set()
        new = {number_hash(self.key, n) for n in numbers} - have
        self._write([*have, *new])
        return len(new)

    def remove(self, numbers: Sequence[str]) -> int:
        have = set(self._read()) if self.path.exists() else set()
        gone = {number_hash(self.key, n) for n in numbers} & have
        self._write(sorted(have - gone))
        return len(gone)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise PolicyError(f"{where}: a string or a list of strings expected, got {value!r}")


def _parse_rule(i: int, raw: Any) -> Rule:
    where = f"[[recording.rule]] #{i}"
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: a table expected")
    unknown = sorted(set(raw) - set(RULE_KEYS))
    if unknown:
        raise PolicyError(
            f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(RULE_KEYS)})"
        )
    name = raw.get("name", f"rule {i}")
    if not isinstance(name, str) or not name:
        raise PolicyError(f"{where}: name must be a non-empty string")
    where = f"[[recording.rule]] #{i} ({name})"
    action = raw.get("action")
    if action not in ACTIONS:
        raise PolicyError(f"{where}: action must be one of {', '.join(ACTIONS)}, got {action!r}")
    percent = raw.get("percent", 100)
    if isinstance(percent, bool) or not isinstance(percent, int | float):
        raise PolicyError(f"{where}: percent must be a number, got {percent!r}")
    if not 0 <= percent <= 100:
        raise PolicyError(f"{where}: percent {percent} is outside 0 to 100")
    vip = raw.get("vip")
    if vip is not None and not isinstance(vip, bool):
        raise PolicyError(f"{where}: vip must be true or false, got {vip!r}")
    direction = raw.get("direction")
    dirs = None if direction is None else _strings(direction, f"{where} direction")
    for d in dirs or ():
        if d not in ("inbound", "outbound", "internal"):
            raise PolicyError(f"{where}: direction {d!r}: inbound, outbound or internal")
    return Rule(
        name=name,
        action=action,
        percent=float(percent),
        skill_group=None if "skill_group" not in raw else _strings(raw["skill_group"], where),
        agent=None if "agent" not in raw else _strings(raw["agent"], where),
        direction=dirs,
        vip=vip,
    )


@dataclass
class RecordingPolicy:
    """The parsed ``[recording]`` and ``[regions]`` sections."""

    record: str = "all"  # "all" | "rules"
    rules: tuple[Rule, ...] = ()
    default: str = "record"
    regions: dict[str, str] = field(default_factory=dict)  # region -> consent rule
    default_region: str = ""
    key: bytes = b""  # the recording key (sampling and VIP hashes)
    vip: VipList | None = None
    # a [recording] or [regions] section was given: decisions are kept with the calls
    # (without one every call is recorded and nothing about it is added)
    configured: bool = False

    @classmethod
    def parse(
        cls,
        policy: Mapping[str, Any],
        *,
        data_dir: Path | None = None,
        key: bytes | None = None,
    ) -> RecordingPolicy:
        """From ``Config.policy``; PolicyError names the key and the reason. The key
        is ``key``, else the policy's ``key_file``, else DATA/keys/recording.key
        (made on first use)."""
        rec = policy.get("recording", {}) or {}
        regions_raw = policy.get("regions", {}) or {}
        if not isinstance(rec, dict):
            raise PolicyError("[recording]: a table expected")
        if not isinstance(regions_raw, dict):
            raise PolicyError("[regions]: a table of [regions.NAME] tables expected")
        unknown = sorted(set(rec) - set(RECORDING_KEYS))
        if unknown:
            raise PolicyError(
                f"[recording]: unknown key(s) {', '.join(unknown)} "
                f"(known: {', '.join(RECORDING_KEYS)})"
            )
        record = rec.get("record", "all")
        if record not in ("all", "rules"):
            raise PolicyError(f'[recording] record: "all" or "rules", got {record!r}')
        raw_rules = rec.get("rule", [])
        if not isinstance(raw_rules, list):
            raise PolicyError("[recording] rule: an array of tables ([[recording.rule]])")
        rules = tuple(_parse_rule(i, r) for i, r in enumerate(raw_rules, 1))
        if record == "all" and rules:
            raise PolicyError(
                '[recording]: record = "all" records every call; rules need record = "rules"'
            )
        default = rec.get("default", "record")
        if default not in ACTIONS:
            raise PolicyError(f"[recording] default: record or skip, got {default!r}")
        names = [r.name for r in rules]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise PolicyError(f"[[recording.rule]]: rule names must differ: {', '.join(dup)}")
        regions: dict[str, str] = {}
        for name, body in regions_raw.items():
            if not isinstance(body, dict):
                raise PolicyError(f"[regions.{name}]: a table expected")
            extra = sorted(set(body) - {"consent"})
            if extra:
                raise PolicyError(f"[regions.{name}]: unknown key(s) {', '.join(extra)}")
            consent = body.get("consent")
            if consent not in REGION_CONSENT:
                raise PolicyError(
                    f"[regions.{name}] consent: one of {', '.join(REGION_CONSENT)}, got {consent!r}"
                )
            regions[str(name)] = consent
        default_region = rec.get("default_region", "")
        if default_region and default_region not in regions:
            raise PolicyError(
                f"[recording] default_region {default_region!r} is not a [regions.X] section"
            )
        for k in ("key_file", "vip_file"):
            if k in rec and not isinstance(rec[k], str):
                raise PolicyError(f"[recording] {k}: a path expected")
        if key is None:
            if "key_file" in rec:
                key = load_key(Path(rec["key_file"]), create=False)
            elif data_dir is not None:
                key = load_key(data_dir / "keys" / KEY_FILE, create=True)
            else:
                key = b""
        vip_path = (
            Path(rec["vip_file"])
            if "vip_file" in rec
            else (data_dir / "keys" / VIP_FILE if data_dir is not None else None)
        )
        uses_vip = any(r.vip is not None for r in rules)
        uses_sample = any(r.percent < 100 for r in rules)
        if (uses_vip or uses_sample) and not key:
            raise PolicyError("[recording]: sampling and VIP rules need the recording key")
        vip = VipList(vip_path, key) if vip_path is not None and key else None
        if vip is not None:
            try:
                vip.hashes()
            except (InputError, OSError, UnicodeDecodeError) as e:
                raise PolicyError(f"[recording] vip_file: {e}") from None
        configured = "recording" in policy or "regions" in policy
        return cls(record, rules, default, regions, default_region, key, vip, configured)

    def region_of(self, region: str) -> tuple[str, str]:
        """(region, its consent rule); InputError for a region not in the policy. With
        no region configured every call is in region "" with consent rule "none"."""
        if not self.regions:
            return region, "none"
        name = region or self.default_region
        if name not in self.regions:
            known = ", ".join(sorted(self.regions))
            what = f"region {region!r} is unknown" if region else "the call names no region"
            raise InputError(f"{what}: the server's regions are {known}")
        return name, self.regions[name]

    def decide(self, call: CallFacts) -> Decision:
        consent = call.consent if call.consent in CONSENTS else "unknown"
        region, rule = self.region_of(call.region)

        def out(recorded: bool, rule_name: str, reason: str) -> Decision:
            return Decision(recorded, rule_name, reason, region, consent)

        if rule == "all-party" and consent != "granted":
            return out(
                False,
                "consent",
                f"region {region} needs every party's consent and the call's consent is "
                f"{consent}: not recorded",
            )
        if self.record == "all":
            return out(True, "all", 'record = "all"')
        for r in self.rules:
            if not self._matches(r, call):
                continue
            if r.percent < 100:
                point = sample_point(self.key, call.tenant, call.call_id, r.name)
                if point * 100 >= r.percent:
                    continue  # outside the rule's sample: the next rules decide
            return out(r.action == "record", r.name, f"{r.name}: {r.action}")
        return out(self.default == "record", "default", f"no rule matched: {self.default}")

    def _matches(self, r: Rule, call: CallFacts) -> bool:
        if r.skill_group is not None and call.skill_group not in r.skill_group:
            return False
        if r.agent is not None and call.agent not in r.agent:
            return False
        if r.direction is not None and call.direction not in r.direction:
            return False
        if r.vip is not None:
            vip = self.vip is not None and self.vip.contains(call.customer_number)
            if vip != r.vip:
                return False
        return True


# The policy of a server with no [recording] and no [regions]: every call recorded.
RECORD_ALL = RecordingPolicy()
