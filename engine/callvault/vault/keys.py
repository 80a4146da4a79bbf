"""Per-call key files: DATA/keys/calls/hh/<sha256(tenant 00 call_id)>.key holds a
call's data key wrapped by the key file's KEK (docs/format.md 8.6), and
``<same>.number.key`` beside it the key of its customer number (a separate key,
so a bundle's data key does not reveal the number). Erasing a call deletes its
files (crypto-shredding); a KEK rotation re-wraps every file."""

from __future__ import annotations

import hashlib
from pathlib import Path

from callvault.durable import write_atomic
from callvault.store import crypto
from callvault.store import records as rec
from callvault.vault.common import VaultError

NUMBER_SUFFIX = ".number.key"


class CallKeys:
    """The wrapped data keys of one vault's calls (``directory`` = DATA/keys/calls)."""

    def __init__(self, directory: Path, keys: crypto.KeyFile) -> None:
        self.directory = directory
        self.keys = keys

    def path(self, tenant: str, call_id: str) -> Path:
        h = hashlib.sha256(rec.call_aad(tenant, call_id)).hexdigest()
        return self.directory / h[:2] / f"{h}.key"

    def create(self, tenant: str, call_id: str) -> crypto.DataKey:
        """A new data key for the call, durable (wrapped) in its file when this returns."""
        key = crypto.new_data_key()
        p = self.path(tenant, call_id)
        p.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(p, self.keys.wrap(key))
        return key

    def number_path(self, tenant: str, call_id: str) -> Path:
        p = self.path(tenant, call_id)
        return p.with_name(p.stem + NUMBER_SUFFIX)

    def create_number(self, tenant: str, call_id: str) -> crypto.DataKey:
        """A new key for the call's customer number, durable (wrapped) when this returns."""
        key = crypto.new_data_key()
        p = self.number_path(tenant, call_id)
        p.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(p, self.keys.wrap(key))
        return key

    def get_number(self, tenant: str, call_id: str) -> crypto.DataKey:
        try:
            return crypto.DataKey(self.keys.unwrap(self.number_path(tenant, call_id).read_bytes()))
        except FileNotFoundError:
            raise VaultError(
                f"call {call_id}: the key of its customer number was destroyed (erased)"
            ) from None

    def get(self, tenant: str, call_id: str) -> crypto.DataKey:
        try:
            return crypto.DataKey(self.keys.unwrap(self.path(tenant, call_id).read_bytes()))
        except FileNotFoundError:
            raise VaultError(
                f"call {call_id}: its key was destroyed (erased); the audio cannot be read"
            ) from None

    def destroy(self, tenant: str, call_id: str) -> None:
        self.path(tenant, call_id).unlink(missing_ok=True)
        self.number_path(tenant, call_id).unlink(missing_ok=True)

    def rewrap(self, kek_id: int) -> int:
        """Re-wrap every call's data key (and customer-number key) under ``kek_id``;
        returns how many calls' keys."""
        n = 0
        for p in sorted(self.directory.glob("*/*.key")):
            write_atomic(p, self.keys.rewrap(p.read_bytes(), kek_id))
            n += not p.name.endswith(NUMBER_SUFFIX)
        return n
