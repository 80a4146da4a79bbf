"""What users name and say about a call: call ids, tenants, leg names, ``--meta`` items
and the times they give.

One rule for each, used wherever a call is created (the command line, the server's
Ingest stream, the sidecar's control API), so a call id one of them accepts is
accepted by all. A base module: it imports only the standard library and
callvault.errors, and every part of callvault may import it. (The stored format's
own bound on a call id's length, store/crypto.py ``MAX_CALL_ID``, is looser.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from callvault.errors import InputError

CALL_ID_RULE = "1 to 128 characters of letters, digits and . _ : -, not . or .."
LEG_NAME_RULE = "1 to 32 letters, digits, . _ -"
_CALL_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_LEG_NAME = re.compile(r"[A-Za-z0-9._-]{1,32}")


def is_call_id(value: str) -> bool:
    """Whether ``value`` is a valid call id (or tenant): the whole string, no newline,
    no NUL, and not "." or ".." (which name directories, not calls)."""
    return _CALL_ID.fullmatch(value) is not None and value not in (".", "..")


def check_call_id(value: str, what: str = "call_id") -> str:
    """``value`` if it is a valid call id; InputError naming ``what`` otherwise (tenants
    follow the same rule: ``check_call_id(tenant, "tenant")``)."""
    if not is_call_id(value):
        raise InputError(f"{what} {_shown(value)}: use {CALL_ID_RULE}")
    return value


def _shown(value: str, limit: int = 80) -> str:
    """``value`` quoted for an error message: control characters escaped, cut to
    ``limit`` characters (a hostile value must not flood a log)."""
    cut = value if len(value) <= limit else value[:limit]
    return repr(cut) + (f" (cut; {len(value)} characters)" if len(value) > limit else "")


def check_leg_name(name: str) -> str:
    """``name`` if it is a valid leg name; InputError otherwise."""
    if _LEG_NAME.fullmatch(name) is None or name in (".", ".."):
        raise InputError(f"leg name {_shown(name)}: use {LEG_NAME_RULE}, not . or ..")
    return name


def parse_time(value: str) -> int:
    """Unix seconds or ISO 8601 (UTC when no zone is given) -> microseconds."""
    try:
        return int(float(value) * 1_000_000)
    except (ValueError, OverflowError):
        pass
    try:
        t = datetime.fromisoformat(value)
    except ValueError as e:
        raise InputError(
            f"{value!r} is not a time: give unix seconds or ISO 8601 (2026-11-29T10:00:00)"
        ) from e
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1_000_000)


# Call metadata a CallStart (and Vault.open_call) has a field for.
META_FIELDS = ("agent", "skill_group", "direction", "customer_number")
_META_KEY = re.compile(r"[A-Za-z0-9_]+")


def meta_keys(*, start: bool = False) -> tuple[str, ...]:
    """The keys ``parse_meta`` knows, in the order help texts list them."""
    return (*META_FIELDS, "tags", *(("start",) if start else ()))


def parse_meta(
    items: Iterable[str] | None, *, start: bool = False, extra: bool = False
) -> dict[str, Any]:
    """``--meta KEY=VALUE`` items as call metadata.

    KEY is one of META_FIELDS or ``tags`` (``a,b,c``); with ``start``, also ``start``
    (a time, see parse_time); with ``extra``, any other KEY of letters, digits and _
    is kept as extra metadata. A - in KEY reads as _; each KEY may be given once.
    Returns keywords of ``Vault.open_call`` (and keys of the SDK's CallMeta mapping):
    the fields as strings, ``tags`` (a list), ``start_us`` and ``extra`` (a dict) when
    given; within the bounds of ``check_meta``."""
    known = meta_keys(start=start)
    meta: dict[str, Any] = {}
    seen: set[str] = set()
    for item in items or []:
        k, sep, v = item.partition("=")
        k = k.replace("-", "_")
        if not sep or (k not in known and not (extra and _is_extra_key(k))):
            expected = f"KEY one of {', '.join(known)}"
            if extra:
                expected += " or any other KEY of letters, digits and _ (kept as extra)"
            raise InputError(f"--meta {item!r}: expected KEY=VALUE with {expected}")
        if k in seen:
            raise InputError(f"--meta {item!r}: {k} is given twice")
        seen.add(k)
        if k == "tags":
            meta["tags"] = [t for t in v.split(",") if t]
        elif k == "start":
            meta["start_us"] = parse_time(v)
        elif k in META_FIELDS:
            meta[k] = v
        else:
            meta.setdefault("extra", {})[k] = v
    check_meta(meta)
    return meta


def _is_extra_key(key: str) -> bool:
    # "start" and "extra" name something else (a time; the mapping itself)
    return _META_KEY.fullmatch(key) is not None and key not in ("start", "extra")


# -- Bounds on call metadata (docs/format.md 8.4) ----------------------------------------
# Enforced by the vault (Vault.open_call, Vault.erase), so a local import, the server's
# Ingest stream and the sidecar refuse the same inputs with the same message. Sizes are
# of the UTF-8 encoding. The metadata is written in the call's OPEN record and in every
# index entry of the call (and a tag in a posting per tag): unbounded, one CallStart
# could cost the server memory and the index disk for ever.
MAX_TAGS = 32  # tags of one call
MAX_TAG_BYTES = 64  # one tag (non-empty, no NUL)
MAX_FIELD_BYTES = 256  # agent, skill_group, direction (no NUL)
MAX_CUSTOMER_NUMBER_BYTES = 64  # the customer number (stored encrypted)
MAX_EXTRA_KEYS = 32  # extra (free) metadata items
MAX_EXTRA_KEY_BYTES = 64  # one extra key
MAX_EXTRA_VALUE_BYTES = 1024  # one extra value, as compact JSON
MAX_ERASE_REASON_BYTES = 1024  # the reason given for an erasure


def _size(value: str) -> int:
    return len(value.encode("utf-8", "surrogatepass"))


def check_call_meta(
    *,
    direction: str = "",
    agent: str = "",
    skill_group: str = "",
    customer_number: str = "",
    tags: Iterable[str] = (),
    extra: dict[str, Any] | None = None,
) -> None:
    """InputError naming the first item of call metadata beyond its bound (above)."""
    for what, value in (("direction", direction), ("agent", agent), ("skill_group", skill_group)):
        if not isinstance(value, str):
            raise InputError(f"{what} must be text, not {type(value).__name__}")
        if _size(value) > MAX_FIELD_BYTES:
            raise InputError(f"{what} is {_size(value)} bytes long: at most {MAX_FIELD_BYTES}")
        if "\x00" in value:
            raise InputError(f"{what} {value[:40]!r} contains a NUL character")
    if _size(customer_number) > MAX_CUSTOMER_NUMBER_BYTES:
        raise InputError(
            f"customer_number is {_size(customer_number)} bytes long: "
            f"at most {MAX_CUSTOMER_NUMBER_BYTES}"
        )
    tag_list = list(tags)
    if len(tag_list) > MAX_TAGS:
        raise InputError(f"{len(tag_list)} tags: a call has at most {MAX_TAGS}")
    for t in tag_list:
        if not isinstance(t, str) or not t or "\x00" in t:
            raise InputError(f"tag {t!r}: a tag is non-empty text without NUL")
        if _size(t) > MAX_TAG_BYTES:
            raise InputError(f"tag {t[:40]!r}... is {_size(t)} bytes long: at most {MAX_TAG_BYTES}")
    items = dict(extra or {})
    if len(items) > MAX_EXTRA_KEYS:
        raise InputError(f"{len(items)} extra metadata items: at most {MAX_EXTRA_KEYS}")
    for k, v in items.items():
        if not isinstance(k, str) or not k or _size(k) > MAX_EXTRA_KEY_BYTES:
            raise InputError(
                f"extra metadata key {str(k)[:40]!r}: 1 to {MAX_EXTRA_KEY_BYTES} bytes of text"
            )
        try:
            n = _size(json.dumps(v, separators=(",", ":"), ensure_ascii=False))
        except (TypeError, ValueError):
            raise InputError(f"extra metadata {k!r}: the value is not JSON data") from None
        if n > MAX_EXTRA_VALUE_BYTES:
            raise InputError(
                f"extra metadata {k!r}: the value is {n} bytes long: "
                f"at most {MAX_EXTRA_VALUE_BYTES}"
            )


def check_erase_reason(reason: str) -> str:
    """``reason`` if it is a usable erasure reason (non-blank, bounded); InputError else."""
    if not isinstance(reason, str) or not reason.strip():
        raise InputError("erasure needs a reason")
    if _size(reason) > MAX_ERASE_REASON_BYTES:
        raise InputError(
            f"the erasure reason is {_size(reason)} bytes long: at most {MAX_ERASE_REASON_BYTES}"
        )
    return reason


# What the server checks on a CallStart before anything of it is kept (the
# per-item bounds above, and these; docs/server.md "Limits").
MAX_META_BYTES = 16 << 10  # all the metadata of a call together
MAX_RECORDING_ID_BYTES = 128  # a CallStart's recording_id
MAX_REASON_BYTES = MAX_ERASE_REASON_BYTES


def check_text(value: str, what: str, limit: int) -> int:
    """``value``'s size in UTF-8 bytes if it is at most ``limit`` and holds no NUL;
    InputError naming ``what`` otherwise."""
    n = len(value.encode("utf-8", "surrogatepass"))
    if n > limit:
        raise InputError(f"{what} is {n} bytes: at most {limit} are allowed")
    if "\0" in value:
        raise InputError(f"{what} holds a NUL character")
    return n


def check_meta(meta: dict[str, Any]) -> int:
    """Check call metadata (``parse_meta``'s keys, as a CallStart carries them)
    against the bounds above; returns its total size in bytes, InputError when a
    bound is crossed (naming the item and the bound)."""
    total = 0
    for k in META_FIELDS:
        limit = MAX_CUSTOMER_NUMBER_BYTES if k == "customer_number" else MAX_FIELD_BYTES
        total += check_text(str(meta.get(k) or ""), k, limit)
    tags = list(meta.get("tags") or ())
    if len(tags) > MAX_TAGS:
        raise InputError(f"{len(tags)} tags: at most {MAX_TAGS} are allowed")
    for i, t in enumerate(tags):
        total += check_text(str(t), f"tag {i + 1}", MAX_TAG_BYTES)
    extra = dict(meta.get("extra") or {})
    if len(extra) > MAX_EXTRA_KEYS:
        raise InputError(f"{len(extra)} extra keys: at most {MAX_EXTRA_KEYS} are allowed")
    for k, v in extra.items():
        total += check_text(str(k), f"extra key {_shown(str(k), 40)}", MAX_EXTRA_KEY_BYTES)
        total += check_text(str(v), f"extra[{_shown(str(k), 40)}]", MAX_EXTRA_VALUE_BYTES)
    if total > MAX_META_BYTES:
        raise InputError(f"the call's metadata is {total} bytes: at most {MAX_META_BYTES}")
    return total
