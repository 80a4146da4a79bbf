"""The embedded engine's face: ``Vault.open(DIR)`` records, lists, reads, exports,
verifies and erases calls with no network.

Owns the call lifecycle over the store (segments, index, keys at rest), the
integrity layer (chains, Merkle log, checkpoints) and the media layer (decoding
and Ogg/WAV writing for export). Imports store/, integrity/, media/ and the
compiled extensions; never the server, the sidecar or the command line.
"""

from callvault.vault.core import (
    FRAMES_PER_RECORD,
    PRE_SKIP,
    Ack,
    CallNotFound,
    CallWriter,
    OpenReport,
    Problem,
    Replay,
    Vault,
    VaultError,
)

__all__ = [
    "FRAMES_PER_RECORD",
    "PRE_SKIP",
    "Ack",
    "CallNotFound",
    "CallWriter",
    "OpenReport",
    "Problem",
    "Replay",
    "Vault",
    "VaultError",
]
