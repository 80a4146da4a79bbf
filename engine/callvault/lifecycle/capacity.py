"""Capacity watermarks of the data volume (docs/policy.md "Capacity"; settings and
state: docs/format.md 8.18).

``[capacity] high``, ``low`` and ``floor`` are percents of the volume that holds the
data directory (statvfs, counted as ``df`` does: used / (used + available to
unprivileged users)). ``Capacity.check`` measures (an injectable ``usage`` function
for tests) and, at or above ``high``, ``relieve``:

1. the archive (callvault.lifecycle.archive, when one is configured) archives the
   calls that are due (``due(now)``, ``archive_call``);
2. the local copies of calls already safe in the archive (``entry.archive`` set,
   ``entry.local`` true, not under a legal hold) are let go of (``evict``), oldest
   first (by start), until the bytes of their audio records bring the volume below
   ``low``; a call that is only local is never evicted, whatever its retention;
3. ``vault.reclaim`` frees the bytes (evicted audio is dead records).

Then the state: "ok" below ``high``; "high" at or above it (nothing, or not enough,
could be freed); "critical" at or above ``floor``: ``admit()`` then refuses new calls
(RESOURCE_EXHAUSTED with the sentence), calls being recorded go on. The server runs
``check`` every ``interval_s`` on a thread of its own; ingest reads only the cached
state.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from callvault.errors import InputError
from callvault.store.index import CallEntry
from callvault.vault import Vault

log = logging.getLogger("callvault.capacity")

OK, HIGH, CRITICAL = "ok", "high", "critical"


class CapacityError(InputError):
    """A bad [capacity] setting."""


class ArchiveLike(Protocol):
    """What the watermark uses of callvault.lifecycle.archive.Archive."""

    def due(self, now_us: int) -> list[CallEntry]: ...

    def archive_call(self, entry: CallEntry) -> CallEntry: ...

    def evict(self, entry: CallEntry) -> CallEntry: ...


@dataclass(frozen=True)
class Usage:
    used_bytes: int
    total_bytes: int  # used + available (to unprivileged users)

    @property
    def percent(self) -> float:
        return 100.0 * self.used_bytes / self.total_bytes if self.total_bytes else 0.0


def statvfs_usage(path: Path) -> Usage:
    """The volume of ``path`` as ``df`` counts it (blocks reserved for root are
    neither used nor available)."""
    st = os.statvfs(path)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    return Usage(used, used + st.f_bavail * st.f_frsize)


@dataclass(frozen=True)
class Settings:
    high: float = 85.0
    low: float = 75.0
    floor: float = 95.0
    interval_s: float = 5.0  # how often the server checks
    enabled: bool = True
    # a relief's reclaim rewrites closed segments at least this dead
    reclaim_threshold: float = 0.1

    @classmethod
    def parse(cls, section: dict[str, Any] | None) -> Settings:
        """``[capacity]``: high, low, floor (percent), interval_s, enabled,
        reclaim_threshold. CapacityError naming the setting when one is bad."""
        s = dict(section or {})
        d = cls()
        out: dict[str, Any] = {}
        for name in ("high", "low", "floor", "interval_s", "reclaim_threshold"):
            if name in s:
                v = s.pop(name)
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise CapacityError(f"[capacity] {name} must be a number, not {v!r}")
                out[name] = float(v)
        if "enabled" in s:
            v = s.pop("enabled")
            if not isinstance(v, bool):
                raise CapacityError(f"[capacity] enabled must be true or false, not {v!r}")
            out["enabled"] = v
        if s:
            raise CapacityError(f"[capacity]: unknown setting(s) {', '.join(sorted(s))}")
        r = cls(**{**vars(d), **out})
        if not 0 < r.low < r.high <= r.floor <= 100:
            raise CapacityError(
                f"[capacity] needs 0 < low < high <= floor <= 100 (percent of the data "
                f"volume), got low {r.low:g}, high {r.high:g}, floor {r.floor:g}"
            )
        if r.interval_s <= 0:
            raise CapacityError("[capacity] interval_s must be positive")
        if not 0 < r.reclaim_threshold <= 1:
            raise CapacityError("[capacity] reclaim_threshold must be in (0, 1]")
        return r


@dataclass
class Relief:
    """What one relief did."""

    archived: int = 0
    evicted: list[str] = field(default_factory=list)  # "tenant/call_id", oldest first
    bytes_freed: int = 0
    error: str = ""


class Capacity:
    """The watermarks of one vault's data volume. Thread-safe: ``check`` runs on the
    server's capacity thread, ``admit`` and ``stats`` on any."""

    def __init__(
        self,
        vault: Vault,
        settings: Settings | None = None,
        *,
        usage: Callable[[], Usage] | None = None,
        archive: Callable[[], ArchiveLike | None] | ArchiveLike | None = None,
        on_state: Callable[[str, str], object] | None = None,
    ) -> None:
        """``usage``: measures the volume (default: statvfs of the data directory).
        ``archive``: the archive (or a function that returns it, None: none
        configured). ``on_state(old, new)``: called after each change of state."""
        self.vault = vault
        self.settings = settings or Settings()
        self.usage = usage or (lambda: statvfs_usage(vault.path))
        self._archive = archive
        self.on_state = on_state
        self._lock = threading.Lock()
        self.state = ""  # no check yet
        self.used_percent = 0.0
        self.evicted_calls = 0
        self.error = ""

    def archive(self) -> ArchiveLike | None:
        a = self._archive
        if a is None or hasattr(a, "evict"):
            return a  # type: ignore[return-value]
        return a()

    # -- the check -------------------------------------------------------------------
    def measure(self) -> Usage:
        u = self.usage()
        self.used_percent = u.percent
        return u

    def _state_of(self, percent: float) -> str:
        s = self.settings
        if percent >= s.floor:
            return CRITICAL
        if percent >= s.high:
            return HIGH
        return OK

    def check(self, *, stop: threading.Event | None = None, relieve: bool = True) -> str:
        """Measure; at or above ``high`` relieve (unless not ``relieve``); set and
        return the state."""
        with self._lock:
            try:
                u = self.measure()
                if relieve and u.percent >= self.settings.high:
                    if u.percent >= self.settings.floor:
                        self._set(CRITICAL)  # refused during the relief already
                    done = self.relieve(u, stop=stop)
                    if done.error:
                        self.error = done.error
                    u = self.measure()
                    if not done.error:
                        self.error = ""
                else:
                    self.error = ""
            except Exception as e:  # the next check tries again; the state stays
                self.error = str(e) or type(e).__name__
                log.error("capacity check failed: %s", self.error)
                return self.state
            self._set(self._state_of(u.percent))
            return self.state

    def _set(self, new: str) -> None:
        old, self.state = self.state, new
        if old == new:
            return
        s = self.settings
        pct = f"{self.used_percent:.1f}%"
        if new == CRITICAL:
            log.warning(
                "capacity critical: the data volume is %s full (floor %g%%): new calls "
                "are refused until space is freed",
                pct,
                s.floor,
            )
        elif new == HIGH:
            log.warning(
                "capacity high: the data volume is %s full (high %g%%) and nothing more "
                "can be freed (no archive, or every archived call evicted already)",
                pct,
                s.high,
            )
        elif old:
            log.info("capacity ok again: the data volume is %s full", pct)
        if self.on_state is not None:
            self.on_state(old, new)

    def admit(self) -> str | None:
        """Why a new call is refused now (at or above the floor), None: admitted.
        Reads the state the last check left: no statvfs here."""
        if self.state != CRITICAL:
            return None
        return (
            f"the data volume is {self.used_percent:.0f}% full (floor "
            f"{self.settings.floor:g}%): no new calls until space is freed"
        )

    def stats(self) -> dict[str, Any]:
        """StatsReply 75-78."""
        return {
            "capacity_used_percent": self.used_percent,
            "capacity_state": self.state,
            "capacity_evicted_calls": self.evicted_calls,
            "capacity_error": self.error,
        }

    # -- relief ----------------------------------------------------------------------
    def evictable(self) -> list[CallEntry]:
        """Calls whose local copy may go, oldest first: sealed, safe in the archive
        (``archive`` set), still local, not under a legal hold."""
        out: list[CallEntry] = []
        ix = self.vault.index
        for tenant in ix.tenants():
            for call_id in ix.call_ids(tenant):
                e = ix.get_call(tenant, call_id)
                if e is None or e.state != "sealed" or not e.local or not e.archive:
                    continue
                if e.holds:
                    continue  # a held call is never evicted (docs/policy.md)
                out.append(e)
        out.sort(key=lambda e: (e.start_us, e.tenant, e.call_id))
        return out

    def _local_bytes(self, e: CallEntry) -> int:
        return sum(r.length for _i, r in self.vault.index.records(e.tenant, e.call_id))

    def relieve(self, usage: Usage | None = None, *, stop: threading.Event | None = None) -> Relief:
        """Archive what is due, evict archived calls oldest first until below ``low``
        (by their audio's bytes), then reclaim. Only calls safe in the archive are
        evicted; with no archive nothing is."""
        u = usage or self.measure()
        done = Relief()
        archive = self.archive()
        if archive is None:
            return done
        try:
            for e in archive.due(self.vault.clock()):
                if stop is not None and stop.is_set():
                    return done
                archive.archive_call(e)
                done.archived += 1
        except Exception as err:  # evict what is archived already, then say why
            done.error = f"archiving due calls failed: {err}"
        goal = u.used_bytes - int(self.settings.low / 100.0 * u.total_bytes)
        freed = 0
        for e in self.evictable():
            if freed >= goal or (stop is not None and stop.is_set()):
                break
            n = self._local_bytes(e)
            try:
                archive.evict(e)
            except Exception as err:  # the next one may go; this one stays local
                done.error = done.error or f"evicting call {e.call_id} failed: {err}"
                continue
            freed += n
            done.evicted.append(f"{e.tenant}/{e.call_id}")
            self.evicted_calls += 1
        if done.evicted:
            r = self.vault.reclaim(threshold=self.settings.reclaim_threshold, stop=stop)
            done.bytes_freed = r.bytes_freed
            log.info(
                "capacity: %d archived call(s) evicted, %d bytes reclaimed",
                len(done.evicted),
                r.bytes_freed,
            )
        return done
