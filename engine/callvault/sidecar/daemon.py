"""The sidecar itself (:class:`Sidecar`): the calls, their UDP ports and spools, the
receive thread, the uplink (one stream to the server carrying every call, with a
forwarder per call: callvault.sidecar.forwarder) and the spool fsync timer; what the control API
asks of it (start, stop, list calls); recovery of the spool directory on start.

Spool durability policy: every record is written to the OS at once (a SIGKILL
of the sidecar loses nothing it received); each spool is fsynced every
``SYNC_S`` seconds when it changed, at the call's stop, and on SIGTERM.

On start the sidecar recovers its spool directory: calls not stopped get
their UDP ports back (same numbers, so senders keep sending) and keep
receiving; stopped ones keep forwarding until sealed.

Each call's CallStart carries a ``recording_id`` drawn at ``call start``
(:func:`new_recording_id`) and spooled with it (in the encrypted CALL record), so a
restarted sidecar resumes its own call on the server, and a call id the server
holds from another recording is refused by the server (ALREADY_EXISTS, a refusal
for good: the call fails with the server's message). Spools written before the
recording_id existed keep "" (which resumes what was recorded with "").

Failures end one call, never the sidecar. A call fails (state ``failed``, with a
``reason`` shown by ``call stop``, ``call ls`` and logged at ERROR once) when:

- its spool cannot be written or its sockets read (the receive thread's
  ``on_call_failed``, :meth:`Sidecar._call_failed`): its ports are released, its spool
  is closed and left on disk (ended if it still can be), so the next start of the
  sidecar forwards what was spooled;
- the server refuses it for good (a status the forwarder does not retry, or a Sealed
  while the call still receives: the id was sealed before), :meth:`Sidecar.refused`:
  it is stopped in the receive thread first, then its ports are released and its
  spool is deleted (the server will never take it).

The receive thread, the other calls and new calls go on. StartCall refuses up front
what the server would refuse: a call id, tenant or leg name against callvault.ids,
and a call id the server already has (Archive.GetCall, ALREADY_EXISTS); when the
server cannot be asked within ``START_CHECK_S`` the call is accepted and the
forwarder's refusal path ends it if the server turns it down later.

Recording rules and consent (docs/access.md "Recording rules"): StartCall asks the
server's decision (Ingest.Decide, within ``START_CHECK_S``) before any audio exists.
A call the server does not record is an :class:`UnrecordedCall`: its ports are bound
(so no later call gets them while the PBX still sends this one's RTP) but never read,
and it has no spool. While the server cannot decide, a call whose consent is
DECLINED or UNKNOWN is refused (UNAVAILABLE): the sidecar never spools audio of a
call that may turn out not to be recorded; a GRANTED one (or one that says
nothing, as before consent existed) starts and is spooled, and if the server's
Started then says not recorded, the call ends ``not_recorded``: its RTP is dropped
and its spool deleted.

Health (:meth:`Sidecar.check_health`, every ``SYNC_S``): NOT_SERVING while the
receive thread is dead or the spool directory cannot be written.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from callvault_client import Client
from callvault_client import errors as client_errors
from callvault_client._pb import callvault_pb2 as pb

from callvault import _net, ids
from callvault.errors import CallvaultError, InputError
from callvault.sidecar.call import Call, SidecarError, UnrecordedCall
from callvault.sidecar.forwarder import BACKOFF_S, Forwarder, Uplink
from callvault.sidecar.receiver import Receiver, bind_udp
from callvault.sidecar.spool import Spool, list_spools, load_sidecar_key, spool_name

log = logging.getLogger(__name__)

SYNC_S = 1.0  # spool fsync period (a power cut loses at most this much)
KEEP_SEALED = 1000  # sealed or failed calls remembered (ListCalls, duplicate start)
START_CHECK_S = 2.0  # StartCall asks the server whether the call id exists, this long
HEALTH_PROBE = ".health-probe"  # written and removed in the spool directory by check_health
RECORDING_ID_PREFIX = "sidecar:"  # a call's CallStart.recording_id: this and 128 random bits


def new_recording_id() -> str:
    """A call's ``CallStart.recording_id`` (docs/server.md "Call ids: one recording
    each"): ``sidecar:`` and 32 hex digits, drawn at ``call start`` and kept in the
    call's spooled CallStart, so every stream of this call (after reconnects and
    sidecar restarts) resumes it, and no other recording of the same call id can."""
    return RECORDING_ID_PREFIX + secrets.token_hex(16)


def meta_dict(m: pb.CallMeta) -> dict[str, Any]:
    """A CallMeta as ids.check_meta reads it (as the server reads a CallStart's)."""
    return {
        "direction": m.direction,
        "agent": m.agent,
        "skill_group": m.skill_group,
        "customer_number": m.customer_number,
        "tags": list(m.tags),
        "extra": dict(m.extra),
    }


class Sidecar:
    """The calls, their ports, spools, receiver and forwarders."""

    def __init__(
        self,
        upstream: str,
        rtp_host: str,
        port_min: int,
        port_max: int,
        spool_root: Path,
        *,
        tls_ca: bytes | None = None,
        token: str | None = None,
    ) -> None:
        """``token``: the server token (role recorder) sent on the uplink and the
        GetCall probe ("" or None: none)."""
        self.upstream = upstream
        self.rtp_host = rtp_host
        self.port_range = (port_min, port_max)
        self.spool_root = spool_root
        spool_root.mkdir(parents=True, exist_ok=True)
        # The spool's encryption key (docs/format.md 9.4): SPOOL/sidecar.key, created on
        # the first start; missing while calls are spooled is an error, never a new key.
        self.spool_key = load_sidecar_key(spool_root)
        self.lock = threading.Lock()
        self.calls: dict[tuple[str, str], Call] = {}
        self.sealed_keys: collections.OrderedDict[tuple[str, str], Call] = collections.OrderedDict()
        # calls the server's policy does not record (decided at StartCall): ports only,
        # until stopped; the last KEEP_SEALED stopped ones are remembered
        self.unrecorded: collections.OrderedDict[tuple[str, str], UnrecordedCall] = (
            collections.OrderedDict()
        )
        self._next_port = 0  # index into the range's even ports
        self._reserved: set[tuple[str, str]] = set()
        self.closing = threading.Event()
        options = [
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.max_send_message_length", 16 << 20),
        ]
        # The SDK's client of the server, with these channel options over its
        # defaults and the forwarders' reconnect backoff.
        self.client = Client(
            upstream, tls_ca=tls_ca, backoff=BACKOFF_S, options=options, token=token or ""
        )
        self._probe_denied = False  # GetCall refused by the server's role matrix (logged once)
        # Linux turns receive timestamping on for the whole stack asynchronously when
        # the first socket asks; until then datagrams are stamped when read. One
        # socket asking for the sidecar's whole life keeps it on, so a new call's
        # first packets get their arrival time, not their read time.
        self._stamp_keeper = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        _net.enable_timestamps(self._stamp_keeper.fileno())
        self.receiver = Receiver(self._first_flush, self._call_failed)
        # Health: None while serving, else why not; on_health(ok) hears each change.
        self.unhealthy: str | None = None
        self.on_health: Callable[[bool], None] | None = None
        self._syncer = threading.Thread(target=self._sync_loop, name="sidecar-sync", daemon=True)
        # The one stream to the server that carries every call (forwarder.py).
        self.uplink = Uplink(self)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Recover the spool directory, then start receiving and forwarding."""
        self.receiver.start()
        self._syncer.start()
        for path in list_spools(self.spool_root):
            try:
                spool = Spool.open(path, key=self.spool_key)
            except (OSError, CallvaultError) as e:
                log.error("spool %s cannot be opened, left alone: %s", path, e)
                continue
            if spool.dropped_bytes:
                log.warning("spool %s: torn tail of %d bytes truncated", path, spool.dropped_bytes)
            call = Call(spool)
            if call.state == "receiving":
                for leg in call.legs:
                    try:
                        leg.sock = self._bind(leg.port)
                    except OSError as e:
                        log.error(
                            "%s leg %s: UDP port %d cannot be bound again (%s): the "
                            "leg receives nothing",
                            call.call_id,
                            leg.name,
                            leg.port,
                            e,
                        )
                self.receiver.submit(functools.partial(self.receiver.add, call)).result()
            with self.lock:
                self.calls[call.key] = call
            log.info(
                "recovered %s (%s, %d batches spooled)", call.call_id, call.state, spool.batches
            )
            if spool.start_us is not None:
                self._start_forwarder(call)

    def shutdown(self) -> None:
        """SIGTERM: stop receiving, flush and fsync the spools, stop forwarding."""
        self.receiver.shutdown()
        with self.lock:
            calls = list(self.calls.values())
        for call in calls:
            call.spool.sync()
        with self.lock:
            self.closing.set()
            unrecorded = list(self.unrecorded.values())
        for u in unrecorded:
            u.close()
        self.uplink.close()
        self.client.close()
        self._stamp_keeper.close()

    def check_health(self) -> str | None:
        """None while the sidecar can record; else why not, in a sentence."""
        if not self.receiver.is_alive() and not self.closing.is_set():
            return "the receive thread has stopped"
        probe = self.spool_root / HEALTH_PROBE
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, b"ok")
            finally:
                os.close(fd)
            probe.unlink()
        except OSError as e:
            return f"the spool directory {self.spool_root} cannot be written: {e.strerror or e}"
        return None

    def update_health(self) -> None:
        why = self.check_health()
        if why != self.unhealthy:
            if why is None:
                log.info("healthy again: serving")
            else:
                log.error("NOT_SERVING: %s", why)
            self.unhealthy = why
        if self.on_health is not None:
            self.on_health(why is None)

    def _sync_loop(self) -> None:
        while not self.closing.wait(SYNC_S):
            self.update_health()
            with self.lock:
                calls = list(self.calls.values())
            for call in calls:
                try:
                    call.spool.sync()
                except OSError as e:  # deleted meanwhile (sealed), or a disk error
                    if call.state not in ("sealed", "failed") and not call.sync_failed:
                        call.sync_failed = True  # logged once per call
                        log.error("%s: spool fsync failed: %s", call.call_id, e)

    # -- ports -------------------------------------------------------------------

    def _bind(self, port: int) -> socket.socket:
        return bind_udp(self.rtp_host, port)

    def _allocate(self, count: int) -> list[tuple[int, socket.socket]]:
        """Bind ``count`` free EVEN ports of the range (RFC 3550 section 11: RTP on an
        even port, the sender's RTCP goes to the odd one above, which no leg takes),
        round robin (a port just freed is taken last, so stray packets of an old call
        do not land in a new one)."""
        lo, hi = self.port_range
        even = list(range(lo + lo % 2, hi + 1, 2))
        with self.lock:
            taken = {
                leg.port for c in self.calls.values() if c.state == "receiving" for leg in c.legs
            }
        got: list[tuple[int, socket.socket]] = []
        for i in range(len(even)):
            port = even[(self._next_port + i) % len(even)]
            if port in taken:
                continue
            try:
                got.append((port, self._bind(port)))
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    for _, s in got:
                        s.close()
                    raise SidecarError(
                        grpc.StatusCode.INTERNAL, f"cannot bind UDP {self.rtp_host}:{port}: {e}"
                    ) from e
                continue
            if len(got) == count:
                self._next_port = (self._next_port + i + 1) % len(even)
                return got
        for _, s in got:
            s.close()
        raise SidecarError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"no free even UDP port pair in {self.rtp_host}:{lo}-{hi} for {count} legs",
        )

    # -- control -------------------------------------------------------------------

    def start_call(self, req: pb.StartCallRequest) -> dict[str, int]:
        """StartCall's ports (leg name -> UDP port); see ``start_call_reply``."""
        return dict(self.start_call_reply(req).ports)

    def start_call_reply(self, req: pb.StartCallRequest) -> pb.StartCallReply:
        """StartCall: the call's ports, and the server's decision when it gave one."""
        legs = list(req.legs) or ["agent", "customer"]
        try:
            ids.check_call_id(req.call_id)
            if req.tenant:
                ids.check_call_id(req.tenant, "tenant")
            for name in legs:
                ids.check_leg_name(name)
            ids.check_meta(meta_dict(req.meta))  # the server's own bounds, before a port
        except InputError as e:
            raise SidecarError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        if not 1 <= len(legs) <= 2 or len(set(legs)) != len(legs):
            raise SidecarError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"legs {legs}: one or two distinct, non-empty names",
            )
        if self.closing.is_set() or not self.receiver.is_alive():
            raise SidecarError(grpc.StatusCode.UNAVAILABLE, "the sidecar is shutting down")
        key = (req.tenant or "default", req.call_id)
        with self.lock:
            if (
                key in self.calls
                or key in self.sealed_keys
                or key in self._reserved
                or key in self.unrecorded
            ):
                state = self.calls.get(key) or self.sealed_keys.get(key) or self.unrecorded.get(key)
                raise SidecarError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"call {req.call_id} is already on this sidecar"
                    + (f" ({state.state})" if state else ""),
                )
            self._reserved.add(key)  # while its ports are bound and its spool made
        try:
            unreachable = self._check_server(req.tenant, req.call_id)
            start = pb.CallStart(
                call_id=req.call_id,
                tenant=req.tenant,
                meta=req.meta,
                legs=[pb.LegSpec(name=n) for n in legs],
                recording_id=new_recording_id(),
                region=req.region,
                consent=req.consent,
            )
            decision = self._decide(start, unreachable)
            bound = self._allocate(len(legs))
            if decision is not None and not decision.recorded:
                unrecorded = UnrecordedCall(start, bound, decision)
                with self.lock:
                    self.unrecorded[key] = unrecorded
                log.info(
                    "call %s not recorded (%s: %s): ports %s bound, its RTP dropped",
                    req.call_id,
                    decision.rule,
                    decision.reason,
                    ", ".join(str(p) for p, _ in bound),
                )
                return pb.StartCallReply(ports=unrecorded.ports(), decision=decision)
            try:
                spool = Spool.create(
                    self.spool_root,
                    spool_name(req.tenant, req.call_id),
                    start.SerializeToString(),
                    [p for p, _ in bound],
                    _net.now_us(),
                    key=self.spool_key,
                )
            except BaseException as e:
                for _, s in bound:
                    s.close()
                if isinstance(e, FileExistsError):
                    raise SidecarError(
                        grpc.StatusCode.ALREADY_EXISTS,
                        f"call {req.call_id} already has a spool on this sidecar "
                        f"({self.spool_root}); use a new call id",
                    ) from None
                if isinstance(e, OSError):
                    raise SidecarError(
                        grpc.StatusCode.UNAVAILABLE,
                        f"the spool directory {self.spool_root} cannot be written: "
                        f"{e.strerror or e}",
                    ) from None
                raise
            call = Call(spool)
            for leg, (_, sock) in zip(call.legs, bound, strict=True):
                leg.sock = sock
            with self.lock:
                self.calls[key] = call
        finally:
            with self.lock:
                self._reserved.discard(key)
        self.receiver.submit(lambda: self.receiver.add(call)).result()
        log.info(
            "call %s started: %s",
            req.call_id,
            ", ".join(f"{leg.name} udp/{leg.port}" for leg in call.legs),
        )
        reply = pb.StartCallReply(ports={leg.name: leg.port for leg in call.legs})
        if decision is not None:
            reply.decision.CopyFrom(decision)
        return reply

    def _decide(
        self, start: pb.CallStart, unreachable: client_errors.CallvaultClientError | None
    ) -> pb.CallDecision | None:
        """The server's decision on the call (Ingest.Decide), or None when it cannot be
        asked within START_CHECK_S (``unreachable``: the id check found it so already)
        and the call's consent is GRANTED or unspecified (it is spooled; a not-recorded
        Started later drops it). DECLINED or UNKNOWN consent without a decision is
        refused: such audio is never spooled."""
        try:
            if unreachable is not None:
                raise unreachable
            return self.client.decide(start, timeout=START_CHECK_S)
        except client_errors.InvalidArgument as e:  # an unknown region, say
            raise SidecarError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the server refuses call {start.call_id}: {e.message}",
            ) from None
        except client_errors.CallvaultClientError as e:
            if start.consent in (pb.CONSENT_DECLINED, pb.CONSENT_UNKNOWN):
                consent = "declined" if start.consent == pb.CONSENT_DECLINED else "unknown"
                raise SidecarError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"call {start.call_id}: the server cannot say whether a call with "
                    f"consent {consent} may be recorded ({e.code.name}: {e.message}); "
                    "not started, nothing of it is spooled: start it again once the "
                    "server is reachable",
                ) from None
            log.warning(
                "call %s: the server cannot decide whether it is recorded (%s: %s); "
                "started and spooled, dropped if the server says not recorded",
                start.call_id,
                e.code.name,
                e.message,
            )
            return None

    def _check_server(self, tenant: str, call_id: str) -> client_errors.CallvaultClientError | None:
        """Refuse a call id the server already has (ALREADY_EXISTS; one it decided not
        to record included) or refuses (INVALID_ARGUMENT); a server that cannot be
        asked within START_CHECK_S lets the call start (its forwarder ends it if the
        server refuses it later): the error is returned (``_decide`` asks no more)."""
        try:
            info = self.client.get_call(call_id, tenant=tenant, timeout=START_CHECK_S)
        except client_errors.NotFound:
            return None
        except client_errors.InvalidArgument as e:
            raise SidecarError(
                grpc.StatusCode.INVALID_ARGUMENT, f"the server refuses call {call_id}: {e.message}"
            ) from None
        except client_errors.PermissionDenied as e:
            # a recorder identity may record but not read (docs/access.md): the
            # server refuses a taken call id when the call is forwarded instead
            if not self._probe_denied:
                self._probe_denied = True
                log.info(
                    "the server does not let this sidecar ask whether it has a call id "
                    "(%s); a call id it has already is refused when forwarded",
                    e.message,
                )
            return None
        except client_errors.CallvaultClientError as e:
            log.warning(
                "call %s: the server cannot say whether it has this call id (%s: %s); "
                "started anyway, it ends if the server refuses it",
                call_id,
                e.code.name,
                e.message,
            )
            return e
        what = {
            "sealed": "sealed",
            "open": "being recorded",
            "erased": "erased",
            "not_recorded": "decided not recorded",
        }.get(info.state, info.state)
        raise SidecarError(
            grpc.StatusCode.ALREADY_EXISTS,
            f"call {call_id} already exists on the server ({what}"
            + (f", tenant {tenant}" if tenant not in ("", "default") else "")
            + "); use a new call id",
        )

    def _lookup(self, tenant: str, call_id: str) -> Call:
        key = (tenant or "default", call_id)
        with self.lock:
            call = self.calls.get(key) or self.sealed_keys.get(key)
        if call is None:
            raise SidecarError(
                grpc.StatusCode.NOT_FOUND,
                f"no call {call_id!r} on this sidecar" + (f" (tenant {tenant})" if tenant else ""),
            )
        return call

    def stop_call(self, req: pb.StopCallRequest) -> pb.StopCallReply:
        with self.lock:
            unrecorded = self.unrecorded.get((req.tenant or "default", req.call_id))
        if unrecorded is not None:
            unrecorded.close()  # its ports: nothing was ever read from them
            with self.lock:
                self.unrecorded.move_to_end(unrecorded.key)
                stopped = [k for k, u in self.unrecorded.items() if u.stopped]
                for k in stopped[: max(0, len(stopped) - KEEP_SEALED)]:
                    del self.unrecorded[k]
            return pb.StopCallReply(state=unrecorded.state, reason=unrecorded.reason)
        call = self._lookup(req.tenant, req.call_id)
        if call.state == "receiving":
            try:
                self.receiver.submit(lambda: self._stop_in_receiver(call)).result(timeout=30)
            except SidecarError:
                raise
            except Exception as e:  # the final flush or the END record could not be written
                self._fail(call, f"the spool could not be written at the stop: {e}", delete=False)
            else:
                problem = call.codec_problem()
                log.info(
                    "call %s stopped: %d packets, %d batches%s",
                    call.call_id,
                    call.packets,
                    call.spool.batches,
                    f" ({problem})" if problem else "",
                )
        return pb.StopCallReply(
            packets=call.packets,
            batches=call.spool.batches,
            state=call.state,
            reason=call.reason,
            legs=[leg.describe() for leg in call.legs],
            codec_problem=call.codec_problem(),
        )

    def pause_call(self, req: pb.PauseCallRequest, pause: bool) -> pb.PauseCallReply:
        """PCI pause (``pause``) or resume of a receiving call: done in the receive
        thread (``Receiver.pause_call``), in order with the call's batches."""
        call = self._lookup(req.tenant, req.call_id)
        what = "pause" if pause else "resume"
        if call.state != "receiving":
            raise SidecarError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"call {call.call_id} is {call.state}, not receiving: nothing to {what}",
            )
        fut = self.receiver.submit(lambda: self.receiver.pause_call(call, pause))
        at_us, seq, dropped = fut.result(timeout=30)
        log.info(
            "call %s %s at %d (seq %d)", call.call_id, "paused" if pause else "resumed", at_us, seq
        )
        return pb.PauseCallReply(at_us=at_us, seq=seq, dropped_packets=dropped)

    def _stop_in_receiver(self, call: Call) -> None:
        if call.state != "receiving":
            return
        self.receiver.stop_call(call)
        with self.lock:
            if call.state != "receiving":
                return
            call.state = "forwarding"
        no_audio = call.spool.start_us is None
        if no_audio:
            call.spool.set_start_us(call.spool.created_us)
        # PCI: stopped while paused, no audio came since: the call (and its pause) lasts
        # to the stop, not to the last audio before the pause
        call.spool.finish(_net.now_us() if call.spool.paused else 0)
        call.wake()
        if no_audio:
            self._start_forwarder(call)

    def list_calls(self) -> list[pb.SidecarCall]:
        with self.lock:
            calls = list(self.calls.values()) + list(self.sealed_keys.values())
            unrecorded = list(self.unrecorded.values())
        return [c.describe() for c in calls] + [u.describe() for u in unrecorded]

    def _remember(self, call: Call) -> None:
        """(lock) An ended call joins the last KEEP_SEALED ended ones."""
        self.sealed_keys[call.key] = call
        while len(self.sealed_keys) > KEEP_SEALED:
            self.sealed_keys.popitem(last=False)

    # -- forwarding ----------------------------------------------------------------

    def _first_flush(self, call: Call) -> None:
        self._start_forwarder(call)

    def _start_forwarder(self, call: Call) -> None:
        with self.lock:  # the receive thread (first flush) and start() (recovery) may race
            if call.forwarder is not None or self.closing.is_set() or call.state == "failed":
                return
            call.forwarder = Forwarder(self.uplink, call)
        call.forwarder.start()

    # -- failures of one call -------------------------------------------------------

    def _call_failed(self, call: Call, exc: BaseException) -> None:
        """(receive thread) Reading or spooling ``call`` raised; the receiver has
        dropped its sockets. The call fails alone; its spool stays on disk."""
        what = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        self._fail(
            call,
            f"receiving failed ({type(exc).__name__}: {what}); what was spooled is kept "
            f"in {call.spool.directory} for the next start",
            delete=False,
            in_receiver=False,
        )

    def refused(self, call: Call, reason: str) -> None:
        """(forwarder) The server refused the call for good: it fails with ``reason``
        and its spool is deleted."""
        self._fail(call, reason, delete=True)

    def not_recorded(self, call: Call, decision: pb.CallDecision) -> None:
        """(forwarder) The server's Started said the call is not recorded (its policy;
        a call started while the server could not decide): its RTP is dropped from now
        on and its spool deleted; state ``not_recorded``."""
        self._fail(
            call,
            f"not recorded by the server's policy ({decision.rule}: {decision.reason})",
            delete=True,
            state="not_recorded",
        )

    def _fail(
        self,
        call: Call,
        reason: str,
        *,
        delete: bool,
        in_receiver: bool | None = None,
        state: str = "failed",
    ) -> None:
        """Mark ``call`` failed (once; a sealed call stays sealed) and release it in a
        thread of its own: stopped in the receive thread (when it still receives and
        ``in_receiver`` is not False), its forwarder stopped, its spool deleted
        (``delete``) or ended and closed, the call moved to the remembered ended
        calls. Never blocks the calling thread (the receiver's or a forwarder's)."""
        with self.lock:
            if call.state in ("failed", "sealed", "not_recorded"):
                return
            receiving = call.state == "receiving" if in_receiver is None else in_receiver
            call.state = state
            call.reason = reason
        if state == "failed":
            log.error("call %s failed: %s", call.call_id, reason)
        else:
            log.info("call %s: %s; its RTP dropped, its spool deleted", call.call_id, reason)
        threading.Thread(
            target=self._release,
            args=(call, delete, receiving),
            name=f"fail-{call.call_id}",
            daemon=True,
        ).start()

    def _release(self, call: Call, delete: bool, receiving: bool) -> None:
        if receiving:
            try:
                self.receiver.submit(lambda: self._drop_in_receiver(call)).result(timeout=30)
            except Exception as e:  # the receiver is gone: its sockets close with it
                log.warning("call %s: could not stop receiving: %s", call.call_id, e)
        forwarder = call.forwarder
        if forwarder is not None:
            forwarder.stop()
        try:
            if delete:
                call.spool.delete()
            else:
                with contextlib.suppress(Exception):
                    if call.spool.start_us is not None:
                        call.spool.finish()
                call.spool.close()
        except OSError as e:
            log.warning("call %s: spool %s: %s", call.call_id, call.spool.directory, e)
        with self.lock:
            self.calls.pop(call.key, None)
            self._remember(call)

    def _drop_in_receiver(self, call: Call) -> None:
        """(receive thread) Stop receiving a failed call: its sockets are drained and
        closed (what they held is dropped with the call)."""
        try:
            self.receiver.stop_call(call, keep=False)
        except Exception as e:  # the sockets are closed before the flush that raised
            log.warning("call %s: stopping its receiving: %s", call.call_id, e)

    def sealed(self, call: Call, sealed: pb.Sealed) -> None:
        """The server sealed the call: its spool goes."""
        log.info(
            "call %s sealed: %d frames per leg, log index %d, seal %s",
            call.call_id,
            sealed.frames,
            sealed.log_index,
            sealed.seal.hex(),
        )
        with self.lock:
            if call.state in ("failed", "not_recorded"):
                return
            call.state = "sealed"
            self.calls.pop(call.key, None)
            self._remember(call)
        call.spool.delete()
