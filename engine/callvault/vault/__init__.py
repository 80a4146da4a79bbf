"""The embedded engine's face: ``Vault.open(DIR)`` records, lists, reads, exports,
verifies and erases calls with no network.

Owns the call lifecycle (open, record, seal, erase, recover, reindex), built
on the store (segments, index, keys at rest), the integrity layer (chains,
Merkle log, checkpoints) and the media layer (decoding and Ogg/WAV writing for
export). Modules: core (Vault, CallWriter: opening, the
write path, key rotation, the log's checkpoints and proofs), recovery (indexing
and recovery), keys (the calls' key files), reading, verify, export, bundle
(write_bundle), state and common (what the parts share).

May import store/, integrity/, media/, the compiled extensions (callvault._*)
and the base modules (errors, durable, timeline); never the server, the
sidecar or the command line.
"""

# The timeline's values, defined in callvault.timeline; re-exported here because
# callers have imported them from callvault.vault.
from callvault.timeline import FRAMES_PER_RECORD
from callvault.timeline import OPUS_PRE_SKIP_48K as PRE_SKIP
from callvault.vault.common import (
    Ack,
    CallNotFound,
    OpenReport,
    Problem,
    Replay,
    VaultBusy,
    VaultError,
    VaultUnwritable,
)
from callvault.vault.core import CallWriter, Vault
from callvault.vault.lifecycle import Retained

__all__ = [
    "FRAMES_PER_RECORD",
    "PRE_SKIP",
    "Ack",
    "CallNotFound",
    "CallWriter",
    "OpenReport",
    "Problem",
    "Replay",
    "Retained",
    "Vault",
    "VaultBusy",
    "VaultError",
    "VaultUnwritable",
]
