"""Lifecycle.PlanDisposal and Lifecycle.Dispose, and the server's disposal sweeper
(docs/policy.md "Disposal"; the work: callvault.lifecycle.disposal).

PlanDisposal: the signed disposition report of what is due now (nothing changes),
or the kept reports (``list_reports``). Dispose: without ``report_id``, dispose of
what is due (``[disposal] approval = true``: the report is kept pending instead);
with one, approve and apply that pending report (an identity other than the one
that planned it). A tenant identity sees and disposes of its own tenant's calls
only. The sweeper (``Disposer``) finishes at start what a crash cut short, then
every ``[disposal] interval_s`` runs what Dispose runs, as the vault's own process.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import grpc
from callvault_client._pb import callvault_pb2 as pb

from callvault.access.identity import Identity
from callvault.errors import InputError
from callvault.lifecycle import disposal
from callvault.server.servicers import _platform_only, _who, unary
from callvault.vault import Vault

if TYPE_CHECKING:
    from callvault.server.lifecycle import LifecycleBase

    _Base = LifecycleBase
else:
    _Base = object

log = logging.getLogger("callvault.server")


def archive_of(vault: Vault, section: Any) -> Any:
    """The archive (callvault.lifecycle.archive) that disposal deletes archived calls'
    object versions through: the one attached to the vault (the server's, or
    DATA/archive.toml's), else one made from an ``[archive]`` section; None without
    either (an archived call's key is shredded all the same; its object versions stay,
    and the report says so)."""
    from callvault.lifecycle.archive import Archive, attached

    have = attached(vault)
    if have is not None:
        return have
    if not section:
        return None
    return Archive.from_settings(vault, section).attach()


class Disposer:
    """The sweeper: a thread that finishes interrupted disposals at start, then runs
    ``disposal.run`` every ``interval_s`` (0: never); its figures for Admin.Stats."""

    def __init__(self, vault: Vault, settings: disposal.Settings, archive: Any = None) -> None:
        self.vault = vault
        self.settings = settings
        self.archive = archive
        self.disposed = 0  # since the server started
        self.last_us = 0
        self.error = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def count(self, out: dict[str, Any] | None) -> None:
        with self._lock:
            self.disposed += int((out or {}).get("disposed", 0))
            self.last_us = self.vault.clock()

    def stats(self) -> dict[str, Any]:
        try:
            waiting = len(disposal.pending(self.vault))
        except OSError:
            waiting = 0
        return {
            "disposed_calls": self.disposed,
            "disposal_pending_reports": waiting,
            "last_disposal_us": self.last_us,
            "disposal_error": self.error,
        }

    def start(self) -> None:
        self._thread = threading.Thread(target=self._sweep, name="disposal", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def once(self) -> None:
        report = disposal.run(self.vault, self.settings, archive=self.archive)
        if report is not None and report.status == "applied":
            self.count(report.results)
            log.info(
                "disposal: report %s disposed of %s call(s)",
                report.id,
                (report.results or {}).get("disposed", 0),
            )
        elif report is not None:
            log.info("disposal: report %s waits for approval", report.id)

    def _sweep(self) -> None:
        try:  # a crash between a receipt and its erasure: finish it first
            done = disposal.finish(self.vault, archive=self.archive)
            if done:
                log.warning("disposal: finished %d call(s) a crash left receipted", len(done))
        except Exception as e:
            self.error = str(e) or type(e).__name__
            log.error("disposal: finishing interrupted disposals failed: %s", self.error)
        if self.settings.interval_s <= 0:
            return
        while not self._stop.wait(self.settings.interval_s):
            if self.vault.writer_error is not None:
                continue
            try:
                self.once()
            except Exception as e:
                self.error = str(e) or type(e).__name__
                log.error("scheduled disposal failed: %s", self.error)
                continue
            self.error = ""


class DisposalPart(_Base):
    """Lifecycle.PlanDisposal and Lifecycle.Dispose (a LifecycleServicer part)."""

    disposer: Disposer | None = None  # set by the server (app.Server)

    def _disposal_settings(self) -> disposal.Settings:
        if self.disposer is not None:
            return self.disposer.settings
        return disposal.Settings.parse(self.config.policy.get("disposal"))

    def _scope(self, r: pb.DisposeRequest) -> tuple[Identity, str | None]:
        who = _who()
        if who.tenant is not None:
            if r.tenant and r.tenant != who.tenant:
                raise InputError(f"{who.name} acts on tenant {who.tenant} only")
            return who, who.tenant
        return who, r.tenant or None

    @unary
    def PlanDisposal(self, r: pb.DisposeRequest, context: grpc.ServicerContext) -> pb.DisposeReply:
        """The calls due now as a signed disposition report; nothing changes."""
        who, tenant = self._scope(r)
        if r.list_reports:
            kept = [
                k
                for k in disposal.reports(self.vault)
                if tenant is None or k.body.get("tenant") == tenant
            ]
            return pb.DisposeReply(reports_json=[k.to_json() for k in kept])
        report = disposal.plan(self.vault, tenant=tenant, by=who.doc())
        return pb.DisposeReply(report_json=report.to_json(), status=report.status)

    @unary
    def Dispose(self, r: pb.DisposeRequest, context: grpc.ServicerContext) -> pb.DisposeReply:
        """Dispose of what is due (or keep it pending), or approve a pending report."""
        who, tenant = self._scope(r)
        settings = self._disposal_settings()
        archive = self.disposer.archive if self.disposer is not None else None
        by = who.doc()
        if r.report_id:
            kept = disposal.load(self.vault, r.report_id)
            if tenant is not None and kept.body.get("tenant") != tenant:
                raise InputError(f"no disposition report {r.report_id}")
            if kept.body.get("tenant") is None:
                _platform_only(who, "a disposition report of every tenant")
            report = disposal.approve(
                self.vault,
                r.report_id,
                by=by,
                archive=archive,
                reclaim_threshold=settings.reclaim_threshold,
            )
        else:
            got = disposal.run(self.vault, settings, by=by, tenant=tenant, archive=archive)
            if got is None:
                return pb.DisposeReply()
            report = got
        out = report.results or {}
        if report.status == "applied" and self.disposer is not None:
            self.disposer.count(out)
        return pb.DisposeReply(
            report_json=report.to_json(),
            status=report.status,
            disposed=int(out.get("disposed", 0)),
            skipped=int(out.get("skipped", 0)),
            reclaimed_bytes=int((out.get("reclaim") or {}).get("bytes_freed", 0)),
        )
