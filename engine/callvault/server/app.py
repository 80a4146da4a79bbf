"""`callvault serve`: the vault over gRPC (docs/server.md).

    callvault serve --data DIR --listen HOST:PORT [--config FILE]
                    [--tls-cert F --tls-key F [--tls-client-ca F] [--identities F]]
                    [--insecure-listen] [--port-file F]

Who calls (callvault.access.authn): a token (DATA/access/, `callvault token`), a
client certificate (``--tls-client-ca``, mapped by ``--identities``), or, while
no identity is configured at all, open mode for loopback callers (a WARNING at
start). Without TLS the server listens on loopback only, unless
``--insecure-listen``.

One process per data directory (the vault's LOCK). grpcio's thread-pool
server: every RPC, streams included, holds a worker thread while it runs, so
``workers`` >= ``max_concurrent_rpcs``; beyond that limit new RPCs get
RESOURCE_EXHAUSTED. SIGTERM (or SIGINT) shuts down gracefully: health goes
NOT_SERVING, new calls are refused, every open call's encoded audio is made
durable, in-flight RPCs get ``shutdown_grace_s`` to finish, the vault closes.

Housekeeping runs every ``housekeeping_s`` (1 s) on a thread of its own: the
Ingestor's time bounds (``Ingestor.reap``: calls never fed expire, calls whose
stream stayed away are sealed) and the writer's health: while the vault's
segment writer has failed (``Vault.writer_error``: a full disk, a permission
denied), every service is NOT_SERVING and ``Vault.reopen_writer`` is tried;
when it works again, SERVING. Admin.Stats.writer_error says why.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from callvault_client._pb import callvault_pb2 as pb
from callvault_client._pb import callvault_pb2_grpc as pbg
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from callvault.access import audit
from callvault.access.authn import CredentialAuthenticator, load_identities
from callvault.access.identity import Authenticator, OpenAuthenticator
from callvault.access.tokens import TokenStore
from callvault.durable import write_atomic
from callvault.errors import InputError
from callvault.lifecycle import disposal
from callvault.lifecycle.capacity import Capacity
from callvault.lifecycle.capacity import Settings as CapacitySettings
from callvault.lifecycle.rules import RecordingPolicy
from callvault.media.pipeline import Settings
from callvault.server.ingest import Ingestor, Limits, dtmf_settings
from callvault.server.interceptors import PERMISSIONS, IdentityInterceptor, MethodLog
from callvault.server.lc_archive import ArchiveScheduler, archive_from_config, archive_stats
from callvault.server.lc_disposal import Disposer
from callvault.server.lc_policy import check_config_file
from callvault.server.lc_subject import settings_of
from callvault.server.lifecycle import LifecycleServicer
from callvault.server.servicers import (
    AdminServicer,
    ArchiveServicer,
    Config,
    IngestServicer,
    IntegrityServicer,
)
from callvault.server.tokens import TokenAdmin
from callvault.vault import Vault
from callvault.vault.compact import Compactor

log = logging.getLogger("callvault.server")
SERVICES = ("Ingest", "Archive", "Integrity", "Admin", "Lifecycle")
INGEST_SERVICE = "callvault.v1.Ingest"  # its health is NOT_SERVING at the capacity floor
AUDIO_PERMISSIONS = ("listen", "export")  # Play; Export and GetBundle
ACCESS_DIR = "access"  # DATA/access: the token store (docs/format.md 10.1)


class _Admin(TokenAdmin, AdminServicer):
    """The Admin service: the servicer's RPCs and the token RPCs (server/tokens.py)."""

    archive: Any = None  # lifecycle.archive.Archive of the server, if any

    def Stats(self, r: pb.StatsRequest, context: grpc.ServicerContext) -> pb.StatsReply:
        reply = AdminServicer.Stats(self, r, context)
        if self.archive is not None and not reply.tenant:  # StatsReply 80-84
            reply.MergeFrom(pb.StatsReply(**archive_stats(self.archive)))
        return reply


class Server:
    """A running server on an open vault."""

    def __init__(
        self,
        vault: Vault,
        listen: str,
        config: Config | None = None,
        *,
        tls: tuple[bytes, bytes] | None = None,
        auth: Authenticator | None = None,
        client_ca: bytes | None = None,
        tokens: TokenStore | None = None,
    ) -> None:
        """``tls``: (certificate chain, key) PEM; ``client_ca``: with it, clients must
        present a certificate this CA signed. ``tokens``: the store Admin's token
        RPCs change (the authenticator reads its own)."""
        self.vault = vault
        self.config = config or Config()
        c = self.config
        self.ingestor = Ingestor(
            vault,
            Settings(
                store_codec="g711" if c.ingest_codec == "g711" else "opus",
                **dtmf_settings(c.policy.get("dtmf")),  # PCI: [dtmf] mask, keep_digits
            ),
            workers=c.ingest_workers,
            limits=Limits(c.max_open_calls, c.call_idle_s, c.resume_s),
            # [recording] and [regions] (docs/access.md "Recording rules"): a bad
            # policy is refused here, before the server listens
            policy=RecordingPolicy.parse(c.policy, data_dir=vault.path),
        )
        # [archive] (docs/policy.md "Archive"): a bad section stops the server here
        self.archive = archive_from_config(vault, c.policy)
        if c.ingest_codec == "auto":
            self.ingestor.auto_opus_calls = c.auto_opus_calls
        # peak mode: sealed raw (G.711) calls are compacted to Opus in the background
        self.compactor = Compactor(vault, workers=c.compact_workers, paused=c.compact_paused)
        self.methods = MethodLog()
        # every RPC's audit entry (docs/access.md "Audit trail"); its head goes into
        # the Merkle log at each checkpoint and at shutdown (docs/format.md 8.12)
        self.audit = audit.open_for_server(
            vault.path / "audit",
            c.policy.get("audit"),
            list(PERMISSIONS),
            log_size=vault.log_size(),
        )
        vault.before_checkpoint.append(lambda: self.audit.commit_leaf(vault.append_leaf))
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self.grpc = grpc.server(
            ThreadPoolExecutor(max_workers=c.workers, thread_name_prefix="rpc"),
            interceptors=[
                IdentityInterceptor(
                    auth or OpenAuthenticator(),
                    self.methods,
                    on_end=[self.audit.sink],
                    gate=self._audio_gate,
                )
            ],
            options=[
                ("grpc.max_receive_message_length", c.max_message_bytes),
                ("grpc.max_send_message_length", c.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=c.max_concurrent_rpcs,
        )
        pbg.add_IngestServicer_to_server(IngestServicer(self.ingestor, c), self.grpc)
        archive = ArchiveServicer(vault, self.ingestor, c)
        pbg.add_ArchiveServicer_to_server(archive, self.grpc)
        pbg.add_IntegrityServicer_to_server(IntegrityServicer(vault, archive.exports), self.grpc)
        admin = _Admin(
            vault, self.ingestor, self.methods, c, reclaim_error=lambda: self.reclaim_error
        )
        admin.token_store = tokens
        admin.compactor = self.compactor
        admin.audit = self.audit
        admin.archive = self.archive
        pbg.add_AdminServicer_to_server(admin, self.grpc)
        self.lifecycle = LifecycleServicer(vault, c, self)
        # the disposal sweeper (docs/policy.md "Disposal"): a bad [disposal] stops here
        self.disposer = Disposer(
            vault,
            disposal.Settings.parse(c.policy.get("disposal")),
            self.archive,  # its objects are deleted with the calls disposed of
        )
        self.lifecycle.disposer = self.disposer
        admin.stats_parts.append(self.disposer.stats)
        # the retention policy in force (docs/policy.md): the config's [policy] or the
        # stored one, attached before the first call can be sealed
        self.lifecycle.start_policy()
        pbg.add_LifecycleServicer_to_server(self.lifecycle, self.grpc)
        # [subject] keys: what the subject index keeps of new calls; [capacity]: the
        # watermarks (docs/policy.md); bad settings stop the server here
        vault.subject_keys = settings_of(c)
        self.capacity_settings = CapacitySettings.parse(c.policy.get("capacity"))
        self.capacity = Capacity(
            vault, self.capacity_settings, archive=self._archive, on_state=self._capacity_state
        )
        if self.capacity_settings.enabled:
            self.ingestor.admit_new = self.capacity.admit
        admin.stats_parts += [self.capacity.stats, self.lifecycle.subject_stats]
        self._capacity: threading.Thread | None = None
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        names = [pb.DESCRIPTOR.services_by_name[s].full_name for s in SERVICES]
        reflection.enable_server_reflection(
            [
                *names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.grpc,
        )
        if client_ca is not None and tls is None:
            raise InputError("--tls-client-ca needs --tls-cert and --tls-key")
        if tls is not None:
            creds = grpc.ssl_server_credentials(
                [(tls[1], tls[0])],
                root_certificates=client_ca,
                require_client_auth=client_ca is not None,
            )
            self.port = self.grpc.add_secure_port(listen, creds)
        else:
            self.port = self.grpc.add_insecure_port(listen)
        if not self.port:
            raise InputError(f"cannot listen on {listen}")
        self._names = names
        self._stopped = threading.Event()
        self._housekeeper: threading.Thread | None = None
        self._reclaimer: threading.Thread | None = None
        self._archiver: ArchiveScheduler | None = None
        self.reclaim_error = ""  # why the last scheduled reclaim failed (Admin.Stats)
        self._serving = True  # the segment writer works (health)

    def _audio_gate(self, method: str) -> str | None:
        """Every access to audio is audited: while the trail cannot be written (its
        last append failed), Play, Export and GetBundle are UNAVAILABLE. The refusals'
        own entries are tried, so the first that is written opens audio again."""
        if PERMISSIONS.get(method) in AUDIO_PERMISSIONS and self.audit.failing:
            return (
                f"the audit trail cannot be written ({self.audit.error}): audio is not "
                "served until every access to it can be audited; try again later"
            )
        return None

    def start(self) -> None:
        self.compactor.start()
        if self.capacity_settings.enabled:
            self.capacity.check(relieve=False)  # the state before the first call
        self.grpc.start()
        self._set_health(serving=True)
        self._housekeeper = threading.Thread(
            target=self._housekeeping, name="housekeeping", daemon=True
        )
        self._housekeeper.start()
        if self.config.reclaim_interval_s > 0:
            self._reclaimer = threading.Thread(target=self._reclaiming, name="reclaim", daemon=True)
            self._reclaimer.start()
        self.disposer.start()  # finishes what a crash cut short, then on schedule
        if self.capacity_settings.enabled:
            self._capacity = threading.Thread(
                target=self._capacity_checks, name="capacity", daemon=True
            )
            self._capacity.start()

    def _archive(self) -> Any:
        """The archive tier (callvault.lifecycle.archive), None when none is configured:
        the archive part of the server sets ``self.archive``."""
        return getattr(self, "archive", None)

    def _capacity_checks(self) -> None:
        """Every [capacity] interval_s until stop: measure the data volume, relieve it
        above the high watermark (lifecycle.capacity)."""
        while not self._stopped.wait(self.capacity_settings.interval_s):
            if self.vault.writer_error is not None:
                continue  # the housekeeper reopens it first
            self.capacity.check(stop=self._stopped)

    def _capacity_state(self, old: str, new: str) -> None:
        """At the floor the Ingest service is NOT_SERVING in the health service (a load
        balancer sends new calls elsewhere); the others stay as the writer says."""
        if "critical" in (old, new) and not self._stopped.is_set():
            self._set_health(serving=self._serving)
        if self.archive is not None and self.config.policy.get("archive") is not None:
            self._archiver = ArchiveScheduler(self.archive, self._stopped)
            self._archiver.start()

    def _set_health(self, *, serving: bool) -> None:
        self._serving = serving
        full = getattr(self, "capacity", None) is not None and self.capacity.state == "critical"
        for name in ["", *self._names]:
            up = serving and not (full and name == INGEST_SERVICE)
            self.health.set(
                name,
                health_pb2.HealthCheckResponse.SERVING
                if up
                else health_pb2.HealthCheckResponse.NOT_SERVING,
            )

    def _housekeeping(self) -> None:
        """Every ``housekeeping_s`` until stop: reap, then check the writer."""
        serving = True
        while not self._stopped.wait(self.config.housekeeping_s):
            try:
                for live, what in self.ingestor.reap():
                    log.info("call %s: %s (ingest limits)", live.spec.call_id, what)
                serving = self._check_writer(serving)
            except Exception:  # housekeeping must go on; say what failed
                log.exception("housekeeping failed")

    def _reclaiming(self) -> None:
        """Every ``reclaim_interval_s`` until stop: reclaim the space of dead records
        (docs/format.md 8.11); ingest goes on meanwhile. A failure is logged and kept
        for Admin.Stats (``reclaim_error``); the next run tries again."""
        while not self._stopped.wait(self.config.reclaim_interval_s):
            if self.vault.writer_error is not None:
                continue  # the housekeeper reopens it first
            try:
                done = self.vault.reclaim(
                    threshold=self.config.reclaim_threshold, stop=self._stopped
                )
            except Exception as e:
                self.reclaim_error = str(e) or type(e).__name__
                log.error("scheduled reclaim failed: %s", self.reclaim_error)
                continue
            self.reclaim_error = ""
            if done.bytes_freed:
                log.info(
                    "reclaimed %d bytes (%d segment(s) removed, %d rewritten)",
                    done.bytes_freed,
                    done.segments_removed,
                    done.segments_rewritten,
                )

    def _check_writer(self, serving: bool) -> bool:
        """NOT_SERVING while the segment writer has failed (reopening it each time);
        SERVING again once it works. Returns whether it serves now."""
        if self.vault.writer_error is None:
            if not serving:
                log.info("SERVING again: the segment writer works")
                self._set_health(serving=True)
            return True
        if serving:
            log.error("NOT_SERVING: %s", self.vault.writer_error)
            self._set_health(serving=False)
        try:
            ok = self.vault.reopen_writer()
        except Exception as e:
            log.error("reopening the segment writer failed: %s", e)
            ok = False
        if ok and self.vault.writer_error is None and not self._stopped.is_set():
            log.info("SERVING again: the segment writer works")
            self._set_health(serving=True)
            return True
        return False

    def stop(self) -> None:
        """Graceful: NOT_SERVING, refuse new calls, store open calls' audio, drain."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._housekeeper is not None:  # no reaping or health changes from here on
            self._housekeeper.join()
        if self._reclaimer is not None:  # a run stops after the step it is in
            self._reclaimer.join()
        self.disposer.stop()  # a disposal running finishes first
        if self._capacity is not None:
            self._capacity.join()
        if self._archiver is not None:  # a run finishes the call it is on, then stops
            self._archiver.join()
        self.health.enter_graceful_shutdown()
        self.ingestor.shutdown(lambda live, e: log.error("call %s: %s", live.spec.call_id, e))
        self.grpc.stop(self.config.shutdown_grace_s).wait()
        self.ingestor.shutdown()  # what streams processed while draining
        self.ingestor.workers.shutdown()
        self.compactor.stop()  # a compaction running finishes (or a crash would cut it)
        self.ingestor.waiters.shutdown()
        self.audit.commit_leaf(self.vault.append_leaf)  # the last entries, in the log
        self.audit.close()
        self.vault.close()

    def wait(self) -> None:
        self._stopped.wait()


def load_config(path: str | None) -> Config:
    """``--config FILE``: TOML (settings at the top, then the policy's sections such
    as ``[recording]``), or JSON (an object of the same) when FILE ends in .json."""
    if not path:
        return Config()
    try:
        text = Path(path).read_text()
        doc: Any = json.loads(text) if path.endswith(".json") else tomllib.loads(text)
    except (OSError, ValueError) as e:  # tomllib's error names the line and column
        raise InputError(f"--config {path}: {e}") from None
    if not isinstance(doc, dict):
        raise InputError(f"--config {path}: expected a JSON object of settings")
    return Config(**doc)


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")


def is_loopback_host(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def check_listen(listen: str, *, tls: bool, insecure: bool) -> None:
    """Without TLS, loopback only unless ``--insecure-listen``: tokens and audio would
    cross the network in clear."""
    host = listen.rpartition(":")[0]
    if tls or insecure or is_loopback_host(host):
        return
    raise InputError(
        f"--listen {listen} is not a loopback address and the server has no TLS: give "
        "--tls-cert and --tls-key (and --tls-client-ca for client certificates), or "
        "--insecure-listen to serve in clear anyway (tokens and audio unencrypted)"
    )


def cmd_serve(args: argparse.Namespace) -> int:
    # INFO: one access-log line per RPC (caller, method, outcome, duration)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    config = load_config(args.config)
    check_config_file(args.config)  # a bad [policy] refused with its line (docs/policy.md)
    tls = None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise InputError("TLS needs both --tls-cert and --tls-key")
    if args.tls_cert:
        tls = (Path(args.tls_cert).read_bytes(), Path(args.tls_key).read_bytes())
    client_ca = Path(args.tls_client_ca).read_bytes() if args.tls_client_ca else None
    if client_ca and tls is None:
        raise InputError("--tls-client-ca needs --tls-cert and --tls-key")
    if args.identities and not client_ca:
        raise InputError("--identities maps client certificates: give --tls-client-ca too")
    certs = load_identities(args.identities) if args.identities else []
    check_listen(args.listen, tls=tls is not None, insecure=args.insecure_listen)
    store = TokenStore(Path(args.data) / ACCESS_DIR)
    auth = CredentialAuthenticator(
        store,
        certs,
        client_ca=client_ca is not None,
        create_hint=f"callvault --data {args.data} token create --name NAME --role admin "
        "--platform",
    )
    vault = Vault.open(args.data, key_file=args.key_file, segment_bytes=config.segment_bytes)
    r = vault.report
    if r.truncated or r.damage or r.reindexed or r.replays:
        print(
            f"callvault: recovery: truncated {r.truncated}, re-indexed {r.reindexed} "
            f"record(s), damage {len(r.damage)}, replays {len(r.replays)}",
            file=sys.stderr,
        )
    try:
        server = Server(
            vault, args.listen, config, tls=tls, auth=auth, client_ca=client_ca, tokens=store
        )
    except BaseException:
        vault.close()
        raise
    server.start()
    stop = threading.Event()
    wake = threading.Event()
    hup = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()
        wake.set()

    def on_hup(signum: int, _frame: Any) -> None:  # reload [policy]: docs/policy.md
        hup.set()
        wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hup)
    host = args.listen.rsplit(":", 1)[0]
    print(
        f"callvault: serving {args.data} on {host}:{server.port}{' (TLS)' if tls else ''}",
        file=sys.stderr,
        flush=True,
    )
    if auth.is_open():
        log.warning(
            "OPEN MODE: no identities are configured (no token in %s, no --tls-client-ca): "
            "every caller on loopback is an admin, others are refused. Create the first "
            "token: callvault --data %s token create --name NAME --role admin --platform",
            store.dir,
            args.data,
        )
    if args.port_file:
        write_atomic(Path(args.port_file), f"{server.port}\n".encode())
    while not stop.is_set():
        wake.wait(1.0)
        wake.clear()
        if hup.is_set() and not stop.is_set():
            hup.clear()
            server.lifecycle.reload_policy(args.config)
    print("callvault: shutting down (open calls made durable)", file=sys.stderr, flush=True)
    server.stop()
    return 0
