"""The vault verbs' backend on an embedded vault: `callvault --data DIR <verb>`."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from callvault.cli.common import CallFields
from callvault.errors import CallvaultError, InputError

if TYPE_CHECKING:
    from callvault_client import pb

    from callvault.vault import Vault


# Verbs that only read: when the vault cannot be opened for writing (another process
# such as `callvault serve` holds it, or the disk is full or read-only), they open
# it read-only (Vault.open(read_only=True): no recovery, no file written).
READ_ONLY_VERBS = frozenset({"ls", "info", "verify", "export", "play"})


@contextlib.contextmanager
def connect(args: argparse.Namespace, *, create: bool = False) -> Iterator[LocalBackend]:
    """The vault in ``--data DIR`` (with ``--key-file``), open while the block runs.

    Only ``create`` (the verbs that mean it: import, init) makes a new vault; any
    other verb on a directory without one ends with "no vault at DIR", so a typo
    in ``--data`` never leaves an empty vault behind. The verbs that only read
    open the vault read-only when it cannot be opened for writing (a server holds
    it, the disk is full); any other verb on a vault another process holds (a
    server) is told what to do instead."""
    from callvault.vault import Vault, VaultUnwritable

    if not args.data:
        raise CallvaultError(f"{args.command} needs --data DIR (the vault's data directory)")
    data = Path(args.data)
    if not create and not is_vault(data):
        raise CallvaultError(
            f"no vault at {data} (create one with: callvault --data {data} init, or import a call)"
        )
    if args.command not in READ_ONLY_VERBS:
        check_not_in_use(data)
    # A vault this run makes is removed again when the verb fails before the vault
    # holds anything (an import of a file that is no capture leaves no directory).
    made = _Made(data, args.key_file) if create and not is_vault(data) else None
    # reindex rebuilds the index without opening it (it may be damaged)
    rebuild = args.command == "reindex"
    try:
        try:
            v = Vault.open(data, key_file=args.key_file, rebuild_index=rebuild)
        except VaultUnwritable:
            if args.command not in READ_ONLY_VERBS:
                raise
            v = Vault.open(data, key_file=args.key_file, read_only=True)
    except BaseException:
        if made is not None:
            made.remove()
        raise
    from callvault.lifecycle import archive  # DATA/archive.toml: evicted calls' audio

    if args.command != "policy" and not v.read_only:
        # calls this verb seals get their retention end (docs/policy.md); `policy`
        # itself replaces the stored policy, even a damaged one
        from callvault.lifecycle.policy import attach

        try:
            attach(v)
        except BaseException:
            v.close()
            raise
    empty = False
    try:
        with v:
            archive.attach_stored(v)
            try:
                yield LocalBackend(v)
            except BaseException:
                empty = made is not None and _holds_nothing(v)
                raise
    finally:
        if empty and made is not None:
            made.remove()


def _holds_nothing(v: Vault) -> bool:
    """Whether the vault has no call and no log leaf (False when it cannot tell)."""
    try:
        return v.stats()["calls"] == 0 and v.log_size() == 0
    except Exception:
        return False


class _Made:
    """What opening a new vault in ``data`` may create, noted before it does: the
    directory itself (and missing parents) or, in an existing directory that holds
    no vault, the entries it lacks; and a key file that is not there yet."""

    def __init__(self, data: Path, key_file: str | None) -> None:
        top = data.absolute()
        while not top.parent.exists() and top.parent != top:
            top = top.parent
        self.top: Path | None = None if data.exists() else top
        self.data = data
        self.before = set(os.listdir(data)) if data.is_dir() else set()
        self.key_file = Path(key_file) if key_file and not Path(key_file).exists() else None

    def remove(self) -> None:
        if self.top is not None:
            shutil.rmtree(self.top, ignore_errors=True)
        elif self.data.is_dir():
            for name in set(os.listdir(self.data)) - self.before:
                path = self.data / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        if self.key_file is not None:
            self.key_file.unlink(missing_ok=True)


# What every vault directory holds once a vault was opened there (vault/core.py).
VAULT_MARKS = ("segments", "log", "keys")


def is_vault(data: Path) -> bool:
    """Whether ``data`` holds a vault (not a missing, empty or other directory)."""
    return all((data / sub).is_dir() for sub in VAULT_MARKS)


def check_not_in_use(data: Path) -> None:
    """CallvaultError when another process holds the vault's lock (a vault has one
    writer: vault/core.py flocks DIR/LOCK), naming it and what to use instead."""
    import fcntl
    import os

    lock = data / "LOCK"
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return  # no lock file yet: nobody holds it (Vault.open reports anything else)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return
        st = os.fstat(fd)
    finally:
        os.close(fd)
    pid = lock_holder(st.st_dev, st.st_ino)
    argv = process_argv(pid) if pid is not None else []
    who = f"pid {pid}" if pid is not None else "pid unknown"
    if "serve" in argv:
        addr = server_address(argv, Path(f"/proc/{pid}/cwd")) or "HOST:PORT"
        raise CallvaultError(
            f"the vault at {data} is in use by a running server ({who}); "
            f"use --server {addr} instead of --data {data}"
        )
    raise CallvaultError(
        f"the vault at {data} is in use by another callvault process ({who}); "
        "try again when it has finished"
    )


def lock_holder(dev: int, ino: int) -> int | None:
    """The pid holding a flock on the file (dev, ino), from /proc/locks (Linux); None
    when it cannot be told."""
    import os

    want = f"{os.major(dev):02x}:{os.minor(dev):02x}:{ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        f = line.split()
        # "1: FLOCK  ADVISORY  WRITE 15747 fe:00:2147401 0 EOF" (a blocked waiter has "->")
        if len(f) >= 6 and f[1] == "FLOCK" and f[5] == want and f[4].isdigit():
            return int(f[4])
    return None


def process_argv(pid: int) -> list[str]:
    """A process's command line (empty when it cannot be read)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def server_address(argv: Sequence[str], cwd: Path) -> str | None:
    """The address a `callvault serve` command line serves on (its --listen, with the
    port of its --port-file when it asked for port 0); None when not told."""
    listen = _option(argv, "--listen") or "127.0.0.1:7443"
    host, _, port = listen.rpartition(":")
    if port == "0":
        port_file = _option(argv, "--port-file")
        try:
            port = (cwd / port_file).read_text().strip() if port_file else ""
        except OSError:
            port = ""
        if not port.isdigit():
            return None
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def _option(argv: Sequence[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.partition("=")[2]
    return None


class LocalBackend:
    """callvault.cli.backend.Backend on an open Vault."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault

    def import_call(
        self,
        call_id: str,
        inputs: Sequence[str],
        *,
        tenant: str,
        legs: Sequence[str] | None,
        meta: dict[str, Any],
        mask_dtmf: bool = True,
        keep_digits: bool = False,
    ) -> bytes:
        from callvault.media import pipeline

        settings = pipeline.Settings(mask_dtmf=mask_dtmf, keep_digits=keep_digits)
        try:
            _, seal = self.vault.import_call(
                call_id, inputs, tenant=tenant, legs=legs, settings=settings, **meta
            )
        except InputError as e:
            e_ = self.vault.index.get_call(tenant, call_id)
            if e_ is None or "already exists" not in str(e):
                raise
            return self._same_import(
                call_id, inputs, tenant=tenant, legs=legs, state=e_.state, settings=settings
            )
        return seal

    def _same_import(
        self,
        call_id: str,
        inputs: Sequence[str],
        *,
        tenant: str,
        legs: Sequence[str] | None,
        state: str,
        settings: Any = None,
    ) -> bytes:
        """The call exists: its seal when it holds what importing ``inputs`` would
        store (the pipeline is deterministic: the same legs and the same Opus packets,
        compared packet for packet), CallvaultError otherwise."""
        import sys

        from callvault.media import pipeline

        refused = CallvaultError(
            f"call {call_id} already exists ({state}) with different content: "
            "import this recording under a new call id"
        )
        if state != "sealed":
            raise CallvaultError(
                f"call {call_id} already exists ({state}): import this recording under a "
                "new call id"
            )
        e = self.vault.get_call(call_id, tenant=tenant)
        call = pipeline.run_call(
            pipeline.parse_inputs(inputs, legs), settings or pipeline.Settings()
        )
        if [r.name for r in call.legs] != list(e.legs):
            raise refused
        stored = self.vault.read_packets(call_id, tenant=tenant)
        for r, (data, lengths) in zip(call.legs, stored, strict=True):
            new_data, new_lengths = r.packets_all()
            if bytes(new_data) != bytes(data) or list(new_lengths) != list(lengths):
                raise refused
        print(
            f"callvault: call {call_id} is already stored, identical (nothing imported)",
            file=sys.stderr,
        )
        return bytes.fromhex(e.seal)

    def list_calls(
        self,
        *,
        tenant: str,
        since_us: int,
        until_us: int | None,
        agent: str | None,
        skill_group: str | None,
        tag: str | None,
    ) -> Sequence[CallFields]:
        return self.vault.list_calls(
            tenant=tenant,
            since_us=since_us,
            until_us=2**63 - 1 if until_us is None else until_us,
            agent=agent,
            skill_group=skill_group,
            tag=tag,
        )

    def list_decisions(
        self, *, tenant: str, since_us: int, until_us: int | None
    ) -> Sequence[pb.CallInfo]:
        from callvault.server.decisions import decision_info

        found = self.vault.index.decisions(
            tenant, since_us=since_us, until_us=2**63 - 1 if until_us is None else until_us
        )
        return [decision_info(d) for d in found]

    def call_detail(self, call_id: str, *, tenant: str) -> pb.CallInfo:
        from callvault.server.callinfo import call_detail
        from callvault.server.decisions import decision_info

        if self.vault.index.get_call(tenant, call_id) is None:
            d = self.vault.get_decision(call_id, tenant=tenant)
            if d is not None:  # not recorded: its decision
                return decision_info(d)
        e = self.vault.get_call(call_id, tenant=tenant)
        frames = int(self.vault.manifest(e.call_id, tenant=e.tenant)["frames"]) if e.seal else 0
        return call_detail(self.vault, e, frames, summary=True, customer_number=True)

    def export(
        self,
        call_id: str,
        out: str | BinaryIO,
        *,
        tenant: str,
        fmt: Literal["ogg", "wav"],
        from_s: float,
        to_s: float | None,
        metadata: bool = False,
        customer_number: bool = False,
    ) -> int:
        if isinstance(out, str):
            return self.vault.export(
                call_id,
                out,
                tenant=tenant,
                from_s=from_s,
                to_s=to_s,
                format=fmt,
                metadata=metadata,
                customer_number=customer_number,
            )
        import shutil
        import tempfile

        # a stream (stdout): written whole to a private file first, then copied
        with tempfile.TemporaryDirectory(prefix="callvault-export-") as tmp:
            path = Path(tmp) / f"call.{fmt}"
            n = self.vault.export(
                call_id,
                path,
                tenant=tenant,
                from_s=from_s,
                to_s=to_s,
                format=fmt,
                metadata=metadata,
                customer_number=customer_number,
            )
            with open(path, "rb") as f:
                shutil.copyfileobj(f, out)
            out.flush()
        return n

    def play(
        self, call_id: str, *, tenant: str, from_ms: int, to_ms: int | None, follow: bool
    ) -> Iterator[list[bytes]]:
        from callvault.server import playback

        if follow:
            raise CallvaultError("--follow listens to a call being recorded: it needs --server")
        for c in playback.play(
            self.vault, None, call_id, tenant=tenant, from_ms=from_ms, to_ms=to_ms, pcm=True
        ):
            yield [d for d, _ in c.legs]

    def verify(self, call_ids: Sequence[str], *, tenant: str, all: bool) -> Iterator[list[str]]:
        if all:
            yield [str(p) for p in self.vault.verify_all()]
            return
        for cid in call_ids:
            yield [str(p) for p in self.vault.verify_call(cid, tenant=tenant)]

    def bundle(
        self, call_id: str, out: Path, *, tenant: str, with_customer_number: bool = False
    ) -> None:
        from callvault.vault.bundle import write_bundle

        write_bundle(
            self.vault, call_id, out, tenant=tenant, with_customer_number=with_customer_number
        )

    def checkpoint(self) -> tuple[str, str]:
        return self.vault.checkpoint(), self.vault.signer.verifier_key()

    def erase(
        self, call_id: str, *, tenant: str, reason: str, override_retention: bool = False
    ) -> str | None:
        from callvault.cli.common import local_identity
        from callvault.lifecycle.holds import erase_or_defer

        if override_retention:  # the operator of --data DIR is the vault's admin
            from callvault.lifecycle.policy import override_reason

            e = self.vault.get_call(call_id, tenant=tenant)
            reason = override_reason(self.vault, e, reason)
        done = erase_or_defer(
            self.vault,
            call_id,
            tenant=tenant,
            reason=reason,
            by=local_identity(),
            override_governance=override_retention,
        )
        return None if done.erased else done.message

    def reindex(self, progress: Callable[[int], None]) -> int:
        # connect() opened the vault with rebuild_index=True: the index was rebuilt
        progress(self.vault.report.reindexed)
        return self.vault.report.reindexed

    def rotate_key(self) -> tuple[int, int]:
        return self.vault.rotate_key()

    def stats(self) -> dict[str, Any]:
        return dict(self.vault.stats())

    def reclaim(self, *, threshold: float, scan: bool) -> dict[str, int]:
        from callvault.vault.reclaim import DEFAULT_THRESHOLD

        return self.vault.reclaim(threshold=threshold or DEFAULT_THRESHOLD, scan=scan).as_dict()
