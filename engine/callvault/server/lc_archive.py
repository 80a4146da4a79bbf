"""Lifecycle.ArchiveRun and the server's archive (issue 12 section 7; docs/policy.md
"Archive"): the ``[archive]`` section of `serve --config` makes an Archive
(callvault.lifecycle.archive) attached to the vault at start (evicted calls' reads,
holds and retention mirrored onto objects), run every ``interval_s`` by the server
and on demand by a platform admin."""

from __future__ import annotations

import json
import logging
import threading
from typing import TYPE_CHECKING, Any

import grpc
from callvault_client._pb import callvault_pb2 as pb

from callvault.errors import InputError
from callvault.server.ingest import check_writer
from callvault.server.servicers import _platform_only, _who, unary

if TYPE_CHECKING:
    from callvault.lifecycle.archive import Archive
    from callvault.vault import Vault

log = logging.getLogger("callvault.server")


def archive_from_config(vault: Vault, policy: dict[str, Any]) -> Archive | None:
    """The server's archive: its [archive] section (a bad one stops the server with
    the reason), else the one kept with the data (DATA/archive.toml: reads only, no
    schedule), else None."""
    from callvault.lifecycle import archive as arch

    section = policy.get("archive")
    if section is not None:
        if not isinstance(section, dict):
            raise InputError("[archive] must be a table")
        return arch.Archive.from_settings(vault, section).attach()
    return arch.attach_stored(vault)


class ArchiveScheduler:
    """Every ``interval_s`` until stopped: one archive run (its report logged, its
    failure kept for Admin.Stats)."""

    def __init__(self, archive: Archive, stopped: threading.Event) -> None:
        self.archive = archive
        self.stopped = stopped
        self.thread = threading.Thread(target=self._loop, name="archive", daemon=True)

    def start(self) -> None:
        if self.archive.settings.interval_s > 0:
            self.thread.start()

    def join(self) -> None:
        if self.thread.is_alive():
            self.thread.join()

    def _loop(self) -> None:
        while not self.stopped.wait(self.archive.settings.interval_s):
            if self.archive.vault.writer_error is not None:
                continue  # the housekeeper reopens it first
            try:
                r = self.archive.run(limit=self.archive.settings.limit, stop=self.stopped)
            except Exception as e:  # the schedule goes on; say what failed
                self.archive.last_error = str(e) or type(e).__name__
                log.error("scheduled archive run failed: %s", self.archive.last_error)
                continue
            if r["archived"] or r["evicted"] or r["errors"]:
                log.info(
                    "archive run: %d archived, %d evicted, %d error(s)",
                    len(r["archived"]),
                    len(r["evicted"]),
                    len(r["errors"]),
                )


def archive_stats(archive: Archive | None) -> dict[str, Any]:
    """StatsReply 80-84."""
    if archive is None:
        return {}
    st = archive.status(max_age_s=10.0)  # a scan of the index: not per poll
    return {
        "archived_calls": st["archived_calls"],
        "archive_bytes": st["archive_bytes"],
        "evicted_calls": st["evicted_calls"],
        "archive_error": st["error"],
        "archive_due_calls": st["due_calls"],
    }


class ArchivePart:
    """Lifecycle.ArchiveRun (platform admin: it acts on every tenant)."""

    vault: Vault
    server: Any

    @unary
    def ArchiveRun(
        self, r: pb.ArchiveRunRequest, context: grpc.ServicerContext
    ) -> pb.ArchiveRunReply:
        from callvault.lifecycle.archive import ArchiveError

        _platform_only(_who(), "an archive run")
        archive = getattr(self.server, "archive", None)
        if archive is None or not archive.settings.bucket:
            raise ArchiveError(
                "this server has no archive: add an [archive] section to its config "
                '(docs/policy.md "Archive")'
            )
        check_writer(self.vault)
        report = archive.run(limit=int(r.limit))
        return pb.ArchiveRunReply(report_json=json.dumps(report, sort_keys=True))
