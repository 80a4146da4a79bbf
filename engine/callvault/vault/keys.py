"""Key files of the vault's calls and tenants (docs/format.md 8.6).

DATA/keys/calls/hh/<sha256(tenant 00 call_id)>.key holds a call's data key
wrapped under its tenant's KEK (version 2; calls recorded before per-tenant KEKs:
version 1, under the key file's KEK), and ``<same>.number.key`` beside it the key
of its customer number (a separate key, so a bundle's data key does not reveal the
number). DATA/keys/tenants/<sha256(tenant)>/<generation>.kek holds each generation
of a tenant's KEK, wrapped under the key file's active KEK (the master KEK).
Erasing a call deletes its files (crypto-shredding); erasing a tenant destroys
its KEK (every call of the tenant at once). A master rotation re-wraps the
tenants' KEKs (and version 1 call keys); a tenant rotation re-wraps that tenant's
call keys under a new generation of its KEK."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from callvault.durable import fsync_dir, write_atomic
from callvault.store import crypto
from callvault.store import records as rec
from callvault.vault.common import VaultError

NUMBER_SUFFIX = ".number.key"
KEK_SUFFIX = ".kek"
# written in DATA/keys/tenants by a new vault, or by a master rotation that found no
# version 1 call key: every call key is wrapped under a tenant KEK, so a master
# rotation need not look at them
V2_ONLY = "v2-only"
# DATA/keys/subjects/<sha256(tenant)>.key: the tenant's subject key (the HMAC key of its
# subject index, docs/format.md 8.16), wrapped under the master key like a KEK
SUBJECTS_DIR = "subjects"

# Test hook: the SIGKILL crash tests stop a tenant erase or rotation at a named step
# (tests/e2e/test_tenant_crash.py): CALLVAULT_TENANT_CRASH=<step> kills the process.
_CRASH_AT = os.environ.get("CALLVAULT_TENANT_CRASH", "")


def crash_point(step: str) -> None:
    if step == _CRASH_AT:
        os.kill(os.getpid(), 9)


class TenantErased(VaultError):
    """The tenant was erased: its calls cannot be read, and it takes no new calls."""


class TenantKeks:
    """The tenants' KEKs (``directory`` = DATA/keys/tenants): per tenant a directory
    of generations, each a 32-byte KEK wrapped under the master key file (version 1,
    45 bytes, 0600, written atomically). The highest generation wraps new call keys;
    older ones stay until a tenant rotation has re-wrapped every call key under a
    newer one. Thread-safe."""

    def __init__(self, directory: Path, keys: crypto.KeyFile) -> None:
        self.directory = directory
        self.keys = keys
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, int], bytes] = {}
        self._active: dict[str, int] = {}  # tenant -> its newest generation (this process)
        self._subject: dict[str, bytes] = {}  # tenant -> its subject key

    def dir(self, tenant: str) -> Path:
        return self.directory / hashlib.sha256(tenant.encode()).hexdigest()

    def path(self, tenant: str, generation: int) -> Path:
        return self.dir(tenant) / f"{generation:08x}{KEK_SUFFIX}"

    def generations(self, tenant: str) -> list[int]:
        d = self.dir(tenant)
        if not d.is_dir():
            return []
        return sorted(int(p.name[: -len(KEK_SUFFIX)], 16) for p in d.glob("*" + KEK_SUFFIX))

    def kek(self, tenant: str, generation: int) -> bytes | None:
        """Generation ``generation`` of the tenant's KEK; None once it is destroyed."""
        with self._lock:
            kek = self._cache.get((tenant, generation))
            if kek is not None:
                return kek
            p = self.path(tenant, generation)
            try:
                wrapped = crypto.read_private_file(p, "tenant key file", "the tenant's KEK")
            except FileNotFoundError:
                return None
            kek = self.keys.unwrap(wrapped)
            self._cache[(tenant, generation)] = kek
            return kek

    def active(self, tenant: str) -> tuple[int, bytes]:
        """(generation, KEK) that wraps the tenant's new call keys; the tenant's first
        KEK is made (durable) on its first call."""
        gen = self._active.get(tenant)
        if gen is None:
            gens = self.generations(tenant)
            if not gens:
                return self.add_generation(tenant)
            gen = gens[-1]
        kek = self.kek(tenant, gen)
        if kek is None:  # removed meanwhile: only an erasure removes the newest
            raise TenantErased(f"tenant {tenant}: its key-encryption key was destroyed")
        self._active[tenant] = gen
        return gen, kek

    def add_generation(self, tenant: str) -> tuple[int, bytes]:
        """A new generation of the tenant's KEK, durable when this returns."""
        with self._lock:
            gens = self.generations(tenant)
            gen = (gens[-1] if gens else 0) + 1
            kek = secrets.token_bytes(crypto.KEY_BYTES)
            d = self.dir(tenant)
            if not d.is_dir():
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
                fsync_dir(d.parent)
            write_atomic(self.path(tenant, gen), self.keys.wrap(kek), 0o600)
            self._cache[(tenant, gen)] = kek
            self._active[tenant] = gen
            return gen, kek

    def subject_path(self, tenant: str) -> Path:
        return self.directory.parent / SUBJECTS_DIR / f"{self.dir(tenant).name}.key"

    def subject_key(self, tenant: str, *, create: bool = False) -> bytes | None:
        """The tenant's subject key (the HMAC key of its subject index, docs/format.md
        8.16): 32 random bytes wrapped under the master key file, made (durable) on
        first use when ``create``; None when the tenant has none (no call of it was
        indexed by subject, or the tenant was erased)."""
        with self._lock:
            key = self._subject.get(tenant)
            if key is not None:
                return key
            p = self.subject_path(tenant)
            try:
                wrapped = crypto.read_private_file(
                    p, "subject key file", "the tenant's subject key"
                )
            except FileNotFoundError:
                if not create:
                    return None
                key = secrets.token_bytes(crypto.KEY_BYTES)
                if not p.parent.is_dir():
                    p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                    fsync_dir(p.parent.parent)
                write_atomic(p, self.keys.wrap(key), 0o600)
            else:
                key = self.keys.unwrap(wrapped)
            self._subject[tenant] = key
            return key

    def drop_generations(self, tenant: str, below: int) -> None:
        """Destroy the generations older than ``below`` (every key re-wrapped)."""
        with self._lock:
            for gen in self.generations(tenant):
                if gen < below:
                    self.path(tenant, gen).unlink(missing_ok=True)
                    self._cache.pop((tenant, gen), None)
            fsync_dir(self.dir(tenant))

    def destroy(self, tenant: str) -> int:
        """Destroy every generation of the tenant's KEK (durable when this returns):
        every call key wrapped under it can no longer be unwrapped. The directory
        stays (``remove``). Returns how many generations were destroyed."""
        with self._lock:
            n = 0
            for gen in self.generations(tenant):
                self.path(tenant, gen).unlink(missing_ok=True)
                n += 1
            for key in [k for k in self._cache if k[0] == tenant]:
                del self._cache[key]
            self._active.pop(tenant, None)
            # its subject index's key too: the HMACs of its subjects link to nobody
            subject = self.subject_path(tenant)
            if subject.exists():
                subject.unlink()
                fsync_dir(subject.parent)
            self._subject.pop(tenant, None)
            if self.dir(tenant).is_dir():
                fsync_dir(self.dir(tenant))
            return n

    def remove(self, tenant: str) -> None:
        """Remove the (emptied) directory of an erased tenant."""
        d = self.dir(tenant)
        if d.is_dir():
            for p in d.iterdir():  # a .tmp a crash left
                p.unlink(missing_ok=True)
            d.rmdir()
            fsync_dir(self.directory)

    def rewrap(self, kek_id: int) -> int:
        """Re-wrap every tenant's KEK generations under master KEK ``kek_id``;
        returns how many files. The tenants' subject keys (8.16) are re-wrapped
        with them (first; not counted: the count is of the keys that wrap keys)."""
        n = 0
        with self._lock:
            for p in sorted((self.directory.parent / SUBJECTS_DIR).glob("*.key")):
                write_atomic(p, self.keys.rewrap(p.read_bytes(), kek_id), 0o600)
            for p in sorted(self.directory.glob("*/*" + KEK_SUFFIX)):
                write_atomic(p, self.keys.rewrap(p.read_bytes(), kek_id), 0o600)
                n += 1
                if n == 1:
                    crash_point("master-rotate-tenant-rewrapped")
        return n


def subject_mac(key: bytes, name: str, value: str) -> bytes:
    """A subject's entry in the subject index (docs/format.md 8.16): HMAC-SHA256 under
    the tenant's subject key of the key's name, a 00 byte and the value (UTF-8, as
    given: no normalisation)."""
    return hmac.new(key, name.encode() + b"\x00" + value.encode(), hashlib.sha256).digest()


def subject_values(
    names: Iterable[str], customer_number: str, extra: dict[str, object] | None
) -> dict[str, str]:
    """The values of a call that its subject index keeps (``names``: customer_number
    and the configured extra keys): non-empty strings (an integer in ``extra`` as its
    decimal text), by name."""
    out: dict[str, str] = {}
    for name in names:
        value = customer_number if name == "customer_number" else (extra or {}).get(name)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            value = str(value)
        if isinstance(value, str) and value:
            out[name] = value
    return out


class CallKeys:
    """The wrapped data keys of one vault's calls (``directory`` = DATA/keys/calls).
    New keys are wrapped under their tenant's KEK (``tenants``); ``erased(tenant)``
    says whether a tenant was erased (the index's tombstone), for the messages."""

    def __init__(
        self,
        directory: Path,
        keys: crypto.KeyFile,
        tenants: TenantKeks | None = None,
        erased: Callable[[str], bool] = lambda tenant: False,
    ) -> None:
        self.directory = directory
        self.keys = keys
        self.tenants = tenants or TenantKeks(directory.parent / "tenants", keys)
        self.erased = erased

    def path(self, tenant: str, call_id: str) -> Path:
        h = hashlib.sha256(rec.call_aad(tenant, call_id)).hexdigest()
        return self.directory / h[:2] / f"{h}.key"

    def number_path(self, tenant: str, call_id: str) -> Path:
        p = self.path(tenant, call_id)
        return p.with_name(p.stem + NUMBER_SUFFIX)

    def _create(self, tenant: str, p: Path) -> crypto.DataKey:
        key = crypto.new_data_key()
        gen, kek = self.tenants.active(tenant)
        p.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(p, crypto.wrap_tenant(kek, gen, key))
        return key

    def create(self, tenant: str, call_id: str) -> crypto.DataKey:
        """A new data key for the call, durable (wrapped) in its file when this returns."""
        return self._create(tenant, self.path(tenant, call_id))

    def create_number(self, tenant: str, call_id: str) -> crypto.DataKey:
        """A new key for the call's customer number, durable (wrapped) when this returns."""
        return self._create(tenant, self.number_path(tenant, call_id))

    def _unwrap(self, tenant: str, call_id: str, wrapped: bytes) -> bytes:
        version, kid = crypto.wrapped_header(wrapped)
        if version == crypto.WRAP_VERSION:  # recorded before per-tenant KEKs
            return self.keys.unwrap(wrapped)
        kek = self.tenants.kek(tenant, kid)
        if kek is None:
            if self.erased(tenant):
                raise TenantErased(
                    f"call {call_id}: tenant {tenant} was erased (its key-encryption key"
                    " is destroyed); the call cannot be read"
                )
            raise VaultError(
                f"call {call_id}: generation {kid} of tenant {tenant}'s key-encryption key"
                " is missing; restore DATA/keys/tenants from your backup"
            )
        return crypto.unwrap_tenant(kek, wrapped)

    def _read(self, tenant: str, call_id: str, p: Path, what: str) -> crypto.DataKey:
        try:
            wrapped = p.read_bytes()
        except FileNotFoundError:
            if self.erased(tenant):
                raise TenantErased(
                    f"call {call_id}: tenant {tenant} was erased; the call cannot be read"
                ) from None
            raise VaultError(f"call {call_id}: {what} was destroyed (erased)") from None
        return crypto.DataKey(self._unwrap(tenant, call_id, wrapped))

    def get_number(self, tenant: str, call_id: str) -> crypto.DataKey:
        return self._read(
            tenant, call_id, self.number_path(tenant, call_id), "the key of its customer number"
        )

    def get(self, tenant: str, call_id: str) -> crypto.DataKey:
        try:
            return self._read(tenant, call_id, self.path(tenant, call_id), "its key")
        except TenantErased:
            raise
        except VaultError as e:
            if "was destroyed (erased)" in str(e):
                raise VaultError(f"{e}; the audio cannot be read") from None
            raise

    def destroy(self, tenant: str, call_id: str) -> None:
        self.path(tenant, call_id).unlink(missing_ok=True)
        self.number_path(tenant, call_id).unlink(missing_ok=True)

    def rewrap(self, kek_id: int) -> int:
        """Master rotation: re-wrap the call keys still wrapped under the key file
        (version 1: calls recorded before per-tenant KEKs) under ``kek_id``; keys
        wrapped under a tenant KEK are not touched. Once a pass finds none (or for a
        vault made with per-tenant KEKs), the marker ``V2_ONLY`` spares the scan.
        Returns how many files were re-wrapped."""
        marker = self.tenants.directory / V2_ONLY
        if marker.exists():
            return 0
        n = 0
        for p in sorted(self.directory.glob("*/*.key")):
            wrapped = p.read_bytes()
            if crypto.wrapped_header(wrapped)[0] != crypto.WRAP_VERSION:
                continue  # under its tenant's KEK
            write_atomic(p, self.keys.rewrap(wrapped, kek_id))
            n += 1
            if n == 1:
                crash_point("master-rotate-call-rewrapped")
        if n == 0:
            self.mark_v2_only()
        return n

    def mark_v2_only(self) -> None:
        self.tenants.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.tenants.directory / V2_ONLY, b"", 0o600)

    def rotate_tenant(self, tenant: str, call_ids: Iterable[str]) -> tuple[int, int]:
        """A new generation of the tenant's KEK; the keys of ``call_ids`` (every call of
        the tenant: the caller's list) re-wrapped under it, each file replaced
        atomically, version 1 keys migrated; then the older generations destroyed.
        Crash-safe: until the last step every key unwraps (each names its generation,
        and every generation is kept); a second run finishes the job. Returns (new
        generation, key files re-wrapped)."""
        gen, kek = self.tenants.add_generation(tenant)
        crash_point("tenant-rotate-generation")
        n = 0
        for call_id in call_ids:
            for p in (self.path(tenant, call_id), self.number_path(tenant, call_id)):
                try:
                    wrapped = p.read_bytes()
                except FileNotFoundError:
                    continue  # an erased call, or no customer number
                key = self._unwrap(tenant, call_id, wrapped)
                write_atomic(p, crypto.wrap_tenant(kek, gen, key))
                n += 1
                if n == 1:
                    crash_point("tenant-rotate-rewrapped")
        crash_point("tenant-rotate-all-rewrapped")
        self.tenants.drop_generations(tenant, gen)
        return gen, n


def stored_calls(data: Path) -> int:
    """How many calls of the vault in ``data`` have a data key (are not erased)."""
    return sum(1 for _ in (data / "keys" / "calls").glob("*/*.key"))


def has_vault_data(data: Path) -> bool:
    """Whether ``data`` holds a vault's data: a segment file, a call's key file or an
    index. (Its key file alone is not data: nothing was encrypted with it yet.)"""
    seg = data / "segments"
    if seg.is_dir() and any(p.is_file() for p in seg.iterdir()):
        return True
    return stored_calls(data) > 0 or any(
        (data / name).exists() for name in ("index/CURRENT", "index.new")
    )


def open_key_file(data: Path, key_file: Path, *, fresh: bool, read_only: bool) -> crypto.KeyFile:
    """The vault's key file. A new one (a new KEK) is made only for a brand-new vault
    (``fresh``: has_vault_data was false before the open); for a vault that holds
    data, a missing or unreadable key file is an error that says to restore it:
    a new key would make every stored call undecryptable."""
    if fresh:
        if read_only:
            raise VaultError(f"no vault at {data}")
        return crypto.KeyFile.open(key_file)
    n = stored_calls(data)
    lost = (
        f"without it the {n} stored call(s) cannot be decrypted"
        if n
        else "the vault's data was written under its keys"
    )
    if not os.path.lexists(key_file):
        raise VaultError(f"key file missing: {key_file}; restore it from your backup ({lost})")
    try:
        if read_only:  # no lock file, no clean-up: read it as it is
            return crypto.KeyFile(key_file, crypto.KeyFile._read(key_file))
        return crypto.KeyFile.open(key_file, create=False)
    except crypto.KeyFileError as e:
        if "group or others" in str(e):  # its mode: the message says what to do
            raise
        raise VaultError(f"{e}; restore it from your backup ({lost})") from None
