"""Per-call key files: DATA/keys/calls/hh/<sha256(tenant 00 call_id)>.key holds a
call's data key wrapped by the key file's KEK (docs/format.md 8.6), and
``<same>.number.key`` beside it the key of its customer number (a separate key,
so a bundle's data key does not reveal the number). Erasing a call deletes its
files (crypto-shredding); a KEK rotation re-wraps every file."""

from __future__ import annotations

import hashlib
import os
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
